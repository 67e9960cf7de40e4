"""The trace context an envelope carries: W3C ``traceparent``/``tracestate`` in its metadata.

Why the envelope and not the message headers: the envelope is what lasts.
A dead letter keeps the envelope (not the headers of the message that
failed), so a replay finds the trace it came from; the outbox and the event
store keep envelopes too; a consumer in another language reads the
envelope's ``metadata`` with any W3C propagator. The keys are the W3C header
names, so that ``metadata`` is itself a valid carrier.

The metadata of a received envelope is attacker-controlled: only strings of
a bounded length are read, and the W3C propagator rejects malformed values
(the run then starts a trace of its own).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "carried_context",
    "carried_span_context",
    "metadata_of",
    "trace_metadata",
]

TRACEPARENT = "traceparent"  #: the metadata key of the W3C traceparent
TRACESTATE = "tracestate"  #: the metadata key of the W3C tracestate
#: The longest value read: a traceparent is 55 characters, a tracestate at most 32 members.
MAX_VALUE_LENGTH = 1024

_W3C = TraceContextTextMapPropagator()


class _MetadataGetter(Getter[Mapping[str, Any]]):
    """Reads the two W3C keys from a metadata mapping: strings only, bounded."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, str) and len(value) <= MAX_VALUE_LENGTH:
            return [value]
        return None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [key for key in (TRACEPARENT, TRACESTATE) if key in carrier]


_GETTER = _MetadataGetter()


def metadata_of(wire: object) -> Mapping[str, Any]:
    """The ``metadata`` of an envelope's wire dict, whatever ``wire`` is ({} if none)."""
    if isinstance(wire, Mapping):
        metadata = wire.get("metadata")
        if isinstance(metadata, Mapping):
            return metadata
    return {}


def carried_context(metadata: Mapping[str, Any]) -> Context:
    """The OpenTelemetry context holding the span context ``metadata`` carries (if valid)."""
    if TRACEPARENT not in metadata:
        return Context()
    return _W3C.extract(metadata, getter=_GETTER)


def carried_span_context(metadata: Mapping[str, Any]) -> SpanContext:
    """The span context ``metadata`` carries; invalid when it carries none (or a bad one)."""
    return trace.get_current_span(carried_context(metadata)).get_span_context()


def trace_metadata(span: Span) -> dict[str, str]:
    """The metadata items carrying ``span``'s context ({} for an invalid one).

    Written as the W3C propagator writes them (version 00), without its
    context round trip: this runs in every traced publish.
    """
    context = span.get_span_context()
    if not context.is_valid:
        return {}
    items = {
        TRACEPARENT: f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    }
    if context.trace_state:
        items[TRACESTATE] = context.trace_state.to_header()
    return items
