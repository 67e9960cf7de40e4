"""The console's current snapshot of the queue: when it is read again, and in which thread.

See :mod:`eventbus.console.snapshot` for what a snapshot holds and costs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Collection

from eventbus.console.snapshot import DEFAULT_MAX_AGE, Readers, Snapshot
from eventbus.deadletter.store import DeadLetterStore

__all__ = ["SnapshotCache"]


class SnapshotCache:
    """The console's current snapshot, read again when older than ``max_age``.

    The first page reads the queue; later, a stale snapshot is still served
    while one background thread reads the queue again (``refreshing`` is then
    set, and the pages say so). A read that fails is kept as the answer (it
    is raised to every page) until a read succeeds. ``max_age=0``: every
    call reads the queue, in the caller's thread.
    """

    def __init__(
        self,
        store: DeadLetterStore,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        readers: Readers | None = None,
    ) -> None:
        self.store = store
        self.max_age = max_age
        self.readers = readers
        self._snapshot: Snapshot | None = None
        self._failure: Exception | None = None
        self._lock = threading.Lock()  # held while the snapshot is read in a caller's thread
        self._state = threading.Lock()  # guards the fields below
        self._reader: threading.Thread | None = None

    @property
    def refreshing(self) -> bool:
        reader = self._reader
        return reader is not None and reader.is_alive()

    def get(self, *, fresh: bool = False) -> Snapshot:
        """The snapshot to show (``fresh``: read the queue now, in this thread).

        Raises what the last read raised, if it failed.
        """
        if fresh or self.max_age <= 0:
            return self._read_now()
        with self._state:
            snapshot, failure = self._snapshot, self._failure
        if failure is not None:
            self.refresh()  # try again, in the background; this page says why it cannot show
            raise failure
        if snapshot is None:
            return self._read_now()
        if snapshot.age() > self.max_age:
            self.refresh()
        return snapshot

    def refresh(self) -> None:
        """Read the queue again in a background thread (unless one is reading it now)."""
        with self._state:
            if self.refreshing:
                return
            self._reader = threading.Thread(
                target=self._read_quietly, name="eventbus-console-snapshot", daemon=True
            )
            self._reader.start()

    def forget(self, record_ids: Collection[str]) -> None:
        """These records left the queue (this console replayed or purged them)."""
        with self._state:
            if self._snapshot is not None and record_ids:
                self._snapshot = self._snapshot.without(record_ids)

    def invalidate(self) -> None:
        """Read the queue again soon: the next page waits for a fresh read."""
        with self._state:
            self._snapshot = None

    def _read_now(self) -> Snapshot:
        with self._lock:
            with self._state:
                previous = self._snapshot
            try:
                snapshot = Snapshot.read(self.store, self.readers, previous)
            except Exception as exc:
                with self._state:
                    self._snapshot, self._failure = None, exc
                raise
            with self._state:
                self._snapshot, self._failure = snapshot, None
            return snapshot

    def _read_quietly(self) -> None:
        with contextlib.suppress(Exception):  # kept as _failure, raised to the next page
            self._read_now()
