"""Dead letters on Redis: kombu keeps the queue as a list, which we read with LRANGE.

kombu's Redis transport LPUSHes each message (a JSON wrapper whose ``body`` is
base64) and consumers BRPOP from the other end, so the oldest record is at
index -1. Browsing reads pages from that end, and before each page checks that
removals by others have not shifted its place (``_pages``); removal is
``LREM`` of the exact stored element. A replay first claims a page's records
with ``SET NX`` (with a TTL), so two operators replaying the same record
publish it once, and holds the claims until the page was sent and its records
removed.

Writing is idempotent: a record is pushed by :data:`APPEND_SCRIPT`, which
sets a mark named after the record's id (with a TTL) and pushes the element
in one atomic step, and pushes nothing when the mark is already there. A
record's id names its failed delivery, so a write retried after its answer
was lost, or the same failure recorded again after its message came back
(an ack lost in an outage), leaves one record. The element is the one
kombu's Redis transport would push (its JSON wrapper, body in base64); the
task-sent event Flower lists it by follows, for a record that was pushed.
With ``eventbus_redis_wait_replicas`` a write returns once that many Redis
replicas have the record (``WAIT`` in the same round trip,
:mod:`eventbus.celery.internals.replication`); fewer in time fail the write,
and the worker tries it again, as a write to a broker that went away.
A copy (same id) can still reach the list around that script (a record
whose mark expired, a writer of another version): reading shows it once,
a replay publishes it once and removes every copy it meets, and a purge
renames the list away before reading it, so that the records it counts
are exactly those it removed.

kombu's ``global_keyprefix`` transport option prefixes the keys of only the
commands kombu itself sends (its client prefixes ``LLEN``, ``DEL``, ``SET``,
... but not ``LRANGE``, ``LINDEX``, ``LPOS`` or ``LREM``): through that
client, a store counted and purged the prefixed list while it listed and
removed from the bare one. Here every command goes through a plain client
on the same connection pool, with the prefix written into each key.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from kombu.serialization import dumps
from kombu.utils.json import dumps as json_dumps
from kombu.utils.uuid import uuid

from eventbus.celery.deadletter.base import BrokerDeadLetterStore, decode_record, unwrap
from eventbus.celery.deadletter.summaries import summary_of_element
from eventbus.celery.internals.replication import DEFAULT_WAIT_TIMEOUT, check_replicas
from eventbus.celery.internals.sent_events import SentEvents
from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.store import REPLAY_CHUNK, IdSet, Publish, Removed, Select, distinct
from eventbus.deadletter.summary import Summary

__all__ = ["RedisDeadLetterStore"]

#: List elements read per LRANGE round trip; a replay publishes a page's
#: selected records as one chunk (store.REPLAY_CHUNK explains the size).
PAGE_SIZE = REPLAY_CHUNK
CLAIM_TTL = 300  #: seconds a replay may hold a record before another may take it
#: Elements looked for per round trip when a walk finds its place taken by
#: others' removals; the first is nearly always still there.
RESUME_BATCH = 16
#: Seconds a record's written mark is kept, at least: longer than any
#: redelivery of its message can take (twice the visibility timeout, if longer).
WRITTEN_MARK_TTL = 24 * 3600
#: Seconds a purged list is kept under its temporary name, should the purge
#: die between renaming it and deleting it.
PURGING_TTL = 3600

#: KEYS: the record's written mark, the DLQ list. ARGV: the element, the mark's
#: TTL. Returns 1 if it pushed the element, 0 if the mark was there already.
#: The mark comes first: should Redis refuse the write (out of memory), nothing
#: was written.
APPEND_SCRIPT = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Redis:
    """A client that prefixes nothing, and the keys it works on (prefix included)."""

    client: Any  #: a redis.Redis (its bytes-typed calls are untyped here, as kombu's client is)
    queue: str  #: the dead-letter list
    claims: str  #: the start of every claim key of this queue


class RedisDeadLetterStore(BrokerDeadLetterStore):
    """Browse and edit the dead-letter list in place; write each record once."""

    def append_once(self, record: DeadLetter, *, again: bool = False) -> None:
        # Idempotent whatever ``again`` says: the script skips a record written before.
        app = self.app
        headers, properties, body, sent_event = self.task_message(record)
        try:
            with app.producer_or_acquire() as producer:
                channel = producer.channel
                element = self._element(channel, record, headers, properties, body)
                prefix = getattr(channel, "global_keyprefix", "") or ""
                # As kombu's own push (Channel._put). EVAL is not among the commands
                # kombu's client prefixes (global_keyprefix): the keys go prefixed.
                mark = prefix + self._written_key(record.id)
                with channel.conn_or_acquire() as client:
                    if self._replicas:
                        pushed = self._append_replicated(client, mark, prefix, element)
                    else:
                        queue = prefix + self.queue_name
                        pushed = client.eval(
                            APPEND_SCRIPT, 2, mark, queue, element, self._mark_ttl()
                        )
                if pushed and sent_event:
                    self._send_sent_event(producer, sent_event)
        except Exception as exc:
            raise self._not_written(record, exc) from exc
        if not pushed:
            logger.info("dead letter %s: written before, not written again", record.id)

    @property
    def _replicas(self) -> int:
        return int(self.app.conf.get("eventbus_redis_wait_replicas") or 0)

    def _append_replicated(self, client: Any, mark: str, prefix: str, element: str) -> Any:
        """The append, then ``WAIT`` for the replicas on its connection (one round trip).

        The mark's TTL is set again after the script, a write even when the
        record was written before (the script then writes nothing): ``WAIT``
        counts the writes of its own connection, and this one comes after the
        record's, wherever that was written from.
        """
        timeout = self.app.conf.get("eventbus_redis_wait_timeout")
        seconds = DEFAULT_WAIT_TIMEOUT if timeout is None else float(timeout)
        with client.pipeline(transaction=False) as pipe:
            pipe.eval(APPEND_SCRIPT, 2, mark, prefix + self.queue_name, element, self._mark_ttl())
            pipe.expire(mark, self._mark_ttl())
            pipe.execute_command("WAIT", self._replicas, max(1, int(seconds * 1000)))
            pushed, _, acknowledged = pipe.execute()
        check_replicas(client, int(acknowledged), self._replicas, seconds)
        return pushed

    def _element(
        self, channel: Any, record: DeadLetter, headers: Any, properties: Any, body: Any
    ) -> str:
        """The list element kombu's Redis transport would push for this task message."""
        content_type, content_encoding, payload = dumps(body, serializer="json")
        message = channel.prepare_message(
            payload,
            None,
            content_type,
            content_encoding,
            {**headers, "eventbus-dead-letter": record.id},
            {**properties, "delivery_mode": 2},
        )
        # As kombu's virtual Channel.basic_publish does before its push.
        message["body"], encoding = channel.encode_body(message["body"], channel.body_encoding)
        message["properties"].update(body_encoding=encoding, delivery_tag=uuid())
        message["properties"]["delivery_info"].update(
            exchange=self.queue_name, routing_key=self.queue_name
        )
        return str(json_dumps(message))

    def _send_sent_event(self, producer: Any, sent_event: dict[str, Any]) -> None:
        """Celery's task-sent event of the record, which Flower lists it by; never fails a write."""
        try:
            events = SentEvents(self.app)
            events.publish(
                "task-sent",
                {
                    **sent_event,
                    "queue": self.queue_name,
                    "exchange": self.queue_name,
                    "routing_key": self.queue_name,
                },
                producer,
            )
            events.send(producer)
        except Exception:
            logger.warning("could not send the task-sent event of a dead letter", exc_info=True)

    def _written_key(self, record_id: str) -> str:
        return f"eventbus.dlq-written:{self.queue_name}:{record_id}"

    def _mark_ttl(self) -> int:
        options = self.app.conf.broker_transport_options or {}
        visibility = int(options.get("visibility_timeout") or 0)
        return max(WRITTEN_MARK_TTL, 2 * visibility)

    @contextmanager
    def _redis(self, doing: str) -> Iterator[_Redis]:
        with self._broker(doing) as conn:
            channel: Any = conn.default_channel
            prefix = str(getattr(channel, "global_keyprefix", "") or "")
            client = channel.client
            if prefix:  # kombu's prefixing client: bypass it, see the module docstring
                client = redis.Redis(connection_pool=client.connection_pool)
            yield _Redis(
                client,
                prefix + self.queue_name,
                f"{prefix}eventbus.dlq-claim:{self.queue_name}:",
            )

    def _pages(self) -> Generator[list[bytes], Collection[bytes] | None, None]:
        """Pages of raw elements, oldest first; send back the elements of a page you removed.

        Pages are addressed by index from the tail (the oldest end), where
        LPUSHes of new failures do not shift them. Removals do, and a
        concurrent replay or delete removes elements too: counting only our
        own made a replay skip records that nobody then replayed. So each
        page is read together with a check that the newest element read and
        left in the list (the anchor) is where our own removals put it; if
        it is not, the walk resumes just after wherever it is now.
        """
        with self._redis("read") as keys:
            client, queue = keys.client, keys.queue
            end = -1  # index of the oldest element not read yet
            # Elements read and left in the list, newest first (at most a page of
            # them): the first is the anchor, at index end + 1; the others are
            # where to resume if another removed it. Empty: none was left.
            left_behind: list[bytes] = []
            while True:
                with client.pipeline(transaction=True) as pipe:  # MULTI: check and read at once
                    pipe.lindex(queue, end + 1)
                    pipe.lrange(queue, end - PAGE_SIZE + 1, end)
                    at_anchor, page = pipe.execute()
                if left_behind and at_anchor != left_behind[0]:
                    end, left_behind = self._resume(client, queue, left_behind)
                    continue
                if not page:
                    return
                removed = set((yield list(reversed(page))) or ())
                end -= len(page) - len(removed)
                left = [raw for raw in page if raw not in removed]  # LRANGE: newest first
                left_behind = (left + left_behind)[:PAGE_SIZE]

    def _resume(self, client: Any, queue: str, left_behind: list[bytes]) -> tuple[int, list[bytes]]:
        """Where a walk resumes after others removed elements: (end, what is still left behind).

        Just after the newest element read and left behind that is still in
        the list. If none is (others removed them all), the walk reads what
        is left from the tail again: more than it needs to, but a replay
        claims each record before it publishes it, so it publishes none twice
        (a listing may show such a record twice, where it used to skip some).
        """
        for first in range(0, len(left_behind), RESUME_BATCH):
            candidates = left_behind[first : first + RESUME_BATCH]
            with client.pipeline(transaction=True) as pipe:  # MULTI: positions and length agree
                pipe.llen(queue)
                for raw in candidates:
                    pipe.lpos(queue, raw, rank=-1)
                length, *positions = pipe.execute()
            for n, position in enumerate(positions):
                if position is not None:  # LPOS counts from the head
                    return int(position) - int(length) - 1, left_behind[first + n :]
        return -1, []

    def _raw_elements(self) -> Iterator[bytes]:
        for page in self._pages():
            yield from page

    def __iter__(self) -> Iterator[DeadLetter]:
        for raw in self._raw_elements():
            yield decode_record(*unwrap(raw))

    def summaries(self) -> Iterator[Summary]:
        # Each element's row without building its record, where it can be (.summaries).
        return distinct(self._summaries())

    def _summaries(self) -> Iterator[Summary]:
        for raw in self._raw_elements():
            yield summary_of_element(raw)

    def redeliver(self, select: Select, publish: Publish, *, limit: int | None = None) -> list[str]:
        # Page by page (a page is a replay chunk): claim the selected records
        # in one round trip, publish them together, then remove them in one
        # more. A record with copies is published once (its oldest copy) and
        # every copy this walk meets is removed: the claims of the records it
        # replayed are kept until it ends, so that a concurrent replay cannot
        # take a copy further on for a record of its own. With a limit, the
        # walk goes on past it only to remove copies.
        walk = _Walk()
        pages = self._pages()
        try:
            page = next(pages, None)
            while page is not None:
                chosen: list[tuple[bytes, DeadLetter]] = []
                copies: list[tuple[bytes, str]] = []  # (element, id) of records met before
                for raw in page:
                    record = decode_record(*unwrap(raw))
                    if not walk.seen.add(record.id):
                        copies.append((raw, record.id))
                    elif not walk.full(limit, len(chosen)) and select(record):
                        chosen.append((raw, record))
                page = pages.send(self._redeliver_page(chosen, copies, publish, walk))
        except StopIteration:
            pass
        finally:
            pages.close()
            self._release_kept_claims(walk)
            self._announce_replayed(walk.done)
        return walk.done

    def _redeliver_page(
        self,
        chosen: list[tuple[bytes, DeadLetter]],
        copies: list[tuple[bytes, str]],
        publish: Publish,
        walk: _Walk,
    ) -> list[bytes]:
        """Claim, publish and remove the chosen records (and copies of replayed ones).

        Returns the elements this removed.
        """
        if not chosen and not any(record_id in walk.replayed for _, record_id in copies):
            return []
        with self._redis("replay from") as keys:
            client = keys.client
            held: list[tuple[bytes, DeadLetter]] = []
            claimed: list[tuple[bytes, DeadLetter]] = []
            if chosen:
                with client.pipeline(transaction=False) as pipe:
                    for raw, record in chosen:
                        pipe.set(keys.claims + record.id, "1", nx=True, ex=CLAIM_TTL)
                        # Still there once claimed? This page may have been read before a
                        # concurrent replay removed the record (it removes, then releases).
                        pipe.lpos(keys.queue, raw, rank=-1)
                    answers = pipe.execute()
                held = [pair for pair, ok in zip(chosen, answers[0::2], strict=True) if ok]
                claimed = [
                    pair
                    for pair, ok, at in zip(chosen, answers[0::2], answers[1::2], strict=True)
                    if ok and at is not None
                ]
            replayed: list[tuple[bytes, DeadLetter]] = []
            try:
                if claimed:
                    # Returns once the whole chunk was sent; raises: none is removed.
                    sent = set(publish([record for _, record in claimed]))
                    replayed = [pair for pair in claimed if pair[1].id in sent]
            finally:
                for _, record in replayed:
                    walk.replayed.add(record.id)
                    walk.done.append(record.id)
                    walk.claims.append(record.id)  # kept until the walk ends
                doomed = [raw for raw, _ in replayed]
                doomed += [raw for raw, record_id in copies if record_id in walk.replayed]
                with client.pipeline(transaction=False) as pipe:
                    for raw in doomed:
                        # Count -1 searches from the tail, where these records are.
                        pipe.lrem(keys.queue, -1, raw)
                    for _, record in held:  # after the LREMs: see the claim above
                        if record.id not in walk.replayed:
                            pipe.delete(keys.claims + record.id)
                    results = pipe.execute() if len(pipe) else []
            return [raw for raw, n in zip(doomed, results[: len(doomed)], strict=True) if int(n)]

    def _release_kept_claims(self, walk: _Walk) -> None:
        """Give up the claims a replay kept until its end (never fails the replay)."""
        if not walk.claims:
            return
        try:
            with self._redis("replay from") as keys, keys.client.pipeline(False) as pipe:
                for record_id in walk.claims:
                    pipe.delete(keys.claims + record_id)
                pipe.execute()
        except Exception:  # they expire after CLAIM_TTL anyway
            logger.warning("could not release %d replay claims", len(walk.claims), exc_info=True)

    def remove(self, record_ids: Collection[str]) -> int:
        wanted = set(record_ids)
        found: list[tuple[bytes, str]] = []
        for raw in self._raw_elements():  # to the end: every copy of each record
            record = decode_record(*unwrap(raw))
            if record.id in wanted:
                found.append((raw, record.id))
        if not found:
            return 0
        with self._redis("remove records from") as keys, keys.client.pipeline(False) as pipe:
            for raw, _ in found:
                pipe.lrem(keys.queue, -1, raw)
            removed = pipe.execute()
        return len({record_id for (_, record_id), n in zip(found, removed, strict=True) if int(n)})

    def count(self) -> int:
        with self._redis("read") as keys:
            return int(keys.client.llen(keys.queue))

    def purge(self, *, removed: Removed | None = None) -> int:
        # The list is renamed away in one step, then read and deleted: the
        # records counted (and reported to monitors) are exactly those
        # removed, and a record written meanwhile goes to a new list, kept.
        with self._redis("purge") as keys:
            client = keys.client
            doomed = f"{keys.queue}.purging.{uuid()}"
            with client.pipeline(transaction=True) as pipe:
                pipe.exists(keys.queue)
                pipe.rename(keys.queue, doomed)
                pipe.expire(doomed, PURGING_TTL)
                exists, *renamed = pipe.execute(raise_on_error=False)
            if not exists:
                return 0  # (RENAME failed on the missing key: nothing to purge)
            if isinstance(renamed[0], Exception):
                raise renamed[0]
            ids: list[str] = []
            seen = IdSet()
            start = 0
            while page := client.lrange(doomed, start, start + PAGE_SIZE - 1):
                start += len(page)
                new = [r.id for r in map(_decode, page) if seen.add(r.id)]
                ids += new
                if removed is not None and new:
                    removed(new)  # (renamed away above: out of the queue already)
            client.delete(doomed)
        self._announce(ids, "task-revoked", terminated=False, expired=False, signum=None)
        return len(ids)


def _decode(raw: bytes) -> DeadLetter:
    return decode_record(*unwrap(raw))


@dataclass
class _Walk:
    """A replay's walk through the list: what it met, replayed, and the claims it keeps."""

    seen: IdSet = field(default_factory=IdSet)
    replayed: IdSet = field(default_factory=IdSet)
    done: list[str] = field(default_factory=list)
    claims: list[str] = field(default_factory=list)

    def full(self, limit: int | None, pending: int = 0) -> bool:
        return limit is not None and len(self.done) + pending >= limit
