"""Fixtures every test suite may use: a redis-server of the test's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.brokers import PrivateRedis


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A running :class:`~tests.brokers.PrivateRedis` (AOF fsynced on each write), removed after."""
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.close()
