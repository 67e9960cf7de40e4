"""The span attributes eventbus sets, and how values from the wire become attributes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.util.types import AttributeValue

__all__ = [
    "AGGREGATE_ID",
    "AGGREGATE_TYPE",
    "ATTEMPT",
    "DEAD_LETTER_ID",
    "DEAD_LETTER_REASON",
    "EVENT_ID",
    "EVENT_TYPE",
    "EXCEPTION_TYPE",
    "FAN_OUT",
    "HANDLER",
    "HANDLERS",
    "LINK_KIND",
    "OUTCOME",
    "REPLAYS",
    "SEQUENCE",
    "TASK_ID",
    "envelope_attributes",
]

EVENT_ID = "eventbus.event.id"
EVENT_TYPE = "eventbus.event.type"
AGGREGATE_TYPE = "eventbus.aggregate.type"
AGGREGATE_ID = "eventbus.aggregate.id"
SEQUENCE = "eventbus.sequence"
#: The number of handler messages a publish sent (its subscriptions).
FAN_OUT = "eventbus.fan_out"
#: The names of the handlers a publish sent to.
HANDLERS = "eventbus.handlers"
HANDLER = "eventbus.handler"
#: The attempt a handler run is (1 the first, 2 its first retry...).
ATTEMPT = "eventbus.attempt"
TASK_ID = "eventbus.task_id"
#: How a handler run ended: success, retry, dead_lettered, duplicate, deferred, rejected.
OUTCOME = "eventbus.outcome"
DEAD_LETTER_ID = "eventbus.dead_letter.id"
DEAD_LETTER_REASON = "eventbus.dead_letter.reason"
EXCEPTION_TYPE = "eventbus.exception.type"
#: How many times the event was replayed from the dead-letter queue.
REPLAYS = "eventbus.replays"
#: On a link: why it links (``replayed_from``: the trace of the dead letter;
#: ``published_from``: an envelope re-published with another trace's context;
#: ``delivered_by``: the span Celery's own instrumentation made for the run).
LINK_KIND = "eventbus.link"

#: The longest string attribute taken from a received envelope (hostile input).
MAX_WIRE_TEXT = 256

_WIRE_FIELDS = (
    ("event_id", EVENT_ID),
    ("event_type", EVENT_TYPE),
    ("aggregate_type", AGGREGATE_TYPE),
    ("aggregate_id", AGGREGATE_ID),
)


def envelope_attributes(wire: object) -> dict[str, AttributeValue]:
    """The event's attributes from an envelope's wire dict, whatever it holds.

    Only strings are taken, cut to :data:`MAX_WIRE_TEXT`, and an int sequence.
    """
    attributes: dict[str, AttributeValue] = {}
    if not isinstance(wire, Mapping):
        return attributes
    fields: Mapping[str, Any] = wire
    for key, name in _WIRE_FIELDS:
        value = fields.get(key)
        if isinstance(value, str):
            attributes[name] = value[:MAX_WIRE_TEXT]
    sequence = fields.get("sequence")
    if isinstance(sequence, int) and not isinstance(sequence, bool):
        attributes[SEQUENCE] = sequence
    return attributes
