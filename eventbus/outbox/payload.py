"""The outbox's ``payload`` column: an envelope's wire dict as JSON text, and back.

Whatever writes outbox rows (:meth:`Outbox.add <eventbus.outbox.Outbox.add>`,
the Django integration's model) stores :func:`outbox_payload`; the relay
reads it back with :func:`decode_outbox_payload`, which turns every way a
row can be unpublishable into one error, :class:`~eventbus.errors.OutboxRowError`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from eventbus.domain.envelope import Envelope
from eventbus.errors import EnvelopeDecodeError, OutboxRowError

if TYPE_CHECKING:
    from eventbus.bus.base import BaseEventBus

__all__ = ["decode_outbox_payload", "outbox_payload"]


def outbox_payload(envelope: Envelope[Any]) -> str:
    """The JSON text stored in an outbox row's ``payload`` for this envelope.

    The envelope's wire dict (:meth:`Envelope.to_wire
    <eventbus.domain.envelope.Envelope.to_wire>`), compact. Metadata that is not
    JSON raises ``TypeError`` here, while the caller's transaction can still
    react, rather than at the relay.
    """
    return json.dumps(envelope.to_wire(), separators=(",", ":"), ensure_ascii=False)


def decode_outbox_payload(bus: BaseEventBus, payload: str | bytes) -> Envelope[Any]:
    """The envelope an outbox row's ``payload`` holds, decoded with the bus's event registry.

    Older data is upcast as any reader does (:meth:`Envelope.from_wire
    <eventbus.domain.envelope.Envelope.from_wire>`). Raises
    :class:`~eventbus.errors.OutboxRowError` when the row can never be
    published by this code: the text is not JSON, not an envelope object,
    names an event type the bus does not know, or its data fails validation
    (the specific error is the cause).
    """
    try:
        wire = json.loads(payload)
    except (TypeError, ValueError) as exc:
        raise OutboxRowError(f"outbox payload is not JSON: {exc}") from exc
    if not isinstance(wire, dict):
        raise OutboxRowError(
            f"outbox payload is not an envelope: a JSON {type(wire).__name__}, not an object"
        )
    try:
        return Envelope.from_wire(wire, bus.event_registry)
    except EnvelopeDecodeError as exc:
        raise OutboxRowError(f"outbox payload: {exc}") from (exc.__cause__ or exc)
