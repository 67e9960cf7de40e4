"""The operator's view of the dead-letter queue: list, show, replay, delete, purge."""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.store import DeadLetterStore, IdSet, Removed
from eventbus.domain.envelope import Envelope
from eventbus.errors import (
    DeadLetterError,
    DeadLetterNotFound,
    PublishError,
    ReplayConflict,
    ReplayError,
)

__all__ = ["MIN_PREFIX", "Census", "DeadLetterQueue", "Selection"]

MIN_PREFIX = 6  #: characters an id prefix needs to name a record


@dataclass(frozen=True)
class Selection:
    """Which records a filter keeps; every field given must match.

    ``handler``, ``event_type`` and ``exception_type`` are shell-style
    patterns; an exception type also matches by its short name.
    """

    handler: str | None = None
    event_type: str | None = None
    exception_type: str | None = None
    since: datetime | None = None

    def matches(self, record: DeadLetter) -> bool:
        if self.handler and not fnmatch.fnmatchcase(record.handler or "", self.handler):
            return False
        if self.event_type and not fnmatch.fnmatchcase(record.event_type or "", self.event_type):
            return False
        if self.exception_type and not _exception_matches(
            record.exception_type, self.exception_type
        ):
            return False
        # A record whose time is unknown is not within any window of time.
        return not (self.since and (record.failed_at is None or record.failed_at < self.since))


#: Re-publishes a record's envelope to its handler, optionally with corrected data.
Redeliver = Callable[[DeadLetter, Mapping[str, Any] | None], Envelope]  # type: ignore[type-arg]

#: Hears how the replay of one record went: the envelope sent, or why it was kept.
Report = Callable[[DeadLetter, "Envelope[Any] | ReplayError"], object]

# (Aliases: inside DeadLetterQueue, ``list`` is its method.)
_Records = list[DeadLetter]
_Sent = list[tuple[DeadLetter, "Envelope[Any]"]]
_Kept = list[tuple[DeadLetter, ReplayError]]


@dataclass(frozen=True)
class Census:
    """What the queue holds, from one read: records by failure group, and copies."""

    groups: Counter[tuple[str, str]]  #: records by (handler, exception type)
    copies: int  #: messages beyond the first of a record (the same failed delivery again)

    @property
    def records(self) -> int:
        return sum(self.groups.values())


