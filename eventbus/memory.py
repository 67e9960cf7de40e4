"""A bus that runs handlers in the publishing thread: for users' unit tests.

Same API and same outcomes as the Celery bus (attempts, dead letters,
replay), minus the broker and the waiting: retries run at once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from eventbus.bus import BaseEventBus, Subscription
from eventbus.deadletter.memory import InMemoryDeadLetterStore
from eventbus.deadletter.record import DeadLetter, DeadLetterReason
from eventbus.envelope import Envelope
from eventbus.errors import EnvelopeDecodeError
from eventbus.events import EventRegistry

__all__ = ["InMemoryEventBus"]

logger = logging.getLogger(__name__)


class InMemoryEventBus(BaseEventBus):
    """Runs each subscribed handler synchronously inside ``publish``.

    The envelope goes through the JSON wire format on the way, so data that
    would not survive the broker fails here too. A handler that keeps failing
    is retried ``max_retries`` times (without delay) and then dead-lettered,
    exactly as on Celery; pass ``raise_errors=True`` to have the handler's
    exception re-raised from ``publish`` instead of only recorded.
    """

    def __init__(
        self, *, event_registry: EventRegistry | None = None, raise_errors: bool = False
    ) -> None:
        super().__init__(event_registry=event_registry)
        self.raise_errors = raise_errors
        self._store = InMemoryDeadLetterStore()

    @property
    def dead_letter_store(self) -> InMemoryDeadLetterStore:
        return self._store

    def _attach(self, subscription: Subscription) -> None:
        pass  # nothing to create: handlers are called directly

    def _dispatch(self, envelope: Envelope[Any], subscriptions: Sequence[Subscription]) -> None:
        wire = json.loads(json.dumps(envelope.to_wire()))
        for sub in subscriptions:
            self._run(sub, wire)

    def _run(self, sub: Subscription, wire: dict[str, Any]) -> None:
        options = sub.options
        attempt = 0
        while True:
            attempt += 1
            try:
                sub.call(Envelope.from_wire(wire, self.event_registry))
                return
            except Exception as exc:
                permanent = isinstance(exc, options.permanent_errors) or not isinstance(
                    exc, options.retry_on
                )
                if not permanent and attempt <= options.max_retries:
                    logger.info("retrying %s (attempt %d): %r", sub.name, attempt, exc)
                    continue
                reason: DeadLetterReason = (
                    "retries_exhausted"
                    if not permanent
                    else (
                        "undecodable" if isinstance(exc, EnvelopeDecodeError) else "permanent_error"
                    )
                )
                self._store.append(
                    DeadLetter.from_exception(
                        exc,
                        handler=sub.name,
                        reason=reason,
                        attempts=attempt,
                        envelope=wire,
                        worker="in-memory",
                    )
                )
                logger.warning("dead-lettered %s after %d attempt(s): %r", sub.name, attempt, exc)
                if self.raise_errors:
                    raise
                return
