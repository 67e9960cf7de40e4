"""A Redis publish that returns once replicas have its messages: ``WAIT`` (opt-in).

Redis replicates asynchronously: the master answers a write before any
replica has it. When the master dies, or a Sentinel fail-over promotes a
replica while the old master still takes writes, what the replica did not
get is gone, acknowledged or not. ``WAIT numreplicas timeout`` blocks the
connection it is sent on until ``numreplicas`` replicas acknowledged every
write that connection made, or ``timeout`` passed, and says how many did.

:func:`replicated` wraps the publishes of one event (or one
``EventBus.batch()``) when ``eventbus_redis_wait_replicas`` is above 0:
after the block, one ``WAIT`` on the producer's channel. Fewer replicas in
time raise :class:`NotReplicated` (a kombu ``OperationalError``: the bus
retries the event by its publish retry policy, then raises
:class:`~eventbus.errors.PublishError`); the channel's connections are
closed first, so that the retry connects anew (behind Sentinel: to whatever
master the sentinels name now). A message that was not replicated in time
may still be delivered: a retry can duplicate it (at-least-once).

Why the ``WAIT`` reaches the right connection: kombu's Redis channel sends a
publish through a client over the channel's own connection pool
(``Channel.conn_or_acquire``, undocumented), and a producer is used by one
thread at a time, so its commands run one after the other and the pool never
holds more than one connection for it; redis-py's pool also hands out the
connection released last. A connection that broke after the pushes fails
the ``WAIT`` instead of answering for a new one.

It does nothing on other transports, or with the setting at 0 (the default).
``Channel.conn_or_acquire`` is checked once (:mod:`.compat`, feature
``replicated_publish``, a guarantee): without it a publish that asks for
replicas raises :class:`~eventbus.errors.IncompatibleDependency`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.exceptions import OperationalError

from eventbus.celery.internals.compat import require
from eventbus.errors import PublishError

__all__ = ["DEFAULT_WAIT_TIMEOUT", "NotReplicated", "replicated", "wait_for_replicas"]

#: Seconds a publish waits for its replicas (``eventbus_redis_wait_timeout``).
DEFAULT_WAIT_TIMEOUT = 1.0


class NotReplicated(PublishError, OperationalError):
    """Fewer Redis replicas than ``eventbus_redis_wait_replicas`` acknowledged in time.

    Also a kombu ``OperationalError``: ``EventBus.publish`` retries it like a
    lost connection. The messages may still be delivered (a master that
    keeps them): a retry can duplicate them.
    """


@contextmanager
def replicated(producer: Any, replicas: int, timeout: float | None) -> Iterator[None]:
    """After the block's publishes on ``producer``, wait for ``replicas`` Redis replicas.

    Nothing to wait for (``replicas`` 0, a transport that is not Redis): a no-op.
    """
    yield
    if replicas <= 0 or getattr(producer.connection.transport, "driver_type", None) != "redis":
        return
    require("replicated_publish")
    with producer.channel.conn_or_acquire() as client:
        wait_for_replicas(client, replicas, timeout)


def wait_for_replicas(client: Any, replicas: int, timeout: float | None) -> None:
    """``WAIT`` on ``client``'s next connection; :class:`NotReplicated` if too few answer.

    ``client`` is a redis-py client whose last writes went through the same
    connection (see the module).
    """
    seconds = DEFAULT_WAIT_TIMEOUT if timeout is None else float(timeout)
    acknowledged = int(client.execute_command("WAIT", replicas, max(1, int(seconds * 1000))))
    check_replicas(client, acknowledged, replicas, seconds)


def check_replicas(client: Any, acknowledged: int, replicas: int, seconds: float) -> None:
    """Raise :class:`NotReplicated` (closing ``client``'s connections) if too few replicas."""
    if acknowledged >= replicas:
        return
    # The next try connects anew: behind Sentinel, to the master it names now.
    client.connection_pool.disconnect()
    raise NotReplicated(
        f"{acknowledged} of {replicas} Redis replica(s) acknowledged the publish within "
        f"{seconds:g}s (eventbus_redis_wait_replicas); it may still be delivered"
    )
