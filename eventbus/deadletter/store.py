"""Where dead letters are kept: the storage interface, which knows no broker.

A store appends records, iterates them *without consuming* (oldest first),
removes chosen ones, counts and purges. The stores on a Celery broker
(:mod:`eventbus.celery.deadletter`) keep them as durable JSON task messages in
one queue (default ``eventbus.dlq``); :mod:`eventbus.deadletter.memory` keeps
them in a list. This module imports none of them.

A record's id names its failed delivery, and a queue may still hold two
messages of one record: RabbitMQ cannot refuse a duplicate on write, and
two processes that ran the same redelivered message each recorded it. A
store's iteration and :meth:`~DeadLetterStore.count` are of *messages*,
copies included (the raw view: the queue's depth); what an operator reads is
*records*: :meth:`~DeadLetterStore.records` and
:meth:`~DeadLetterStore.count_records` show each id once (its oldest copy),
:meth:`~DeadLetterStore.remove` and :meth:`~DeadLetterStore.purge` count
records and remove every copy, and a replay publishes a record once and then
removes every copy of it.
"""

from __future__ import annotations

import logging
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Protocol, TypeVar

from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.summary import Summary

__all__ = [
    "DEFAULT_DEAD_LETTER_QUEUE",
    "REPLAY_CHUNK",
    "DeadLetterStore",
    "IdSet",
    "Publish",
    "Removed",
    "Select",
    "distinct",
]

DEFAULT_DEAD_LETTER_QUEUE = "eventbus.dlq"  #: the dead-letter queue's default name

logger = logging.getLogger(__name__)


#: Records a replay publishes together (one ``bus.batch()``) before it removes
#: them. 500 is a Redis page, whose message and task-sent event make one
#: 1,000-operation pipeline flush; on RabbitMQ one confirm wait per 500
#: messages is already lost in the noise. It also bounds what a failed chunk
#: leaves behind: up to 500 records kept that may have been delivered too.
REPLAY_CHUNK = 500


#: Publishes a chunk of records again, together; returns the ids of those it
#: sent (and the broker confirmed). Only those are removed; raising keeps them all.
Publish = Callable[[list[DeadLetter]], Collection[str]]
#: Chooses the records to replay.
Select = Callable[[DeadLetter], bool]
#: Hears which records a purge removed, a batch at a time, once they are gone.
Removed = Callable[[list[str]], object]


