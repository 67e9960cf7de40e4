"""Per-partition offsets of the Kafka consumer: what was dispatched, what is committed.

A partition's *dispatched* offset is the next record to dispatch: every
record before it had its handler messages accepted by the Celery broker (or
became a dead letter). Only a dispatched offset is ever committed, so the
group's committed offset never passes a record that was not dispatched.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

__all__ = ["Offsets", "TopicPartition"]

#: A partition: (topic, partition number).
TopicPartition = tuple[str, int]


class Offsets:
    """Dispatched and committed offsets by partition (thread-safe: commits confirm in callbacks)."""

    def __init__(self) -> None:
        self._dispatched: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._requested: dict[TopicPartition, int] = {}
        self._lock = threading.Lock()

    def dispatched(self, place: TopicPartition, next_offset: int) -> None:
        """Every record of ``place`` before ``next_offset`` was dispatched."""
        with self._lock:
            self._dispatched[place] = max(next_offset, self._dispatched.get(place, -1))

    def committed(self, place: TopicPartition, offset: int) -> None:
        """The group's committed offset of ``place`` is ``offset`` (a commit confirmed)."""
        with self._lock:
            self._committed[place] = max(offset, self._committed.get(place, -1))

    def to_commit(self) -> dict[TopicPartition, int]:
        """Dispatched offsets not committed (nor asked to be) since they last moved."""
        with self._lock:
            wanted = {
                place: offset
                for place, offset in self._dispatched.items()
                if offset > self._committed.get(place, -1) and offset != self._requested.get(place)
            }
            self._requested.update(wanted)
            return wanted

    def commit_failed(self, places: Iterable[TopicPartition]) -> None:
        """A commit of these was refused or lost: :meth:`to_commit` asks for them again."""
        with self._lock:
            for place in places:
                self._requested.pop(place, None)

    def uncommitted(self) -> dict[TopicPartition, int]:
        """Every dispatched offset not confirmed committed (a final, synchronous commit)."""
        with self._lock:
            return {
                place: offset
                for place, offset in self._dispatched.items()
                if offset > self._committed.get(place, -1)
            }

    def position(self, place: TopicPartition) -> int | None:
        """The next record of ``place`` to dispatch, once this member dispatched any."""
        with self._lock:
            return self._dispatched.get(place)

    def committed_offsets(self) -> dict[TopicPartition, int]:
        with self._lock:
            return dict(self._committed)

    def forget(self, places: Iterable[TopicPartition]) -> None:
        """The partitions went to another member: their offsets are its business now."""
        with self._lock:
            for place in places:
                for table in (self._dispatched, self._committed, self._requested):
                    table.pop(place, None)
