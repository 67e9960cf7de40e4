"""A dead letter as a list shows it: one small row, no envelope, no traceback.

The console's list pages (:mod:`eventbus.console.snapshot`) keep one
:class:`Summary` per record of the queue: a few hundred bytes, where a
:class:`~eventbus.deadletter.record.DeadLetter` holds its envelope and
traceback. :meth:`Summary.of` is the one definition of a row's fields;
a store that can read a row without building the whole record
(:meth:`~eventbus.deadletter.store.DeadLetterStore.summaries`) must give
the row :meth:`Summary.of` gives for the record, field for field.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from eventbus.deadletter.record import DeadLetter

__all__ = ["AGGREGATE_CHARS", "MESSAGE_CHARS", "UNDECODABLE", "Summary"]

MESSAGE_CHARS = 200  #: characters of an exception message a row keeps (and text search sees)
AGGREGATE_CHARS = 100  #: characters of an aggregate id a row keeps
UNDECODABLE = "<undecodable>"  #: the event type of a record without one


@dataclass(frozen=True, slots=True)
class Summary:
    """One record, as the list pages show it and filter it."""

    id: str
    handler: str
    event_type: str
    event_id: str
    aggregate_id: str
    reason: str
    exception_type: str
    message: str  #: the exception message, its first MESSAGE_CHARS characters
    failed_at: float | None  #: POSIX seconds, UTC; None: unknown (``DeadLetter.failed_at``)
    attempts: int
    replayable: bool

    @classmethod
    def of(cls, record: DeadLetter) -> Summary:
        """The row of a record."""
        envelope = record.envelope or {}
        aggregate = envelope.get("aggregate_id")
        return cls.make(
            id=record.id,
            handler=record.handler,
            event_type=record.event_type,
            event_id=record.event_id,
            aggregate_id="" if aggregate is None else str(aggregate),
            reason=record.reason,
            exception_type=record.exception_type,
            message=record.exception_message,
            failed_at=None if record.failed_at is None else record.failed_at.timestamp(),
            attempts=record.attempts,
            replayable=record.replayable,
        )

    @classmethod
    def make(
        cls,
        *,
        id: str,
        handler: str | None,
        event_type: str | None,
        event_id: str | None,
        aggregate_id: str,
        reason: str,
        exception_type: str,
        message: str,
        failed_at: float | None,
        attempts: int,
        replayable: bool,
    ) -> Summary:
        """A row from a record's own values: the defaults and cuts of every row applied here."""
        intern = sys.intern  # the few distinct handler, type and reason names are shared
        return cls(
            id,
            intern(handler or "?"),
            intern(event_type or UNDECODABLE),
            event_id or "",
            aggregate_id[:AGGREGATE_CHARS],
            intern(reason),
            intern(exception_type),
            intern(message[:MESSAGE_CHARS]),  # often the same text
            failed_at,
            attempts,
            replayable,
        )

    @property
    def group_key(self) -> tuple[str, str, str]:
        return (self.handler, self.exception_type, self.reason)
