"""The run's Kafka-protocol broker (Tansu), shared by the Kafka tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kafka.broker import TansuBroker


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[TansuBroker]:
    broker = TansuBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.close()
