"""Idempotent handlers: a (handler, event_id) that completed is not run again.

Delivery is at-least-once: a worker that dies after a handler ran but before
the broker got the ack runs it again on the redelivered message, and a
replayed or twice-published event arrives twice. For a handler subscribed
with ``idempotent=True`` each delivery first *claims* its (handler, event_id):

* nobody holds it: run the handler; on success mark it *done* (kept for
  ``eventbus_idempotency_ttl``, default 7 days); on failure release it;
* it is done: skip the handler (logged, counted as ``duplicate``);
* another delivery is running it now: try again shortly (``deferred``).

A claim is held by a task id: the redelivery of a message whose worker died
(same task id) takes its claim over at once; any other delivery waits for the
claim to be released, completed or to expire after its lease.

One window remains: a crash after the handler's writes but before the done
mark is sent runs the handler again. To close it, write your
effect and the mark in one transaction: :meth:`RedisIdempotencyStore.atomic`
for writes to the same Redis, or the event id as a unique key in your
database (see the README).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventbus.errors import EventBusError
from eventbus.guarantees.state_errors import StateErrors

if TYPE_CHECKING:
    import redis
    from redis.client import Pipeline

    from eventbus.domain.envelope import Envelope

__all__ = [
    "Claim",
    "ClaimLost",
    "Delivery",
    "IdempotencyStore",
    "InMemoryIdempotencyStore",
    "RedisIdempotencyStore",
    "current_delivery",
]

logger = logging.getLogger(__name__)


class Claim(enum.Enum):
    """What :meth:`IdempotencyStore.claim` found."""

    RUN = "run"  #: claimed: run the handler
    DONE = "done"  #: a delivery of this event already completed: skip
    BUSY = "busy"  #: another delivery is running it now: try later


class ClaimLost(EventBusError):
    """The claim expired and another delivery took it over before this one completed."""


@dataclass(frozen=True)
class Delivery:
    """The handler run in progress (see :func:`current_delivery`)."""

    handler: str
    envelope: Envelope[Any]
    task_id: str
    attempt: int  #: 1 for the first run, 2 for the first retry, ...
    idempotency: IdempotencyStore | None = None


_current: ContextVar[Delivery | None] = ContextVar("eventbus_delivery", default=None)


def current_delivery() -> Delivery | None:
    """The delivery whose handler is running in this thread, or None outside a handler."""
    return _current.get()


@contextlib.contextmanager
def delivering(delivery: Delivery) -> Iterator[Delivery]:
    token = _current.set(delivery)
    try:
        yield delivery
    finally:
        _current.reset(token)


class IdempotencyStore(ABC):
    """Claims and completion marks of (handler, event_id)."""

    def __init__(self, *, ttl: int) -> None:
        self.ttl = ttl

    @abstractmethod
    def claim(self, handler: str, event_id: str, owner: str, lease: float) -> Claim:
        """Claim the pair for ``owner`` (a task id) for ``lease`` seconds."""

    @abstractmethod
    def complete(self, handler: str, event_id: str) -> None:
        """Mark the pair done (kept ``ttl`` seconds)."""

    @abstractmethod
    def release(self, handler: str, event_id: str, owner: str) -> None:
        """Give up ``owner``'s claim (the handler failed; a retry claims it again)."""

    @abstractmethod
    def is_done(self, handler: str, event_id: str) -> bool: ...


class InMemoryIdempotencyStore(IdempotencyStore):
    """For the in-memory bus and the embedded demo: one process only."""

    def __init__(self, *, ttl: int = 7 * 24 * 3600) -> None:
        super().__init__(ttl=ttl)
        self._entries: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def claim(self, handler: str, event_id: str, owner: str, lease: float) -> Claim:
        now = time.monotonic()
        key = (handler, event_id)
        with self._lock:
            value, expires = self._entries.get(key, ("", 0.0))
            if value and expires > now:
                if value == "done":
                    return Claim.DONE
                if value != owner:
                    return Claim.BUSY
            self._entries[key] = (owner, now + lease)
            return Claim.RUN

    def complete(self, handler: str, event_id: str) -> None:
        with self._lock:
            self._entries[(handler, event_id)] = ("done", time.monotonic() + self.ttl)

    def release(self, handler: str, event_id: str, owner: str) -> None:
        with self._lock:
            if self._entries.get((handler, event_id), ("", 0.0))[0] == owner:
                del self._entries[(handler, event_id)]

    def is_done(self, handler: str, event_id: str) -> bool:
        value, expires = self._entries.get((handler, event_id), ("", 0.0))
        return value == "done" and expires > time.monotonic()


_DONE = b"done"

# KEYS[1] the pair's key; ARGV[1] owner, ARGV[2] lease in ms. A key holding the
# same owner is the redelivery of the message whose worker died holding it.
_CLAIM = """
local value = redis.call('GET', KEYS[1])
if value == 'done' then return 'done' end
if value == false or value == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 'run'
end
return 'busy'
"""

