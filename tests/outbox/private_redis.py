"""The outbox tests' private Redis: :class:`tests.brokers.PrivateRedis` without persistence.

Stopping it loses what it held (no AOF, no RDB snapshots), as these tests
expect: a batch cut off by a stop leaves nothing behind on the broker.
"""

from __future__ import annotations

from tests import brokers


class PrivateRedis(brokers.PrivateRedis):
    """``start()``, ``stop()`` (SIGTERM, waited for), ``start()`` again on the same port, empty."""

    def __init__(self) -> None:
        super().__init__(persistent=False)
