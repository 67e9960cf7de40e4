"""Per-aggregate ordering: sequence numbers at publish, a resequencer at the consumer.

**At publish** an event with an ``aggregate_id`` and no ``sequence`` gets the
aggregate's next number from a :class:`Sequencer` (one atomic ``INCR`` per
event on Redis) when one of its handlers is ordered, or always with
``eventbus_assign_sequences = True``. A sequence you set yourself (from your
database or the event store) is kept.

**At the consumer** an ``ordered=True`` handler asks the :class:`Resequencer`
for its turn before running. Per (handler, aggregate) it keeps the next
sequence to run and who is running it:

* ``RUN``: this is the next one and nobody runs it: run, then ``complete``
  (the next one may go) or ``fail`` (it stays next; a pending retry keeps the
  others waiting without a time limit).
* ``WAIT``: an earlier event has not completed: the delivery is deferred (sent
  back to the queue with a short countdown) and asks again. Other aggregates
  are never blocked: a wait costs a message, not a worker.
* ``GAP``: this event has waited ``eventbus_ordering_gap_timeout`` seconds
  (default 60), nothing happened on the aggregate meanwhile, and the awaited
  event is not scheduled for retry (it was dead-lettered, or never
  published): this one is dead-lettered as ``sequence_gap``. Replay the
  missing event first, then this one.
* ``DONE``: already handled (a duplicate delivery): skipped.
* ``LATE``: below the first sequence this handler ran for the aggregate: dead-lettered.

The first event a handler sees of an aggregate starts it if its sequence is 1;
otherwise (the handler is new, or the aggregate's state expired after
``eventbus_ordering_ttl``) the lowest sequence waiting after the gap timeout
starts it.

Why resequencing instead of partitioned queues with one consumer each: a
Celery worker runs several messages of one queue at once (prefetch, pool), so
a partition needs a worker of concurrency 1 per partition, and Redis has no
single-active-consumer. Resequencing keeps every worker and queue as they are,
costs two Redis round trips per run, and blocks only the aggregate that waits
(see bench/README.md for the figures).
"""

from __future__ import annotations

import enum
import json
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from eventbus.guarantees.state_errors import StateErrors

if TYPE_CHECKING:
    import redis

__all__ = [
    "InMemoryResequencer",
    "InMemorySequencer",
    "RedisResequencer",
    "RedisSequencer",
    "Resequencer",
    "Sequencer",
    "Turn",
    "TurnKind",
    "aggregate_key",
]

DEFAULT_GAP_TIMEOUT = 60.0  #: seconds without progress before a wait becomes a gap


def aggregate_key(aggregate_type: str | None, aggregate_id: str) -> str:
    """The aggregate's part of its sequence counter's and positions' keys: one per aggregate.

    ``Order:7`` while the type has no ``:`` (the id may have any): the type
    ends at the first ``:``, so no two aggregates share a key, and it is the
    key earlier versions wrote, so counters and positions already in Redis go on.
    A type with a ``:`` gets the pair as JSON with each ``:`` escaped
    (``["Order\\u003aeu","7"]``): a key without any ``:``, which no type
    without one can have. (Before, ``("Order:eu", "7")`` shared ``Order:eu:7``
    with ``("Order", "eu:7")``; the latter keeps it.) No type and an empty
    type are the same, as they always were.
    """
    kind = aggregate_type or ""
    if ":" not in kind:
        return f"{kind}:{aggregate_id}"
    return json.dumps([kind, aggregate_id], ensure_ascii=False, separators=(",", ":")).replace(
        ":", "\\u003a"
    )


def _printed(aggregate_type: str | None, aggregate_id: str) -> str:
    """An aggregate in a message: its id quoted (and cut), after its type."""
    shown = repr(aggregate_id if len(aggregate_id) <= 80 else aggregate_id[:80] + "...")
    return f"{aggregate_type} {shown}" if aggregate_type else shown


# -- at publish ------------------------------------------------------------------


class Sequencer(ABC):
    """Hands out each aggregate's sequence numbers: 1, 2, 3, ..."""

    @abstractmethod
    def next_sequence(self, aggregate_type: str | None, aggregate_id: str) -> int: ...


class InMemorySequencer(Sequencer):
    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self._lock = threading.Lock()

    def next_sequence(self, aggregate_type: str | None, aggregate_id: str) -> int:
        key = aggregate_key(aggregate_type, aggregate_id)
        with self._lock:
            self._last[key] = self._last.get(key, 0) + 1
            return self._last[key]


