"""The console's current snapshot of the queue: when it is read again, and in which thread.

See :mod:`eventbus.console.snapshot` for what a snapshot holds and costs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Collection

from eventbus.console.snapshot import DEFAULT_MAX_AGE, Readers, Row, Snapshot
from eventbus.deadletter.store import DeadLetterStore

__all__ = ["FIRST_WAIT", "SnapshotCache"]

#: Seconds a page with no snapshot to show waits for the queue's read before it
#: shows the rows read so far, marked partial (the groups page's target is 2 s).
FIRST_WAIT = 1.5


class SnapshotCache:
    """The console's current snapshot, read again when older than ``max_age``.

    With no snapshot yet (the first page, or after :meth:`invalidate`), the
    queue is read in a background thread and the page waits for it up to
    ``first_wait`` seconds; a read that takes longer is shown as far as it
    got, as a :attr:`~Snapshot.partial` snapshot (the pages say so, and how
    much of the queue it holds), until it ends. Later, a stale snapshot is
    still served while one background thread reads the queue again
    (``refreshing`` is then set, and the pages say so). A read that fails is
    kept as the answer (it is raised to every page) until a read succeeds.
    ``max_age=0``: every call reads the queue, in the caller's thread.
    """

    def __init__(
        self,
        store: DeadLetterStore,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        readers: Readers | None = None,
        first_wait: float = FIRST_WAIT,
    ) -> None:
        self.store = store
        self.max_age = max_age
        self.readers = readers
        self.first_wait = first_wait
        self._snapshot: Snapshot | None = None
        self._failure: Exception | None = None
        self._lock = threading.Lock()  # held while the snapshot is read in a caller's thread
        self._state = threading.Lock()  # guards the fields below
        self._reader: threading.Thread | None = None
        #: The rows of the read under way (appended as read), when it began,
        #: and the queue's depth then; None when no read is under way.
        self._progress: tuple[list[Row], float, int | None] | None = None

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
            return self._first()
        if snapshot.age() > self.max_age:
            self.refresh()
        return snapshot

    def _first(self) -> Snapshot:
        """No snapshot yet: the read's, if it ends within ``first_wait`` s, else what it read."""
        self.refresh()
        with self._state:
            reader = self._reader
        if reader is not None:
            reader.join(self.first_wait)
        with self._state:
            snapshot, failure, progress = self._snapshot, self._failure, self._progress
        if snapshot is not None:
            return snapshot
        if failure is not None:
            raise failure
        if progress is None:
            # Not reading yet (still connecting: kombu retries as configured):
            # wait for the read to end, as a page did before it could show any.
            if reader is not None:
                reader.join()
            with self._state:
                snapshot, failure = self._snapshot, self._failure
            if snapshot is not None:
                return snapshot
            if failure is not None:
                raise failure
            return self._read_now()
        rows, started, expected = progress
        return Snapshot.so_far(rows, started, expected)

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
        """Read the queue again soon: the next page waits for a fresh read (``first_wait``)."""
        with self._state:
            self._snapshot = None

    def _read_now(self) -> Snapshot:
        with self._lock:
            with self._state:
                previous = self._snapshot
            rows: list[Row] = []
            started = time.time()
            expected = self._depth() if previous is None else None  # (for a partial page)
            with self._state:
                self._progress = (rows, started, expected)
            try:
                snapshot = Snapshot.read(self.store, self.readers, previous, into=rows)
            except Exception as exc:
                with self._state:
                    self._snapshot, self._failure, self._progress = None, exc, None
                raise
            snapshot.expected = expected
            with self._state:
                self._snapshot, self._failure, self._progress = snapshot, None, None
            return snapshot

    def _depth(self) -> int | None:
        """Messages in the queue now (its cheap count), or None if it cannot be had."""
        try:
            return self.store.count()
        except Exception:  # the read that follows names the broker's problem itself
            return None

    def _read_quietly(self) -> None:
        with contextlib.suppress(Exception):  # kept as _failure, raised to the next page
            self._read_now()
