"""The in-memory event store: for tests and a single process, with the SQL stores' rules.

Not a stand-in: appends are atomic under a lock, numbered the same way, and
a stale ``expected_version`` raises the same
:class:`~eventbus.errors.ConcurrencyError`. Records keep JSON data and are
decoded (and upcast) on every read, like rows from a database.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from eventbus.domain.events import EventRegistry
from eventbus.errors import EventStoreError
from eventbus.store.base import EventRecord, EventStore, Stream, number_rows

__all__ = ["InMemoryEventStore"]


class InMemoryEventStore(EventStore):
    """An event store in this process's memory (gone when it exits). Thread-safe."""

    def __init__(self, *, event_registry: EventRegistry | None = None) -> None:
        super().__init__(event_registry=event_registry)
        self._lock = threading.Lock()
        self._all: list[EventRecord] = []  # index i holds position i + 1
        self._streams: dict[Stream, list[EventRecord]] = {}  # index i holds sequence i + 1
        self._event_ids: set[UUID] = set()

    def _write(
        self, stream: Stream, rows: Sequence[dict[str, Any]], expected_version: int | None
    ) -> list[tuple[int, int]]:
        with self._lock:
            records = self._streams.setdefault(stream, [])
            numbered = number_rows(stream, rows, len(records), expected_version)
            ids = [row["event_id"] for row in numbered]
            taken = [i for i in ids if i in self._event_ids]
            if taken or len(set(ids)) != len(ids):
                # The SQL stores' unique event_id, and the same all-or-nothing.
                raise EventStoreError(
                    f"event {taken[0] if taken else ids} is already stored: "
                    "an event is appended once"
                )
            written = []
            for row in numbered:
                record = EventRecord(
                    position=len(self._all) + 1,
                    aggregate_type=stream.aggregate_type or None,
                    aggregate_id=stream.aggregate_id,
                    **row,
                )
                self._all.append(record)
                records.append(record)
                self._event_ids.add(record.event_id)
                written.append((record.position, record.sequence))
            return written

    def version(self, aggregate_id: object, *, aggregate_type: str | None = None) -> int:
        with self._lock:
            return len(self._streams.get(Stream.of(aggregate_id, aggregate_type), ()))

    def _stream(self, stream: Stream, after: int) -> list[EventRecord]:
        with self._lock:
            return list(self._streams.get(stream, ())[max(after, 0) :])

    def read_all_records(self, after: int = 0, *, limit: int | None = None) -> list[EventRecord]:
        start = max(after, 0)
        with self._lock:
            return self._all[start : None if limit is None else start + max(limit, 0)]
