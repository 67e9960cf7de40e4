"""What the console's list pages read: one summary row per dead letter, from one read of the queue.

A dead-letter store can only be read front to back (Redis: ``LRANGE`` pages;
RabbitMQ: a browse that holds every message it passes, because AMQP 0-9-1 has
no peek). Reading the queue again for every page, at page 2,000 of a
100,000-record queue, would take seconds per click. So the console reads it
into a :class:`Snapshot` of small rows (no envelope, no traceback: a few
hundred bytes a record) and serves the groups, records and overview pages
from it, with cursor paging by row position. The rows come from the
store's :meth:`~eventbus.deadletter.store.DeadLetterStore.summaries`: on a
broker, read from each message without building its record where its shape
allows (:mod:`eventbus.celery.deadletter.summaries`; the same row the full
decode gives), which makes the read several times cheaper than decoding
every record (``bench/bench_console.py``).

The cost is one full read per refresh.
:class:`~eventbus.console.cache.SnapshotCache` reads the queue on the first
page; a snapshot older than ``max_age`` seconds is read again in the
background while the pages go on showing the one they have; every
page says when what it shows was read, beside the queue's live depth (one
cheap call). What this console itself removed (a replay, a purge) leaves the
snapshot at once. With ``max_age=0`` every page reads the queue itself.

A read that fails is never hidden: the page raises its
:class:`~eventbus.errors.DeadLetterQueueUnavailable` and says so, with the
problem named; a stale snapshot is not shown in its place, nor "empty".

A single record (its page, its actions) is always read live from the store.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime

from eventbus.deadletter.store import DeadLetterStore
from eventbus.deadletter.summary import MESSAGE_CHARS, Summary

__all__ = [
    "DEFAULT_MAX_AGE",
    "MESSAGE_CHARS",
    "Filters",
    "Group",
    "Page",
    "Readers",
    "Row",
    "Snapshot",
    "cursor_of",
]

#: Counts the other readers of the dead-letter queue now (see Snapshot.read).
Readers = Callable[[], int]

DEFAULT_MAX_AGE = 5.0  #: seconds a snapshot is served before the queue is read again


#: One record, as the list pages show it and filter it (the store's summary row).
Row = Summary


def cursor_of(position: int, row: Row) -> str:
    """The cursor of the page after ``row``, at ``position`` in its snapshot."""
    failed_ms = -1 if row.failed_at is None else int(row.failed_at * 1000)
    return f"{position}.{row.id}.{failed_ms}"


@dataclass(frozen=True)
class Filters:
    """The records page's filters; every one given must match (exact names, text: substring)."""

    handler: str = ""
    event_type: str = ""
    reason: str = ""
    exception_type: str = ""
    since: datetime | None = None
    until: datetime | None = None
    text: str = ""

    def matches(self, row: Row) -> bool:
        if self.handler and row.handler != self.handler:
            return False
        if self.event_type and row.event_type != self.event_type:
            return False
        if self.reason and row.reason != self.reason:
            return False
        if self.exception_type and self.exception_type not in (
            row.exception_type,
            row.exception_type.rsplit(".", 1)[-1],
        ):
            return False
        if self.since is not None or self.until is not None:
            failed_at = row.failed_at
            if failed_at is None:  # unknown: within no window of time
                return False
            if self.since is not None and failed_at < self.since.timestamp():
                return False
            if self.until is not None and failed_at >= self.until.timestamp():
                return False
        if self.text:
            needle = self.text.casefold()
            fields = (row.id, row.event_id, row.aggregate_id, row.message, row.handler)
            return any(needle in value.casefold() for value in fields)
        return True

    @property
    def active(self) -> bool:
        return any(
            (self.handler, self.event_type, self.reason, self.exception_type, self.text)
        ) or (self.since is not None or self.until is not None)


@dataclass
class Group:
    """Records of one (handler, exception type, reason)."""

    handler: str
    exception_type: str
    reason: str
    count: int = 0
    #: The earliest and latest known failure times (None: none of its records says).
    first: float | None = None
    last: float | None = None
    replayable: int = 0
    messages: Counter[str] = field(default_factory=Counter)

    @property
    def top_message(self) -> tuple[str, int]:
        """The most frequent exception message of the group, and how often it occurs."""
        return self.messages.most_common(1)[0] if self.messages else ("", 0)


@dataclass(frozen=True)
class Page:
    """One page of rows, and the cursor of the next page (None: this is the last)."""

    rows: list[Row]
    next_cursor: str | None
    restarted: bool  #: the cursor's record had left the queue: the page goes on by time


