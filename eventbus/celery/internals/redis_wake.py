"""How an idle consumer of eventbus's Redis transport waits: Redis tells it, instead of polling.

What kombu does: a consumer waits with ``BRPOP`` (1 s timeout, then again),
one command a second per idle channel; a new message is taken at once, but
taken by ``BRPOP`` itself, before anything records it (celery/kombu#1733).
eventbus's transport takes with a Lua script instead
(:mod:`.redis_transport`), and a script cannot block: an idle channel ran it
every 0.05 s, 20 ``EVALSHA`` a second (each reading every priority list of
every queue), and a new message waited up to 50 ms.

What this module does: it has Redis say when a queue changes, with the
invalidation messages of client-side caching (``CLIENT TRACKING``, Redis 6.0
and later, no server setting). A consuming channel opens a second
connection, its *wake connection*, subscribed to ``__redis__:invalidate``;
its poll connection tracks keys in ``OPTIN`` mode, ``REDIRECT``-ed to the wake
connection, ``NOLOOP`` (its own takes tell nobody). When the take script
found every queue empty, the channel *arms*: ``CLIENT CACHING yes`` and
``EXISTS`` over its queue keys, one round trip. Redis now remembers that the
poll connection read those keys, and the first write to any of them, by
whoever writes it (eventbus's publish, kombu's or raw Celery's, kombu's
restore of unacked messages, a producer in another language), sends an
invalidation to the wake connection, which the event loop watches. The
channel then runs its take script at once, with a new arm in the same round
trip (another consumer may take the message first). ``EXISTS`` above 0
means a message came between the empty take and the arm: the channel takes
it instead of waiting.

Waiting takes nothing: the take is still the one atomic script, so the loss
window of #1733 stays closed; a consumer killed between its wake-up and its
take leaves the message on its queue. Only the arm is tracked (``OPTIN``):
the takes of a busy channel are not, so a busy worker is not told of every
push. Every idle channel of a queue is told of a new message; one takes it,
the others' takes find nothing and arm again: one round trip per idle channel
and message (the herd; ``bench/bench_idle.py`` measures it).

The safety net: an idle channel looks anyway every
``eventbus_idle_poll_interval`` seconds (transport option, default
:data:`DEFAULT_IDLE_POLL_INTERVAL`), with one ``EXISTS``: a notification lost
with its connection (a half-open socket) delays a message that much at most.
A message found that way, which no notification announced, reconnects the
wake connection; the :data:`UNANNOUNCED_LIMIT`-th in a row turns the
notifications off for the channel, with a warning, and it polls every
``eventbus_poll_interval`` as before. So does a Redis that refuses
``CLIENT TRACKING`` (before 6.0, an ACL, a proxy; one warning per process),
and ``eventbus_idle_wake = False``.

This module uses kombu's private poller registration (``_register``,
``_client_registered``) and the channel's ``_create_client``: they are
listed in :mod:`.reaches` (feature ``redis_idle_wake``, a fallback). A kombu
without them turns the notifications off (the one warning) and the idle
channel polls, as before.
"""

from __future__ import annotations

import logging
from typing import Any

from eventbus.celery.internals.compat import available

__all__ = [
    "DEFAULT_IDLE_POLL_INTERVAL",
    "INVALIDATE",
    "UNANNOUNCED_LIMIT",
    "WAKE",
    "Wake",
    "wake_available",
]

logger = logging.getLogger(__name__)

#: The poller's name for a wake connection (kombu's own are ``BRPOP`` and ``LISTEN``).
WAKE = "WAKE"
#: The channel Redis sends invalidations on, to a RESP2 connection that subscribed to it.
INVALIDATE = "__redis__:invalidate"
#: Seconds an idle channel that Redis notifies waits before it looks anyway.
DEFAULT_IDLE_POLL_INTERVAL = 2.0
#: Messages in a row the safety poll found unannounced before notifications are off.
UNANNOUNCED_LIMIT = 3