class RedisSequencer(Sequencer):
    """``INCR <prefix>seq:<aggregate>``: atomic across publishers (:func:`aggregate_key`).

    The counters never expire: they are the aggregates' positions. On a Redis
    without persistence a restart starts them again at 1.

    Redis replicates asynchronously: an ``INCR`` a fail-over loses gives its
    number again, and an ordered handler skips the second event of that
    number as a duplicate. With ``wait_replicas`` (``eventbus_redis_wait_replicas``)
    each ``INCR`` is followed, on its connection, by ``WAIT wait_replicas
    wait_timeout``, and a number fewer replicas have is refused
    (:class:`~eventbus.errors.StateStoreError`): the event is not published.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        errors: StateErrors | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._errors = errors or StateErrors.of_client(client)
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout

    def next_sequence(self, aggregate_type: str | None, aggregate_id: str) -> int:
        key = f"{self.prefix}seq:{aggregate_key(aggregate_type, aggregate_id)}"
        doing = f"give aggregate {_printed(aggregate_type, aggregate_id)} its next sequence number"
        with self._errors.translated(doing):
            if not self.wait_replicas:
                return int(self.client.incr(key))
            # One pipeline: the WAIT goes on the connection that sent the INCR.
            with self.client.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.wait(self.wait_replicas, max(1, int(self.wait_timeout * 1000)))
                number, replicas = pipe.execute()
        if int(replicas) < self.wait_replicas:
            self.client.connection_pool.disconnect()  # the next try asks the sentinels anew
            raise self._errors.error(
                doing,
                f"{replicas} of {self.wait_replicas} Redis replica(s) acknowledged it within "
                f"{self.wait_timeout:g}s (eventbus_redis_wait_replicas)",
            )
        return int(number)


# -- at the consumer --------------------------------------------------------------


class TurnKind(enum.Enum):
    RUN = "run"
    WAIT = "wait"
    GAP = "gap"
    DONE = "done"
    LATE = "late"


@dataclass(frozen=True)
class Turn:
    kind: TurnKind
    expected: int  #: the sequence the handler runs next for this aggregate (0: not started)


class Resequencer(ABC):
    """Gives an ordered handler each aggregate's events one at a time, in sequence."""

    @abstractmethod
    def acquire(
        self, handler: str, aggregate: str, sequence: int, owner: str, *, gap: float, lease: float
    ) -> Turn:
        """May ``owner`` (a task id) run ``sequence`` of ``aggregate`` now?"""

    @abstractmethod
    def complete(self, handler: str, aggregate: str, sequence: int) -> None:
        """``sequence`` was handled: the next one may run."""

    @abstractmethod
    def fail(
        self, handler: str, aggregate: str, sequence: int, owner: str, *, will_retry: bool
    ) -> None:
        """``sequence`` failed; it stays the next one. ``will_retry``: a retry is scheduled."""

    @abstractmethod
    def reset(self, handler: str, aggregate: str) -> None:
        """Forget the aggregate's position for this handler: its next event starts it anew."""


@dataclass
class _Position:
    next: int | None = None
    first: int = 0
    holder: str = ""
    held_until: float = 0.0
    progress: float = 0.0
    retrying: bool = False
    since: float | None = None
    waiting: set[int] | None = None
    waited: dict[int, float] = field(default_factory=dict)  # sequence -> first asked


class InMemoryResequencer(Resequencer):
    """The same rules as :class:`RedisResequencer`, in one process (tests, the demo)."""

    def __init__(self) -> None:
        self._positions: dict[tuple[str, str], _Position] = {}
        self._lock = threading.Lock()

    def acquire(
        self, handler: str, aggregate: str, sequence: int, owner: str, *, gap: float, lease: float
    ) -> Turn:
        now = time.monotonic()
        with self._lock:
            pos = self._positions.setdefault((handler, aggregate), _Position())
            if pos.next is None:
                if sequence != 1:
                    pos.waiting = (pos.waiting or set()) | {sequence}
                    if pos.since is None:
                        pos.since = now
                    if now - pos.since < gap or min(pos.waiting) != sequence:
                        return Turn(TurnKind.WAIT, 0)
                pos.next, pos.first, pos.since, pos.waiting = sequence, sequence, None, None
            if sequence < pos.next:
                kind = TurnKind.DONE if sequence >= pos.first else TurnKind.LATE
                return Turn(kind, pos.next)
            if sequence > pos.next:
                waited = pos.waited.setdefault(sequence, now)
                if not pos.retrying and now - max(pos.progress or now, waited) >= gap:
                    del pos.waited[sequence]
                    return Turn(TurnKind.GAP, pos.next)
                return Turn(TurnKind.WAIT, pos.next)
            if pos.holder and pos.holder != owner and pos.held_until > now:
                return Turn(TurnKind.WAIT, pos.next)
            pos.holder, pos.held_until, pos.progress, pos.retrying = owner, now + lease, now, False
            pos.waited.pop(sequence, None)
            return Turn(TurnKind.RUN, pos.next)

    def complete(self, handler: str, aggregate: str, sequence: int) -> None:
        with self._lock:
            pos = self._positions.get((handler, aggregate))
            if pos is not None and pos.next == sequence:
                pos.next, pos.holder, pos.progress = sequence + 1, "", time.monotonic()
                pos.retrying = False

    def fail(
        self, handler: str, aggregate: str, sequence: int, owner: str, *, will_retry: bool
    ) -> None:
        with self._lock:
            pos = self._positions.get((handler, aggregate))
            if pos is not None and pos.holder == owner:
                pos.holder, pos.progress, pos.retrying = "", time.monotonic(), will_retry

    def reset(self, handler: str, aggregate: str) -> None:
        with self._lock:
            self._positions.pop((handler, aggregate), None)


