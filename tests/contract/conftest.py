"""The ``harness`` fixture: each contract test runs on every bus."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.contract.harness import Harness


@pytest.fixture(params=["memory", "redis", "rabbitmq"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    h = Harness(request.param)
    yield h
    h.close()
