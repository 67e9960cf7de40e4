"""A bus that runs handlers in the publishing thread: for users' unit tests.

Same API and same outcomes as the Celery bus (attempts, dead letters,
replay), minus the broker and the waiting: retries run at once.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from eventbus.bus.base import BaseEventBus, Subscription
from eventbus.deadletter.memory import InMemoryDeadLetterStore
from eventbus.deadletter.record import DeadLetter, DeadLetterReason
from eventbus.domain.envelope import Envelope
from eventbus.domain.events import EventRegistry
from eventbus.errors import EnvelopeDecodeError, OrderingError, SequenceGap
from eventbus.guarantees.delivery import DUPLICATE, Deferral
from eventbus.guarantees.idempotency import InMemoryIdempotencyStore
from eventbus.guarantees.ordering import InMemoryResequencer, InMemorySequencer
from eventbus.guarantees.state import State

__all__ = ["InMemoryEventBus"]

logger = logging.getLogger(__name__)


class InMemoryEventBus(BaseEventBus):
    """Runs each subscribed handler synchronously inside ``publish``.

    The envelope goes through the JSON wire format on the way, so data that
    would not survive the broker fails here too. A handler that keeps failing
    is retried ``max_retries`` times (without delay) and then dead-lettered,
    exactly as on Celery; pass ``raise_errors=True`` to have the handler's
    exception re-raised from ``publish`` instead of only recorded.

    ``idempotent`` and ``ordered`` handlers work as on Celery, with their
    state in memory. Handlers run in publish order, so an ordered handler
    never waits: an event whose predecessor is missing (dead-lettered, or
    never published) is dead-lettered at once as a ``sequence_gap``.
    """

    def __init__(
        self, *, event_registry: EventRegistry | None = None, raise_errors: bool = False
    ) -> None:
        super().__init__(event_registry=event_registry)
        self.raise_errors = raise_errors
        self._store = InMemoryDeadLetterStore()
        self._state = State(
            idempotency=InMemoryIdempotencyStore(),
            sequencer=InMemorySequencer(),
            resequencer=InMemoryResequencer(),
            description="memory",
        )

    @property
    def dead_letter_store(self) -> InMemoryDeadLetterStore:
        return self._store

    @property
    def state(self) -> State:
        return self._state

    _deliveries_can_wait = False

    def _attach(self, subscription: Subscription) -> None:
        pass  # nothing to create: handlers are called directly

    def _dispatch(self, envelope: Envelope[Any], subscriptions: Sequence[Subscription]) -> None:
        wire = json.loads(json.dumps(self._wire(envelope)))
        for sub in subscriptions:
            self._run(sub, wire)

    def _run(self, sub: Subscription, wire: dict[str, Any]) -> None:
        options = sub.options
        guard = sub.guard
        assert guard is not None
        owner = f"memory-{uuid.uuid4().hex}"  # one delivery, like a Celery task id

        def will_retry(exc: BaseException) -> bool:
            return not _is_permanent(exc) and attempt <= options.max_retries

        def _is_permanent(exc: BaseException) -> bool:
            return isinstance(exc, options.permanent_errors) or not isinstance(
                exc, options.retry_on
            )

        attempt = 0
        while True:
            attempt += 1
            instrumentation = self.instrumentation
            with (
                nullcontext(None)
                if instrumentation is None
                else instrumentation.running(sub, wire, attempt=attempt, task_id=owner)
            ) as run:
                try:
                    try:
                        result = guard(
                            Envelope.from_wire(wire, self.event_registry),
                            owner=owner,
                            attempt=attempt,
                            will_retry=will_retry,
                        )
                    except Deferral as deferral:
                        # Another thread's publish holds the claim: retried below.
                        raise RuntimeError(deferral.reason) from None
                    if run is not None:
                        run.outcome("duplicate" if result == DUPLICATE else "success")
                    return
                except Exception as exc:
                    permanent = _is_permanent(exc)
                    if not permanent and attempt <= options.max_retries:
                        logger.info("retrying %s (attempt %d): %r", sub.name, attempt, exc)
                        if run is not None:
                            run.outcome("retry", exc)
                        continue
                    reason: DeadLetterReason = (
                        "retries_exhausted" if not permanent else _permanent_reason(exc)
                    )
                    record = DeadLetter.from_exception(
                        exc,
                        handler=sub.name,
                        reason=reason,
                        attempts=attempt,
                        envelope=wire,
                        worker="in-memory",
                    )
                    self._store.append(record)
                    logger.warning(
                        "dead-lettered %s after %d attempt(s): %r", sub.name, attempt, exc
                    )
                    if run is not None:
                        run.outcome("dead_lettered", exc)
                    if instrumentation is not None:
                        instrumentation.dead_lettered(record)
                    if self.raise_errors:
                        raise
                    return


def _permanent_reason(exc: BaseException) -> DeadLetterReason:
    if isinstance(exc, EnvelopeDecodeError):
        return "undecodable"
    if isinstance(exc, OrderingError):
        return "sequence_gap" if isinstance(exc, SequenceGap) else "late_event"
    return "permanent_error"