_said: set[str] = set()  # warnings given in this process


def wake_available() -> bool:
    """Whether kombu still has what the notifications use (else: one warning, polling)."""
    return available("redis_idle_wake")


def say_once(key: str, message: str, *args: Any) -> None:
    """A warning, once per process for ``key``; DEBUG afterwards."""
    if key in _said:
        logger.debug(message, *args)
        return
    _said.add(key)
    logger.warning(message, *args)


class Wake:
    """One channel's wake connection, and the tracking of its poll connection.

    :meth:`ready` sets up whatever a new connection lacks, on either side;
    :meth:`read` drains the wake connection; :meth:`lost` hears of a
    connection gone. The channel decides what to send (see
    :class:`~eventbus.celery.internals.redis_transport.Channel`).
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        #: A client of the channel's pool whose ``connection`` is the wake connection.
        self.client: Any = None
        #: The wake connection's ``CLIENT ID``: where the poll connection's invalidations go.
        self.redirect: int | None = None
        self._subscribed: Any = None  # the wake socket that asked its id and subscribed
        self._tracked: tuple[Any, int | None] | None = None  # (poll socket, redirect)
        #: Messages the safety poll found in a row that no notification announced.
        self.unannounced = 0

    def ready(self) -> bool:
        """Make sure the wake connection listens and the poll connection tracks to it.

        Runs in the event loop between two commands of the poll connection
        (nothing in flight): a few round trips when a connection is new, none
        otherwise. True: tracking was (re)started, so whatever was tracked
        before may have changed unannounced (take, and arm again). Raises
        what Redis refuses (``ResponseError``) and connection errors.
        """
        channel = self.channel
        cycle = channel.connection.cycle
        if self.client is None:
            self.client = channel._create_client(asynchronous=True)
        if not cycle._client_registered(channel, self.client, WAKE):
            # (connects it, and the event loop watches it as it watches BRPOP's)
            cycle._register(channel, self.client, WAKE)
        wake = self.client.connection
        if wake._sock is not self._subscribed:
            wake.send_command("CLIENT", "ID")
            self.redirect = int(wake.read_response())
            wake.send_command("SUBSCRIBE", INVALIDATE)
            wake.read_response(push_request=True)
            self._subscribed = wake._sock
        poll = channel.client.connection
        if self._tracked != (poll._sock, self.redirect):
            poll.send_command(
                "CLIENT", "TRACKING", "ON", "REDIRECT", self.redirect, "OPTIN", "NOLOOP"
            )
            poll.read_response()
            self._tracked = (poll._sock, self.redirect)
            return True
        return False

    def read(self) -> bool:
        """Read every notification waiting; False: the wake connection is gone (disconnected)."""
        connection = getattr(self.client, "connection", None)
        if connection is None or connection._sock is None:
            return False
        try:
            while True:
                # An invalidation (RESP2: a message on __redis__:invalidate; RESP3:
                # a push), or anything else Redis sends there: each means "look".
                connection.read_response(push_request=True)
                if not connection.can_read(timeout=0):
                    return True
        except (*self.channel.connection_errors, OSError):
            connection.disconnect()
            return False

    def lost(self, connection: Any) -> None:
        """``connection`` was disconnected: what was set up on it must be set up again."""
        if connection is getattr(self.client, "connection", None):
            self._subscribed = None
            self._tracked = None
        elif self._tracked is not None and connection is getattr(
            self.channel.__dict__.get("client"), "connection", None
        ):
            self._tracked = None

    def forget(self) -> None:
        """Set everything up again on next :meth:`ready` (the wake connection reconnects)."""
        self._tracked = None
        self.close()

    def close(self) -> None:
        """Close the wake connection (the event loop stops watching it)."""
        connection = getattr(self.client, "connection", None)
        self._subscribed = None
        if connection is not None:
            connection.disconnect()
