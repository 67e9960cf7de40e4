"""User handlers: a welcome email (a function) and an audit log (an object with ``handle``)."""

from __future__ import annotations

import logging
import threading

from eventbus import Envelope
from handlers.celery import bus
from handlers.events import UserRegistered

logger = logging.getLogger(__name__)

#: What the "mail server" accepted, for the demo and tests to look at.
SENT_EMAILS: list[str] = []


# idempotent: a redelivered or replayed event must not send a second email.
@bus.subscribe(UserRegistered, idempotent=True)
def send_welcome_email(envelope: Envelope[UserRegistered]) -> None:
    """Send the welcome email of a newly registered user (once per event)."""
    user = envelope.data
    SENT_EMAILS.append(user.email)
    logger.info("welcome email sent to %s (event %s)", user.email, envelope.event_id)


class AuditLog:
    """Appends every user event to an audit trail, keyed by event id (idempotent)."""

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}
        self._lock = threading.Lock()

    def handle(self, envelope: Envelope[UserRegistered]) -> None:
        with self._lock:
            # Keyed by event_id: a re-delivered event overwrites, never duplicates.
            self.entries[str(envelope.event_id)] = (
                f"{envelope.occurred_at:%Y-%m-%dT%H:%M:%SZ} {envelope.event_type} "
                f"user={envelope.data.user_id}"
            )


audit_log = AuditLog()
bus.subscribe(UserRegistered, handler=audit_log, name="handlers.user.audit_log")