class DeadLetterQueue:
    """Dead letters of one bus. Listing never consumes a record.

    A replay re-publishes the record's envelope (same ``event_id``) to the one
    handler that failed, never to the event's other subscribers, and removes
    the record only after that publish succeeded (for many records: after
    the batch holding it was sent and confirmed). A crash in between leaves
    the record in place, so a replay is at-least-once, like delivery itself.

    Each failed delivery is one record, whatever the broker holds: copies of
    a record (RabbitMQ may hold two messages of one failed delivery, see
    :mod:`eventbus.deadletter.store`) are listed, counted, shown and grouped
    once, replayed once, and removed together.
    """

    def __init__(
        self,
        store: DeadLetterStore,
        redeliver: Redeliver,
        batch: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        self.store = store
        self._redeliver = redeliver
        #: The bus's ``batch()``: a chunk of replays is sent (and confirmed) together.
        self._batch = batch

    def __iter__(self) -> Iterator[DeadLetter]:
        return self.store.records()

    def __len__(self) -> int:
        """How many records :meth:`list` shows: it reads the queue (RabbitMQ: a browse).

        For the cheap depth a monitor polls (messages, copies included), use
        ``bus.dead_letter_store.count()``.
        """
        return self.store.count_records()

    def list(
        self,
        *,
        handler: str | None = None,
        event_type: str | None = None,
        exception_type: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Records matching every filter given, oldest first.

        ``handler``, ``event_type`` and ``exception_type`` accept shell-style
        patterns (``handlers.todo.*``); an exception type also matches by its
        short name (``ValueError``).
        """
        return list(
            self.filter(
                handler=handler,
                event_type=event_type,
                exception_type=exception_type,
                since=since,
                limit=limit,
            )
        )

    def filter(
        self,
        *,
        handler: str | None = None,
        event_type: str | None = None,
        exception_type: str | None = None,
        since: datetime | None = None,
        limit: int | None = None,
    ) -> Iterator[DeadLetter]:
        """Like :meth:`list`, streaming: on a large queue, memory keeps only the ids seen."""
        selection = Selection(handler, event_type, exception_type, since)
        found = 0
        for record in self.store.records():
            if limit is not None and found >= limit:
                return
            if selection.matches(record):
                found += 1
                yield record

    def get(self, record_id: str) -> DeadLetter:
        """The record with this id (a unique prefix of 6 or more characters also works)."""
        matches: list[DeadLetter] = []
        records = self.store.records()
        try:
            for r in records:
                if r.id == record_id:
                    return r  # an exact id: the rest of the queue need not be read
                if len(record_id) >= MIN_PREFIX and r.id.startswith(record_id):
                    matches.append(r)
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()  # (a browse stopped early gives back what it held at once)
        if len(matches) == 1:
            return matches[0]
        if matches:
            shown = ", ".join(r.id for r in matches[:3]) + (", ..." if len(matches) > 3 else "")
            raise DeadLetterError(
                f"id prefix {record_id!r} matches {len(matches)} dead letters ({shown}); "
                "give more of the id"
            )
        raise DeadLetterNotFound(
            record_id,
            hint=(
                f"no id is that short; a prefix needs {MIN_PREFIX} or more characters"
                if len(record_id) < MIN_PREFIX
                else ""
            ),
        )

    def groups(self) -> Counter[tuple[str, str]]:
        """Record counts by failure group, (handler, exception type)."""
        return self.census().groups

    def census(self) -> Census:
        """Records by failure group, and how many copies of them the broker holds: one read."""
        groups: Counter[tuple[str, str]] = Counter()
        copies = 0
        seen = IdSet()
        for record in self.store:  # every message: the copies are counted, not grouped
            if seen.add(record.id):
                groups[record.group] += 1
            else:
                copies += 1
        return Census(groups, copies)

    def replay(self, record_id: str, *, data: Mapping[str, Any] | None = None) -> Envelope:  # type: ignore[type-arg]
        """Re-publish one record to its handler, then remove it. Returns the envelope sent.

        With ``data``, the corrected payload is validated against the event's
        schema first (an :class:`~eventbus.errors.EventValidationError` leaves
        everything as it was) and sent instead, under the same event id.
        """
        record = self.get(record_id)
        if not record.replayable:
            raise ReplayError(_not_replayable(record))
        sent: list[Envelope] = []  # type: ignore[type-arg]

        def publish(records: list[DeadLetter]) -> list[str]:
            # One record: no batch (it would gain nothing); an error keeps it.
            sent.extend(self._redeliver(r, data) for r in records)
            return [r.id for r in records]

        done = self.store.redeliver(lambda r: r.id == record.id, publish, limit=1)
        if not done:
            raise ReplayConflict(f"dead letter {record.id} is being replayed by someone else")
        return sent[0]

    def replay_all(
        self,
        *,
        handler: str | None = None,
        event_type: str | None = None,
        exception_type: str | None = None,
    ) -> int:
        """Replay every matching record; returns how many were replayed.

        Records that cannot be replayed (undecodable, handler gone, a failed
        publish) are kept, the others still go, and the kept ones are reported
        in the :class:`ReplayError` raised at the end.
        """
        kept: list[str] = []

        def report(record: DeadLetter, outcome: Envelope[Any] | ReplayError) -> None:
            # A record another replay holds is that replay's to publish, not kept.
            if isinstance(outcome, ReplayError) and not isinstance(outcome, ReplayConflict):
                kept.append(f"{record.id}: {outcome}")

        selection = Selection(handler, event_type, exception_type)
        total = self.replay_each(selection.matches, report)
        if kept:
            raise ReplayError(
                f"replayed {total}; {len(kept)} record(s) kept, not replayable: "
                + "; ".join(kept[:5])
            )
        return total

    def replay_each(self, select: Callable[[DeadLetter], bool], report: Report) -> int:
        """Replay every record ``select`` accepts, oldest first; returns how many were replayed.

        ``report(record, outcome)`` hears of each record as it goes: the
        envelope sent, or the :class:`ReplayError` of a record kept. Unlike
        :meth:`replay_all`, a failing record (not replayable, its handler or
        event type unknown here, a failed publish, held by a concurrent
        replay) does not stop the others. Records are published in chunks,
        each in one ``bus.batch()``, and removed once their chunk was sent
        (and confirmed); a chunk whose sending failed keeps all its records,
        each reported. One streaming pass: memory stays flat however many match.
        """
        kept: set[str] = set()
        waiting: dict[str, DeadLetter] = {}  # selected, not yet handed to publish
        replayed = 0

        def choose(record: DeadLetter) -> bool:
            if record.id in kept or not select(record):
                return False
            if not record.replayable:
                kept.add(record.id)
                report(record, ReplayError(_not_replayable(record)))
                return False
            waiting[record.id] = record
            return True

        def publish(records: list[DeadLetter]) -> list[str]:
            nonlocal replayed
            for record in records:
                waiting.pop(record.id, None)
            sent, failed = self._publish_chunk(records)
            for record, error in failed:
                kept.add(record.id)
                report(record, error)
            for record, envelope in sent:
                report(record, envelope)
            replayed += len(sent)
            return [record.id for record, _ in sent]

        self.store.redeliver(choose, publish)
        for record in waiting.values():  # selected, then skipped: a concurrent replay holds it
            report(
                record, ReplayConflict(f"dead letter {record.id} is being replayed by someone else")
            )
        return replayed

    def _publish_chunk(self, records: _Records) -> tuple[_Sent, _Kept]:
        """Re-publish records in one batch: (record, envelope) sent, (record, error) kept.

        A record that fails on its own (undecodable envelope, handler not
        subscribed, too large) raises before anything of it is sent and
        leaves the batch to the others. A batch that could not be sent keeps
        every record: any of them may have been delivered (at-least-once).
        """
        sent: _Sent = []
        failed: _Kept = []
        try:
            with self._batch():
                for record in records:
                    try:
                        sent.append((record, self._redeliver(record, None)))
                    except ReplayError as exc:  # caught here: raising would discard the batch
                        failed.append((record, exc))
        except PublishError as exc:
            error = ReplayError(
                f"re-publish of a batch of {len(records)} record(s) failed, all kept: {exc}"
            )
            error.__cause__ = exc
            return [], failed + [(record, error) for record, _ in sent]
        return sent, failed

    def delete(self, record_ids: Collection[str]) -> int:
        """Delete these records (full ids) without replaying them; returns how many were found.

        For records nobody should replay, such as a message pushed onto the
        dead-letter queue by hand that is not a record at all.
        """
        return self.store.remove(record_ids)

    def purge(self, *, removed: Removed | None = None) -> int:
        """Delete every record. Returns how many were deleted.

        ``removed(ids)`` hears the records' ids as they go, a batch at a time
        (see :meth:`~eventbus.deadletter.store.DeadLetterStore.purge`).
        """
        return self.store.purge(removed=removed)


def _not_replayable(record: DeadLetter) -> str:
    return (
        f"dead letter {record.id} has no decodable envelope ({record.reason}); "
        "inspect it with 'eventbus dlq show' and purge it"
    )


def _exception_matches(actual: str, pattern: str) -> bool:
    short = actual.rsplit(".", 1)[-1]
    return fnmatch.fnmatchcase(actual, pattern) or fnmatch.fnmatchcase(short, pattern)
