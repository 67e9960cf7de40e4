"""What the outbox reports: a relay run's result, the table's status, a failed row.

Shared by the SQLAlchemy outbox (:mod:`eventbus.outbox.sql`) and the Django
one (:mod:`eventbus.contrib.django.relay`); imports nothing but the standard
library, so Django users need no SQLAlchemy for them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

__all__ = ["MAX_ERROR_LENGTH", "FailedRow", "OutboxStatus", "RelayResult"]

#: Longest ``last_error`` kept in a row, in characters.
MAX_ERROR_LENGTH = 2000


@dataclass(frozen=True, slots=True)
class RelayResult:
    """What one relay run did.

    ``published``: rows published and marked; ``failed``: rows marked failed
    (never retried); ``pending_left``: rows still pending afterwards, those
    other relays hold included; ``error``: why the run stopped early, when a
    publish failed (a batch the broker did not take stays pending as a whole;
    a publish that failed alone leaves its row and those after it pending).
    """

    published: int
    failed: int
    pending_left: int
    error: str | None = None

    def then(self, later: RelayResult) -> RelayResult:
        """This run followed by ``later``: counts added, the later state kept."""
        return RelayResult(
            self.published + later.published,
            self.failed + later.failed,
            later.pending_left,
            later.error,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """How many rows wait, failed, went out; when the oldest pending row was written."""

    pending: int
    failed: int
    published: int
    oldest_pending: datetime | None

    def as_dict(self) -> dict[str, Any]:
        oldest = self.oldest_pending
        return {
            "pending": self.pending,
            "failed": self.failed,
            "published": self.published,
            "oldest_pending": oldest.isoformat() if oldest else None,
        }


@dataclass(frozen=True, slots=True)
class FailedRow:
    """A row the relay marked failed: it is never retried."""

    id: int
    event_id: str
    event_type: str
    failed_at: datetime
    attempts: int
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "failed_at": self.failed_at.isoformat(),
            "attempts": self.attempts,
            "last_error": self.last_error,
        }