# The Redis resequencer's scripts. KEYS[1]: the position hash, KEYS[2]: the
# zset of sequences waiting for a not yet started aggregate. Time is Redis's
# own (TIME), so workers' clocks need not agree. Fields: next, first, holder,
# held_until, progress (ms), retrying (0/1), since (ms, not started yet), and
# w<seq> (ms): when a sequence that waits for its turn first asked.
_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

_ACQUIRE = (
    _NOW_MS
    + """
local seq, owner = tonumber(ARGV[1]), ARGV[2]
local gap, lease, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local nxt = tonumber(redis.call('HGET', KEYS[1], 'next'))
if not nxt then
  if seq ~= 1 then
    redis.call('ZADD', KEYS[2], seq, seq)
    redis.call('EXPIRE', KEYS[2], ttl)
    local since = tonumber(redis.call('HGET', KEYS[1], 'since'))
    if not since then
      since = now
      redis.call('HSET', KEYS[1], 'since', now)
      redis.call('EXPIRE', KEYS[1], ttl)
    end
    local lowest = tonumber(redis.call('ZRANGE', KEYS[2], 0, 0)[1])
    if now - since < gap or lowest ~= seq then return {'wait', 0} end
  end
  nxt = seq
  redis.call('HSET', KEYS[1], 'next', seq, 'first', seq)
  redis.call('HDEL', KEYS[1], 'since')
  redis.call('DEL', KEYS[2])
end
if seq < nxt then
  if seq >= tonumber(redis.call('HGET', KEYS[1], 'first') or 0) then return {'done', nxt} end
  return {'late', nxt}
end
if seq > nxt then
  local waited = 'w' .. seq
  redis.call('HSETNX', KEYS[1], waited, now)
  local f = redis.call('HMGET', KEYS[1], 'progress', 'retrying', waited)
  local since = math.max(tonumber(f[1]) or now, tonumber(f[3]) or now)
  if f[2] ~= '1' and now - since >= gap then
    redis.call('HDEL', KEYS[1], waited)
    return {'gap', nxt}
  end
  return {'wait', nxt}
end
local h = redis.call('HMGET', KEYS[1], 'holder', 'held_until')
if h[1] and h[1] ~= '' and h[1] ~= owner and (tonumber(h[2]) or 0) > now then
  return {'wait', nxt}
end
redis.call('HDEL', KEYS[1], 'w' .. seq)
redis.call('HSET', KEYS[1], 'holder', owner, 'held_until', now + lease, 'progress', now,
           'retrying', 0)
redis.call('EXPIRE', KEYS[1], ttl)
return {'run', nxt}
"""
)

_COMPLETE = (
    _NOW_MS
    + """
if tonumber(redis.call('HGET', KEYS[1], 'next')) == tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'next', tonumber(ARGV[1]) + 1, 'holder', '', 'progress', now,
             'retrying', 0)
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 0
"""
)

_FAIL = (
    _NOW_MS
    + """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'holder', '', 'progress', now, 'retrying', ARGV[2])
end
return 0
"""
)


class RedisResequencer(Resequencer):
    """Positions in Redis hashes, changed only by Lua scripts (atomic, one round trip each).

    Keys: ``<prefix>order:{<handler>|<aggregate>}`` and ``...:waiting`` (the
    braces keep both in one Redis Cluster slot). They expire ``ttl`` seconds
    after the aggregate's last event.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str, ttl: int, errors: StateErrors | None = None
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self._errors = errors or StateErrors.of_client(client)
        self._acquire = client.register_script(_ACQUIRE)
        self._complete = client.register_script(_COMPLETE)
        self._fail = client.register_script(_FAIL)

    def keys(self, handler: str, aggregate: str) -> list[str]:
        base = f"{self.prefix}order:{{{handler}|{aggregate}}}"
        return [base, f"{base}:waiting"]

    def acquire(
        self, handler: str, aggregate: str, sequence: int, owner: str, *, gap: float, lease: float
    ) -> Turn:
        with self._errors.translated(f"take the turn of sequence {sequence} for {handler}"):
            kind, expected = self._acquire(
                keys=self.keys(handler, aggregate),
                args=[sequence, owner, int(gap * 1000), int(lease * 1000), self.ttl],
            )
        return Turn(TurnKind(kind.decode() if isinstance(kind, bytes) else kind), int(expected))

    def complete(self, handler: str, aggregate: str, sequence: int) -> None:
        with self._errors.translated(f"record sequence {sequence} as handled by {handler}"):
            self._complete(keys=self.keys(handler, aggregate)[:1], args=[sequence, self.ttl])

    def fail(
        self, handler: str, aggregate: str, sequence: int, owner: str, *, will_retry: bool
    ) -> None:
        with self._errors.translated(f"record that {handler} failed sequence {sequence}"):
            self._fail(keys=self.keys(handler, aggregate)[:1], args=[owner, int(will_retry)])

    def reset(self, handler: str, aggregate: str) -> None:
        with self._errors.translated(f"reset the ordering position of {handler}"):
            self.client.delete(*self.keys(handler, aggregate))
