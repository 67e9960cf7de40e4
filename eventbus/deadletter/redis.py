"""Dead letters on Redis: kombu keeps the queue as a list, which we read with LRANGE.

kombu's Redis transport LPUSHes each message (a JSON wrapper whose ``body`` is
base64) and consumers BRPOP from the other end, so the oldest record is at
index -1. Browsing reads pages from that end, and before each page checks that
removals by others have not shifted its place (``_pages``); removal is
``LREM`` of the exact stored element. A replay first claims a page's records
with ``SET NX`` (with a TTL), so two operators replaying the same record
publish it once, and holds the claims until the page was sent and its records
removed.

kombu's ``global_keyprefix`` transport option prefixes the keys of only the
commands kombu itself sends (its client prefixes ``LLEN``, ``DEL``, ``SET``,
... but not ``LRANGE``, ``LINDEX``, ``LPOS`` or ``LREM``): through that
client, a store counted and purged the prefixed list while it listed and
removed from the bare one. Here every command goes through a plain client
on the same connection pool, with the prefix written into each key.
"""

from __future__ import annotations

from collections.abc import Collection, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.store import (
    REPLAY_CHUNK,
    BrokerDeadLetterStore,
    Publish,
    Select,
    decode_record,
    unwrap,
)

__all__ = ["RedisDeadLetterStore"]

#: List elements read per LRANGE round trip; a replay publishes a page's
#: selected records as one chunk (store.REPLAY_CHUNK explains the size).
PAGE_SIZE = REPLAY_CHUNK
CLAIM_TTL = 300  #: seconds a replay may hold a record before another may take it
#: Elements looked for per round trip when a walk finds its place taken by
#: others' removals; the first is nearly always still there.
RESUME_BATCH = 16


@dataclass(frozen=True)
class _Redis:
    """A client that prefixes nothing, and the keys it works on (prefix included)."""

    client: Any  #: a redis.Redis (its bytes-typed calls are untyped here, as kombu's client is)
    queue: str  #: the dead-letter list
    claims: str  #: the start of every claim key of this queue


class RedisDeadLetterStore(BrokerDeadLetterStore):
    """Browse and edit the dead-letter list in place."""

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

    def redeliver(self, select: Select, publish: Publish, *, limit: int | None = None) -> list[str]:
        # Page by page (a page is a replay chunk): claim the selected records
        # in one round trip, publish them together, then remove and release
        # them in one more.
        done: list[str] = []
        pages = self._pages()
        try:
            page = next(pages, None)
            while page is not None:
                chosen: list[tuple[bytes, DeadLetter]] = []
                for raw in page:
                    if limit is not None and len(done) + len(chosen) >= limit:
                        break
                    record = decode_record(*unwrap(raw))
                    if select(record):
                        chosen.append((raw, record))
                removed = self._redeliver_page(chosen, publish, done)
                if limit is not None and len(done) >= limit:
                    break
                page = pages.send(removed)
        except StopIteration:
            pass
        finally:
            pages.close()
            self._announce_replayed(done)
        return done

    def _redeliver_page(
        self, chosen: list[tuple[bytes, DeadLetter]], publish: Publish, done: list[str]
    ) -> list[bytes]:
        """Claim, publish and remove the chosen records; return the elements this removed."""
        if not chosen:
            return []
        with self._redis("replay from") as keys:
            client = keys.client
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
                with client.pipeline(transaction=False) as pipe:
                    for raw, _ in replayed:
                        # Count -1 searches from the tail, where these records are.
                        pipe.lrem(keys.queue, -1, raw)
                    for _, record in held:  # after the LREMs: see the claim above
                        pipe.delete(keys.claims + record.id)
                    results = pipe.execute() if held else []
            done.extend(record.id for _, record in replayed)
            return [
                raw
                for (raw, _), n in zip(replayed, results[: len(replayed)], strict=True)
                if int(n)
            ]

    def remove(self, record_ids: Collection[str]) -> int:
        wanted = set(record_ids)
        found: list[bytes] = []
        for raw in self._raw_elements():
            record = decode_record(*unwrap(raw))
            if record.id in wanted:
                found.append(raw)
                wanted.discard(record.id)
                if not wanted:
                    break
        if not found:
            return 0
        with self._redis("remove records from") as keys, keys.client.pipeline(False) as pipe:
            for raw in found:
                pipe.lrem(keys.queue, -1, raw)
            return sum(int(n) for n in pipe.execute())

    def count(self) -> int:
        with self._redis("read") as keys:
            return int(keys.client.llen(keys.queue))

    def purge(self) -> int:
        ids = [record.id for record in self]
        with self._redis("purge") as keys, keys.client.pipeline() as pipe:
            pipe.llen(keys.queue)  # MULTI: count and delete as one step
            pipe.delete(keys.queue)
            count, _ = pipe.execute()
        self._announce(ids, "task-revoked", terminated=False, expired=False, signum=None)
        return int(count)