class DeadLetterStore(ABC):
    """Storage of dead-letter records. Iteration never consumes.

    Subclasses implement ``append``, ``__iter__``, ``remove``, ``count`` and
    ``purge``; ``redeliver`` is built on them with a per-record claim
    (``_claim``/``_release``) that a store shared between processes makes
    atomic across them. Copies of one record (messages with the same id) are
    each yielded by ``__iter__`` and counted by ``count``; ``records`` and
    ``count_records`` show them once, ``remove``, ``purge`` and ``redeliver``
    take every copy of a record they take.
    """

    def __init__(self) -> None:
        self._claims: set[str] = set()
        self._claims_lock = threading.Lock()

    @abstractmethod
    def append(self, record: DeadLetter, *, again: bool = False) -> None:
        """Write ``record`` durably; raise :class:`~eventbus.errors.DeadLetterError` if not.

        ``again``: the record may have been written before (a write whose
        answer was lost, a message delivered again): a store that can tell
        keeps one copy. A record's id names its failed delivery.
        """

    def append_once(self, record: DeadLetter, *, again: bool = False) -> None:
        """One attempt at :meth:`append`, for a caller that retries on its own schedule."""
        self.append(record, again=again)

    @abstractmethod
    def __iter__(self) -> Iterator[DeadLetter]:
        """Every message as a record, oldest first, without removing any; copies each."""

    def records(self) -> Iterator[DeadLetter]:
        """Every record once, oldest first, without removing any: what an operator reads.

        A record with copies is shown once, as its oldest copy. Keeps the ids
        seen so far (about 100 bytes each), not the records: memory grows
        with the number of records, but slowly.
        """
        return distinct(self)

    def summaries(self) -> Iterator[Summary]:
        """Every record once, oldest first, as its :class:`Summary` row: what a list shows.

        The rows :meth:`records` gives, through :meth:`Summary.of`; a store
        that can read a row for less than the whole record (a broker store,
        :mod:`eventbus.celery.deadletter.summaries`) does, and gives the same
        rows.
        """
        return (Summary.of(record) for record in self.records())

    def count_records(self) -> int:
        """How many records :meth:`records` shows (each record once, however many copies).

        Reads the whole queue (on RabbitMQ: a browse); :meth:`count` is the
        cheap depth, copies included.
        """
        return sum(1 for _ in self.records())

    @abstractmethod
    def remove(self, record_ids: Collection[str]) -> int:
        """Remove these records, every copy of each; return how many records were found."""

    @abstractmethod
    def count(self) -> int:
        """Messages in the queue, copies of a record included: its depth, read cheaply."""

    @abstractmethod
    def purge(self, *, removed: Removed | None = None) -> int:
        """Remove every record, copies included; return how many records there were.

        ``removed(ids)`` hears the ids of the records removed, a batch at a
        time, each once, only once the broker removed them (for a progress
        bar, or a line per record): the ids it heard are those counted. An
        exception it raises ends the purge there and propagates: what was
        removed stays removed, the rest stays in the queue.
        """

    def declare(self) -> None:
        """Create what the store needs on its backend (nothing, by default)."""
        return None

    def redeliver(self, select: Select, publish: Publish, *, limit: int | None = None) -> list[str]:
        """Publish the selected records chunk by chunk, then remove them; return the ids replayed.

        One streaming pass, oldest first. Each chunk of up to
        :data:`REPLAY_CHUNK` selected records is claimed and handed to
        ``publish``, which returns the ids it sent; only those are removed,
        after it returned. A record that a concurrent replay holds is
        skipped, so it is published once. If ``publish`` raises, the earlier
        chunks stay removed, none of this one is, and the error propagates.
        A record with copies is selected and published once (its oldest
        copy); removing it removes every copy (``remove``).
        """
        done: list[str] = []
        chunk: list[DeadLetter] = []
        seen = IdSet()  # a copy of a record seen before is neither selected nor published
        try:
            for record in self:
                if limit is not None and len(done) + len(chunk) >= limit:
                    break
                if not seen.add(record.id):
                    continue
                if not select(record) or not self._claim(record.id):
                    continue
                chunk.append(record)
                if len(chunk) >= REPLAY_CHUNK:
                    self._redeliver_chunk(chunk, publish, done)
            if chunk:
                self._redeliver_chunk(chunk, publish, done)
        finally:
            for record in chunk:  # claimed, never published (select or the walk raised)
                self._release(record.id)
            self._announce_replayed(done)
        return done

    def _redeliver_chunk(self, chunk: list[DeadLetter], publish: Publish, done: list[str]) -> None:
        try:
            sent = set(publish(list(chunk)))
            replayed = [record.id for record in chunk if record.id in sent]
            if replayed:
                self.remove(replayed)
            done.extend(replayed)
        finally:
            for record in chunk:
                self._release(record.id)
            chunk.clear()

    def _claim(self, record_id: str) -> bool:
        with self._claims_lock:
            if record_id in self._claims:
                return False
            self._claims.add(record_id)
            return True

    def _release(self, record_id: str) -> None:
        with self._claims_lock:
            self._claims.discard(record_id)

    def _announce_replayed(self, record_ids: list[str]) -> None:
        """Tell monitors (Flower) these records left the queue; a no-op here."""
        return None


class _Identified(Protocol):
    @property
    def id(self) -> str: ...


_Item = TypeVar("_Item", bound=_Identified)


def distinct(records: Iterable[_Item]) -> Iterator[_Item]:
    """``records`` (or their rows) with each id once: the first copy of each (the oldest)."""
    seen = IdSet()
    iterator = iter(records)
    try:
        for record in iterator:
            if seen.add(record.id):
                yield record
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:  # a browse ends (and gives its messages back) now, not at GC
            close()


_HEX_ID = re.compile(r"[0-9a-f]{32}")


class IdSet:
    """A set of record ids, kept small: an id of 32 hex digits (eventbus's) as an int."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: set[int | str] = set()

    @staticmethod
    def _key(record_id: str) -> int | str:
        return int(record_id, 16) if _HEX_ID.fullmatch(record_id) else record_id

    def add(self, record_id: str) -> bool:
        """Add ``record_id``; False if it was there already."""
        key = self._key(record_id)
        if key in self._ids:
            return False
        self._ids.add(key)
        return True

    def __contains__(self, record_id: object) -> bool:
        return isinstance(record_id, str) and self._key(record_id) in self._ids
