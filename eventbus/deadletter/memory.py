"""Dead letters in a Python list: the store of :class:`~eventbus.InMemoryEventBus`."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator

from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.store import DeadLetterStore, Removed

__all__ = ["InMemoryDeadLetterStore"]


class InMemoryDeadLetterStore(DeadLetterStore):
    def __init__(self) -> None:
        super().__init__()
        self._records: list[DeadLetter] = []
        self._lock = threading.Lock()

    def append(self, record: DeadLetter, *, again: bool = False) -> None:
        with self._lock:
            if not again or all(r.id != record.id for r in self._records):
                self._records.append(record)

    def __iter__(self) -> Iterator[DeadLetter]:
        with self._lock:
            return iter(list(self._records))

    def remove(self, record_ids: Collection[str]) -> int:
        wanted = set(record_ids)
        with self._lock:
            found = {r.id for r in self._records if r.id in wanted}
            self._records = [r for r in self._records if r.id not in wanted]
        return len(found)

    def count(self) -> int:
        return len(self._records)

    def count_records(self) -> int:
        with self._lock:
            return len({r.id for r in self._records})

    def purge(self, *, removed: Removed | None = None) -> int:
        with self._lock:
            ids = list(dict.fromkeys(r.id for r in self._records))
            self._records.clear()
        if removed is not None and ids:
            removed(ids)
        return len(ids)
