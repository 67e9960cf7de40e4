"""A publish whose channel kombu closed or replaced under it counts as a lost connection.

kombu's ``Producer._publish`` takes the producer's channel first, then
declares the message's queue with a retry of its own
(``maybe_declare(retry=True)``). When that declare loses the connection,
kombu reconnects and revives the *queue* on a new channel, closing the old
one, and the publish goes on with the old, closed channel. On Redis a closed
virtual channel has no connection: the publish raises ``AttributeError:
'NoneType' object has no attribute 'client'`` (inside a publish batch,
``RuntimeError: Producer channel changed while a publish batch was active``
when the producer itself was revived). py-amqp raises a recoverable
connection error on a closed channel, which kombu retries; the virtual
transports do not.

Nothing was sent by such a call: it is a lost connection, and eventbus
retries the event (or raises :class:`~eventbus.errors.PublishError`) as for
any other. Only an error raised while the producer's channel was closed or
replaced is translated; any other error propagates as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.exceptions import OperationalError

__all__ = ["ChannelLost", "channel_kept"]


class ChannelLost(OperationalError):
    """kombu closed or replaced the producer's channel during a send (a lost connection)."""


@contextmanager
def channel_kept(producer: Any, retryable: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Raise :class:`ChannelLost` for an error of the block raised on a lost channel.

    ``retryable`` are the errors the caller already treats as a lost
    connection, passed through unchanged. Nothing here connects: a producer
    whose connection is not established yet has no channel to compare.
    """
    channel = _channel_if_connected(producer)
    try:
        yield
    except retryable:
        raise
    except Exception as exc:
        if not _lost(producer, channel):
            raise
        raise ChannelLost(
            f"the broker connection was lost during the send and kombu replaced the "
            f"channel ({type(exc).__name__}: {exc})"
        ) from exc


def _channel_if_connected(producer: Any) -> Any:
    """The producer's channel, if its connection is established (else None, not connecting)."""
    try:
        connection = producer.connection
        if connection is None or not connection.connected:
            return None
        return producer.channel
    except Exception:  # a producer that cannot tell: nothing to compare
        return None


def _closed(channel: Any) -> bool:
    """A kombu channel drops its connection when it is closed (virtual ones and py-amqp's)."""
    return channel is not None and getattr(channel, "connection", None) is None


def _lost(producer: Any, before: Any) -> bool:
    """Whether the producer's channel was closed, or replaced since ``before``."""
    now = _channel_if_connected(producer)
    if before is not None and (_closed(before) or (now is not None and now is not before)):
        return True
    return _closed(now)