# KEYS[1] the pair's key; ARGV[1] owner. Deletes the key only if owner holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisIdempotencyStore(IdempotencyStore):
    """Claims as keys with a lease: one round trip per delivery.

    Key ``<prefix>idem:<handler>:<event_id>`` holds the owner's task id while
    the handler runs (expiring after the lease), then ``done`` for ``ttl``
    seconds.

    The done mark is written without waiting for Redis' answer: it goes out
    on a connection of this thread's own, and its answer is read with the
    next claim's, sent on the same connection right behind it. So a delivery
    costs one round trip, not two, and Redis runs a thread's done mark before
    its next claim. A mark written is in the socket before ``complete``
    returns (the kernel sends it even if the process dies next); one whose
    connection breaks before Redis read it is lost like a crash before the
    mark: a later duplicate delivery runs the handler again. An error Redis
    answers to a mark is logged with the next claim.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str, ttl: int, errors: StateErrors | None = None
    ) -> None:
        # Imported here: redis-py costs ~8 MiB and ~150 ms to import, which a
        # worker whose broker is RabbitMQ and which keeps no state never needs.
        from redis.exceptions import NoScriptError, ResponseError

        super().__init__(ttl=ttl)
        self._errors = errors or StateErrors.of_client(client)
        self._script_missing: type[Exception] = NoScriptError
        self._refused: type[Exception] = ResponseError
        self.client = client
        self.prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._local = threading.local()  # this thread's connection and unread answers

    def key(self, handler: str, event_id: str) -> str:
        return f"{self.prefix}idem:{handler}:{event_id}"

    def claim(self, handler: str, event_id: str, owner: str, lease: float) -> Claim:
        with self._errors.translated(f"claim event {event_id} for {handler}"):
            return self._claim_once(handler, event_id, owner, lease)

    def _claim_once(self, handler: str, event_id: str, owner: str, lease: float) -> Claim:
        key, lease_ms = self.key(handler, event_id), max(1, int(lease * 1000))
        connection = self._connection()
        try:
            connection.send_command("EVALSHA", self._claim.sha, 1, key, owner, lease_ms)
            self._read_marks(connection)
            found = connection.read_response()
        except self._script_missing:  # a restarted Redis forgot the script: load it again
            found = self._claim(keys=[key], args=[owner, lease_ms])
        except BaseException:
            self._drop_connection()
            raise
        return Claim(found.decode() if isinstance(found, bytes) else found)

    def complete(self, handler: str, event_id: str) -> None:
        with self._errors.translated(f"mark event {event_id} as handled by {handler}"):
            connection = self._connection()
            try:
                connection.send_command("SET", self.key(handler, event_id), _DONE, "EX", self.ttl)
            except BaseException:
                self._drop_connection()
                # Not sent: write it the plain way (raises if Redis is gone).
                self.client.set(self.key(handler, event_id), _DONE, ex=self.ttl)
                return
            self._local.unread += 1

    def _connection(self) -> Any:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # new thread, or a forked child
            local.pid = os.getpid()
            # (A forked child never touches its parent's connection.)
            local.connection = self.client.connection_pool.make_connection()
            local.unread = 0
        return local.connection

    def _read_marks(self, connection: Any) -> None:
        while self._local.unread:
            self._local.unread -= 1
            try:
                connection.read_response()
            except self._refused as exc:
                logger.error("an idempotency done mark was refused by Redis: %s", exc)

    def _drop_connection(self) -> None:
        local = self._local
        connection = getattr(local, "connection", None)
        local.pid = None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.disconnect()

    def release(self, handler: str, event_id: str, owner: str) -> None:
        with self._errors.translated(f"release the claim of {handler} on event {event_id}"):
            self._release(keys=[self.key(handler, event_id)], args=[owner])

    def is_done(self, handler: str, event_id: str) -> bool:
        self.flush()  # this thread's own marks first
        with self._errors.translated(f"read whether {handler} handled event {event_id}"):
            return bool(self.client.get(self.key(handler, event_id)) == _DONE)

    def flush(self) -> None:
        """Wait until Redis has answered this thread's done marks."""
        if getattr(self._local, "pid", None) == os.getpid() and self._local.unread:
            with self._errors.translated("read the answers to the marks of handled events"):
                try:
                    self._read_marks(self._local.connection)
                except BaseException:
                    self._drop_connection()
                    raise

    @contextlib.contextmanager
    def atomic(self, delivery: Delivery | None = None) -> Iterator[Pipeline]:
        """A Redis transaction that commits your writes together with the done mark.

        Inside an idempotent handler whose effects are Redis writes::

            @bus.subscribe(OrderPlaced, idempotent=True)
            def award_points(envelope):
                with bus.idempotency.atomic() as tx:
                    tx.hincrby("points", envelope.data.customer, 10)

        Either both land or neither: a crash before ``EXEC`` leaves the event
        un-done and its redelivery runs the handler again; after it, the
        redelivery is skipped. Raises :class:`ClaimLost` (and writes nothing)
        if the claim expired and another delivery took it over.
        """
        delivery = delivery or current_delivery()
        if delivery is None:
            raise EventBusError("atomic() is for use inside an idempotent handler")
        key = self.key(delivery.handler, str(delivery.envelope.event_id))
        import redis

        doing = f"commit the writes of {delivery.handler} for event {delivery.envelope.event_id}"
        with self.client.pipeline(transaction=True) as pipe:
            with self._errors.translated(doing):
                pipe.watch(key)  # type: ignore[no-untyped-call]
                held = pipe.get(key)
            if held != delivery.task_id.encode():
                raise ClaimLost(
                    f"{delivery.handler} lost its claim on event {delivery.envelope.event_id}"
                )
            pipe.multi()
            yield pipe
            pipe.set(key, _DONE, ex=self.ttl)
            with self._errors.translated(doing):
                try:
                    pipe.execute()
                except redis.WatchError:  # (a RedisError too: caught first)
                    raise ClaimLost(
                        f"{delivery.handler} lost its claim on event {delivery.envelope.event_id}"
                    ) from None
