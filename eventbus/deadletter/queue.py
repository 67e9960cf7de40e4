"""The operator's view of the dead-letter queue: list, show, replay, purge."""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime

from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.store import DeadLetterStore
from eventbus.envelope import Envelope
from eventbus.errors import DeadLetterNotFound, ReplayError

__all__ = ["DeadLetterQueue"]

Redeliver = Callable[[DeadLetter], Envelope]  # type: ignore[type-arg]


class DeadLetterQueue:
    """Dead letters of one bus. Listing never consumes a record.

    A replay re-publishes the record's envelope (same ``event_id``) to the one
    handler that failed, never to the event's other subscribers, and removes
    the record only after that publish succeeded. A crash in between leaves
    the record in place, so a replay is at-least-once, like delivery itself.
    """

    def __init__(self, store: DeadLetterStore, redeliver: Redeliver) -> None:
        self.store = store
        self._redeliver = redeliver

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(self.store)

    def __len__(self) -> int:
        return self.store.count()

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
        """Like :meth:`list`, streaming: memory stays flat on a large queue."""
        found = 0
        for record in self.store:
            if limit is not None and found >= limit:
                return
            if handler and not fnmatch.fnmatchcase(record.handler or "", handler):
                continue
            if event_type and not fnmatch.fnmatchcase(record.event_type or "", event_type):
                continue
            if exception_type and not _exception_matches(record.exception_type, exception_type):
                continue
            if since and record.failed_at < since:
                continue
            found += 1
            yield record

    def get(self, record_id: str) -> DeadLetter:
        """The record with this id (a unique prefix of 6+ characters also works)."""
        matches = [
            r
            for r in self.store
            if r.id == record_id or (len(record_id) >= 6 and r.id.startswith(record_id))
        ]
        exact = [r for r in matches if r.id == record_id]
        if exact:
            return exact[0]
        if len(matches) == 1:
            return matches[0]
        raise DeadLetterNotFound(record_id)

    def groups(self) -> Counter[tuple[str, str]]:
        """Record counts by failure group, (handler, exception type)."""
        return Counter(record.group for record in self.store)

    def replay(self, record_id: str) -> Envelope:  # type: ignore[type-arg]
        """Re-publish one record to its handler, then remove it. Returns the envelope sent."""
        record = self.get(record_id)
        envelope = self._replay_one(record)
        self.store.remove([record.id])
        return envelope

    def replay_all(
        self,
        *,
        handler: str | None = None,
        event_type: str | None = None,
        exception_type: str | None = None,
    ) -> int:
        """Replay every matching record; returns how many were replayed.

        Records that cannot be replayed (undecodable, handler gone) are kept
        and reported in the :class:`ReplayError` raised at the end.
        """
        total = 0
        pending_removal: list[str] = []
        failures: list[str] = []
        # Materialise the selection first: on RabbitMQ a browse holds the
        # records unacked, so removing while still browsing would miss them.
        selected = self.list(handler=handler, event_type=event_type, exception_type=exception_type)
        for record in selected:
            try:
                self._replay_one(record)
            except ReplayError as exc:
                failures.append(f"{record.id}: {exc}")
                continue
            total += 1
            pending_removal.append(record.id)
            if len(pending_removal) >= 500:  # bounded removal batches, bounded memory
                self.store.remove(pending_removal)
                pending_removal.clear()
        if pending_removal:
            self.store.remove(pending_removal)
        if failures:
            raise ReplayError(
                f"replayed {total}; {len(failures)} record(s) kept, not replayable: "
                + "; ".join(failures[:5])
            )
        return total

    def purge(self) -> int:
        """Delete every record. Returns how many were deleted."""
        return self.store.purge()

    def _replay_one(self, record: DeadLetter) -> Envelope:  # type: ignore[type-arg]
        if not record.replayable:
            raise ReplayError(
                f"dead letter {record.id} has no decodable envelope ({record.reason}); "
                "inspect it with 'eventbus dlq show' and purge it"
            )
        return self._redeliver(record)


def _exception_matches(actual: str, pattern: str) -> bool:
    short = actual.rsplit(".", 1)[-1]
    return fnmatch.fnmatchcase(actual, pattern) or fnmatch.fnmatchcase(short, pattern)