@dataclass
class Snapshot:
    """The rows of one read of the queue, oldest first, and when it was taken."""

    rows: list[Row]
    taken_at: float  #: time.time() when the read began
    took: float  #: seconds the read took
    #: Another reader held messages of the queue while it was read (RabbitMQ: a
    #: browse sees only what no other browse holds): records may be missing.
    incomplete: bool = False
    #: The read is still under way: these are the rows read so far, not the queue.
    partial: bool = False
    #: Messages the queue held when the read began (copies included), if known.
    expected: int | None = None
    _positions: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def read(
        cls,
        store: DeadLetterStore,
        readers: Readers | None = None,
        previous: Snapshot | None = None,
        into: list[Row] | None = None,
    ) -> Snapshot:
        """Read every record of ``store`` once (each record once, copies folded).

        ``readers()`` counts the other readers of the queue (consumers, on
        RabbitMQ), asked before and after: any means the read may have missed
        records they held. The rows of ``previous`` are reused for the records
        it has (a record never changes): while a refresh runs the old
        snapshot is still served, and the two then share their rows instead
        of holding two copies (bench_console.py: 165 MB at 100,000 records
        without it). ``into``: the list the rows are appended to as they are
        read (what :meth:`so_far` shows meanwhile).
        """
        started = time.time()
        clock = time.perf_counter()
        before = readers() if readers is not None else 0
        known = {row.id: row for row in previous.rows} if previous is not None else {}
        rows = into if into is not None else []
        append = rows.append
        for row in store.summaries():
            append(known.get(row.id) or row)
        del known
        after = readers() if readers is not None else 0
        return cls(rows, started, time.perf_counter() - clock, bool(before or after))

    @classmethod
    def so_far(cls, rows: list[Row], started: float, expected: int | None) -> Snapshot:
        """What a read still under way has read: marked :attr:`partial`, never the whole queue."""
        return cls(list(rows), started, time.time() - started, partial=True, expected=expected)

    def __len__(self) -> int:
        return len(self.rows)

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.taken_at

    def position(self, record_id: str) -> int | None:
        if not self._positions and self.rows:
            self._positions = {row.id: n for n, row in enumerate(self.rows)}
        return self._positions.get(record_id)

    def page(self, filters: Filters, cursor: str | None, size: int) -> Page:
        """Up to ``size`` rows matching ``filters`` after ``cursor``; cost: the rows walked.

        A cursor names the last row shown: ``POSITION.ID.FAILED_AT_MS``. Its
        position is tried first, then its id (a new snapshot moved the
        record). When the record has left the queue, the page goes on from
        the first record that failed after it (``restarted`` says so): the
        queue keeps records in the order they were written, nearly that of
        their failures.
        """
        start, restarted = 0, False
        if cursor:
            start, restarted = self._resume(cursor)
        found: list[Row] = []
        rows = self.rows
        last = start
        for n in range(max(start, 0), len(rows)):
            row = rows[n]
            if filters.matches(row):
                if len(found) == size:
                    return Page(found, cursor_of(last, found[-1]), restarted)
                found.append(row)
                last = n
        return Page(found, None, restarted)

    def _resume(self, cursor: str) -> tuple[int, bool]:
        """Where the page after ``cursor`` starts, and whether its record had left the queue."""
        parts = cursor.split(".")
        try:
            position, record_id, failed_ms = int(parts[0]), parts[1], int(parts[2])
        except (ValueError, IndexError):
            return 0, True
        rows = self.rows
        if 0 <= position < len(rows) and rows[position].id == record_id:
            return position + 1, False
        moved = self.position(record_id)
        if moved is not None:
            return moved + 1, False
        after = failed_ms / 1000
        for n, row in enumerate(rows):
            if row.failed_at is not None and row.failed_at > after:
                return n, True
        return len(rows), True

    def groups(self) -> list[Group]:
        """Every failure group, largest first: one pass over the rows."""
        groups: dict[tuple[str, str, str], Group] = {}
        for row in self.rows:
            key = row.group_key
            group = groups.get(key)
            if group is None:
                group = groups[key] = Group(*key)
            group.count += 1
            failed_at = row.failed_at
            if failed_at is not None:
                group.first = failed_at if group.first is None else min(group.first, failed_at)
                group.last = failed_at if group.last is None else max(group.last, failed_at)
            group.replayable += row.replayable
            group.messages[row.message] += 1
        return sorted(
            groups.values(), key=lambda g: (-g.count, g.handler, g.exception_type, g.reason)
        )

    def without(self, record_ids: Collection[str]) -> Snapshot:
        """This snapshot without these records (which this console removed), same time."""
        gone = set(record_ids)
        rows = [row for row in self.rows if row.id not in gone]
        return Snapshot(
            rows, self.taken_at, self.took, self.incomplete, self.partial, self.expected
        )

    def failures_since(self, since: float) -> Counter[str]:
        """Records per handler that failed at or after ``since`` (and are still in the queue)."""
        return Counter(
            row.handler for row in self.rows if row.failed_at is not None and row.failed_at >= since
        )

    def values(self) -> dict[str, list[str]]:
        """The distinct handler, event type, reason and exception names: the filter choices."""
        return {
            "handler": sorted({row.handler for row in self.rows}),
            "event_type": sorted({row.event_type for row in self.rows}),
            "reason": sorted({row.reason for row in self.rows}),
            "exception_type": sorted({row.exception_type for row in self.rows}),
        }
