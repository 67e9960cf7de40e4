"""Traces: one OpenTelemetry trace from the code that publishes to every handler run.

``pip install 'eventbus[tracing]'``, then, where the bus is made (the module
both the web app and the worker import)::

    from eventbus.tracing import instrument

    bus = EventBus(app)
    instrument(bus)

Spans (:mod:`eventbus.tracing.spans`): ``publish <event type>`` (a child of
whatever span is current: the Flask or Django request's), ``handle
<handler>`` for every handler run, retries included (one span per attempt,
children of the publish span), ``dead_letter <handler>`` when a dead letter
is written, ``replay <event type>`` when one is replayed (linked to the trace
it came from). Attributes (:mod:`eventbus.tracing.attributes`): event id,
type, aggregate type and id, handler, attempt, outcome, fan-out.

The trace context travels in the envelope's ``metadata`` as W3C
``traceparent``/``tracestate`` (:mod:`eventbus.tracing.carrier`). Spans go to
the global tracer provider (configure the SDK in every process that
publishes or runs handlers; a prefork worker's pool processes inherit the
main process's), or to ``tracer_provider``. Without this package imported, a bus does nothing
of this and imports no OpenTelemetry module.

Every bus at once, with no code (``opentelemetry-instrument``):
:class:`eventbus.tracing.instrumentor.EventBusInstrumentor`.
"""

from __future__ import annotations

try:
    from opentelemetry import trace
    from opentelemetry.trace import TracerProvider
except ImportError as e:  # pragma: no cover - the extra is not installed
    raise ImportError("pip install 'eventbus[tracing]'") from e

from eventbus.bus.base import BaseEventBus
from eventbus.tracing.carrier import TRACEPARENT, TRACESTATE, trace_metadata
from eventbus.tracing.spans import EventBusTracing

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "EventBusTracing",
    "instrument",
    "trace_context",
    "uninstrument",
]

#: The name of eventbus's tracer (the instrumentation scope of its spans).
TRACER_NAME = "eventbus"


def instrument(
    bus: BaseEventBus, *, tracer_provider: TracerProvider | None = None
) -> EventBusTracing:
    """Trace ``bus``'s publishes, replays, handler runs and dead letters; return the tracing.

    ``tracer_provider``: where the spans go (default: the global provider,
    looked up at each span, so the SDK may be configured after this call).
    Instrumenting a bus again replaces its tracing.
    """
    if not isinstance(bus, BaseEventBus):
        raise TypeError(f"instrument() takes an event bus, got {type(bus).__name__}")
    tracing = EventBusTracing(bus, trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider))
    bus.instrumentation = tracing
    return tracing


def uninstrument(bus: BaseEventBus) -> None:
    """Stop tracing ``bus`` (nothing happens if it is not traced)."""
    if isinstance(bus.instrumentation, EventBusTracing):
        bus.instrumentation = None


def trace_context() -> dict[str, str]:
    """The current span's context as envelope metadata (W3C ``traceparent``, ``tracestate``).

    For an envelope made outside ``publish``, such as an outbox row written in
    a request: ``outbox.append(event, metadata=trace_context())``. The relay's
    publish of it, later and in a trace of its own, then links to this trace.
    {} when no span is current.
    """
    return trace_metadata(trace.get_current_span())
