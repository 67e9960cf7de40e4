"""One handler run under its subscription's guarantees: idempotency and ordering.

Both buses call a :class:`Guard` with the decoded envelope. It claims the
(handler, event_id) when the handler is idempotent, takes the aggregate's
turn when it is ordered, runs the handler, and records the outcome. When the
delivery must wait (an earlier event of the aggregate is still pending, or
another delivery holds the claim) it raises :class:`Deferral`; the Celery bus
sends the message back with a countdown, without spending a retry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from eventbus.errors import LateEvent, SequenceGap
from eventbus.guarantees.idempotency import Claim, Delivery, delivering
from eventbus.guarantees.ordering import TurnKind, aggregate_key

if TYPE_CHECKING:
    from eventbus.bus.base import Handler
    from eventbus.domain.envelope import Envelope
    from eventbus.guarantees.state import State

__all__ = ["DUPLICATE", "Deferral", "Guard"]

logger = logging.getLogger(__name__)

#: A skipped duplicate's task result (Flower shows it; metrics count it as ``duplicate``).
DUPLICATE = "eventbus: duplicate delivery skipped"

ORDER_WAIT_DELAY = 0.25  #: seconds before an ordered delivery asks for its turn again
CLAIM_BUSY_DELAY = 1.0  #: seconds before a delivery asks again for a claim another one holds


class Deferral(Exception):  # a control-flow signal, not an error
    """The delivery cannot run yet: try it again after ``countdown`` seconds."""

    def __init__(self, reason: str, countdown: float, kind: Literal["order", "claim"]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.countdown = countdown
        self.kind = kind


@dataclass(frozen=True)
class Guard:
    """Runs one subscription's handler; idempotency and ordering as its options say."""

    handler: str
    call: Handler
    idempotent: bool
    ordered: bool
    state: Callable[[], State | None]
    gap_timeout: float
    lease: float
    #: False on a bus that runs handlers inside publish(): nothing can fill a
    #: gap while it waits, so a wait is a gap at once.
    can_wait: bool = True

    def __call__(
        self,
        envelope: Envelope[Any],
        *,
        owner: str,
        attempt: int,
        will_retry: Callable[[BaseException], bool],
    ) -> str | None:
        """Run the handler; return :data:`DUPLICATE` if it was skipped."""
        state = self.state() if (self.idempotent or self.ordered) else None
        delivery = Delivery(
            self.handler,
            envelope,
            owner,
            attempt,
            state.idempotency if state is not None and self.idempotent else None,
        )
        if state is None:
            with delivering(delivery):
                self.call(envelope)
            return None

        event_id = str(envelope.event_id)
        idem = delivery.idempotency
        position = self._position(envelope)
        reseq = state.resequencer
        if idem is not None:
            claim = idem.claim(self.handler, event_id, owner, self.lease)
            if claim is Claim.DONE:
                if position is not None:
                    # Done, but its ack was lost before the position moved on.
                    reseq.complete(self.handler, *position)
                logger.info("%s: event %s already handled, skipped", self.handler, event_id)
                return DUPLICATE
            if claim is Claim.BUSY:
                raise Deferral(
                    f"another delivery of event {event_id} is running", CLAIM_BUSY_DELAY, "claim"
                )
        try:
            if position is not None:
                aggregate, sequence = position
                turn = reseq.acquire(
                    self.handler,
                    aggregate,
                    sequence,
                    owner,
                    gap=self.gap_timeout,
                    lease=self.lease,
                )
                if turn.kind is TurnKind.WAIT and self.can_wait:
                    raise Deferral(
                        f"waiting for sequence {turn.expected or 'start'} of "
                        f"{_aggregate_name(envelope)} (this is {sequence})",
                        ORDER_WAIT_DELAY,
                        "order",
                    )
                if turn.kind is TurnKind.DONE:
                    if idem is not None:
                        idem.complete(self.handler, event_id)
                    logger.info(
                        "%s: sequence %d of %s already handled, skipped",
                        self.handler,
                        sequence,
                        _aggregate_name(envelope),
                    )
                    return DUPLICATE
                if turn.kind is TurnKind.GAP or turn.kind is TurnKind.WAIT:
                    within = f" within {self.gap_timeout:g}s" if self.can_wait else ""
                    raise SequenceGap(
                        f"{self.handler}: sequence {turn.expected or 1} of "
                        f"{_aggregate_name(envelope)} did not come{within} (this is "
                        f"{sequence}); replay it first, then this one"
                    )
                if turn.kind is TurnKind.LATE:
                    raise LateEvent(
                        f"{self.handler}: sequence {sequence} of {_aggregate_name(envelope)} "
                        "came after the "
                        f"handler started the aggregate at a later one (next: {turn.expected})"
                    )
            try:
                with delivering(delivery):
                    self.call(envelope)
            except BaseException as exc:
                if position is not None:
                    reseq.fail(self.handler, *position, owner, will_retry=will_retry(exc))
                raise
            if idem is not None:
                idem.complete(self.handler, event_id)
            if position is not None:
                reseq.complete(self.handler, *position)
            return None
        except BaseException:
            if idem is not None:
                idem.release(self.handler, event_id, owner)
            raise

    def _position(self, envelope: Envelope[Any]) -> tuple[str, int] | None:
        """(aggregate, sequence) when this handler orders this event."""
        if not self.ordered or envelope.aggregate_id is None or envelope.sequence is None:
            return None  # no aggregate, no order to keep
        return aggregate_key(envelope.aggregate_type, envelope.aggregate_id), envelope.sequence


def _aggregate_name(envelope: Envelope[Any]) -> str:
    if envelope.aggregate_type:
        return f"{envelope.aggregate_type} {envelope.aggregate_id}"
    return str(envelope.aggregate_id)
