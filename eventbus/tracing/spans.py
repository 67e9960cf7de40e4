"""The spans of a traced bus: publish, handle (one per attempt), dead letter, replay.

::

    <the caller's span: a Flask route, a Django view>
    └── publish todo.created                 PRODUCER  fan-out K, event id, type, aggregate
        ├── handle app.notify                CONSUMER  attempt 1, outcome success
        ├── handle app.index                 CONSUMER  attempt 1, outcome retry (error)
        ├── handle app.index                 CONSUMER  attempt 2, outcome dead_lettered
        │   └── dead_letter app.index        INTERNAL  record id, reason, exception type
        ...
    replay todo.created                      PRODUCER  (a trace of its own: the operator's)
    │   link -> the dead letter's publish span (eventbus.link = replayed_from)
    └── handle app.index                     CONSUMER  attempt 1, outcome success

A handle span's parent is the span context the envelope carries
(:mod:`eventbus.tracing.carrier`); when Celery's own instrumentation
(``opentelemetry-instrumentation-celery``) made a span for the run in the
same trace, the handle span nests under it instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from eventbus.bus.instrumentation import Send
from eventbus.tracing import attributes as attrs
from eventbus.tracing.carrier import (
    TRACEPARENT,
    TRACESTATE,
    carried_context,
    carried_span_context,
    metadata_of,
    trace_metadata,
)

if TYPE_CHECKING:
    from eventbus.bus.base import BaseEventBus, Subscription
    from eventbus.deadletter.record import DeadLetter
    from eventbus.domain.envelope import Envelope

__all__ = ["EventBusTracing"]

#: The longest exception message a dead letter's span event carries (the record has it all).
MAX_MESSAGE_LENGTH = 1024
#: Outcomes of a handler run that are not an error of the run.
_NOT_ERRORS = frozenset({"success", "duplicate", "deferred"})


class _HandlerRun:
    """What a handler run reports to its span (an ``instrumentation.HandlerRun``)."""

    __slots__ = ("recorded", "result", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.result: str | None = None
        self.recorded = False

    def outcome(self, outcome: str, error: BaseException | None = None) -> None:
        self.result = outcome
        self.span.set_attribute(attrs.OUTCOME, outcome)
        if error is not None:
            self.failed(error)

    def failed(self, error: BaseException) -> None:
        """Record ``error`` on the span (once), unless the outcome is no error."""
        if self.recorded or self.result in _NOT_ERRORS:
            return
        self.recorded = True
        self.span.record_exception(error)
        self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class EventBusTracing:
    """A bus's :class:`~eventbus.bus.instrumentation.Instrumentation` that makes spans.

    Made by :func:`eventbus.tracing.instrument`; ``tracer`` makes every span.
    """

    def __init__(self, bus: BaseEventBus, tracer: Tracer) -> None:
        self.bus = bus
        self.tracer = tracer

    # -- publishing -----------------------------------------------------------

    def publish(
        self, envelope: Envelope[Any], subscriptions: Sequence[Subscription], send: Send
    ) -> Envelope[Any]:
        links = None
        carried = carried_span_context(envelope.metadata)
        if carried.is_valid:
            # An envelope published again (from a store, by a relay, forwarded by
            # a handler): its own trace is linked, the publish joins the caller's.
            current = trace.get_current_span().get_span_context()
            if carried.trace_id != current.trace_id:
                links = [Link(carried, {attrs.LINK_KIND: "published_from"})]
        attributes = _event_attributes(envelope)
        attributes[attrs.FAN_OUT] = len(subscriptions)
        attributes[attrs.HANDLERS] = [sub.name for sub in subscriptions]
        with self.tracer.start_as_current_span(
            f"publish {envelope.event_type}",
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            links=links,
        ) as span:
            sent = send(_carrying(envelope, span), subscriptions)
            if sent.sequence is not None and envelope.sequence is None:
                span.set_attribute(attrs.SEQUENCE, sent.sequence)
            return sent

    def replay(
        self, envelope: Envelope[Any], record: DeadLetter, subscription: Subscription, send: Send
    ) -> Envelope[Any]:
        # The replay is the operator's act, in the operator's trace (the CLI's: a
        # trace of its own); it links to the trace the dead letter came from.
        carried = carried_span_context(envelope.metadata)
        links = [Link(carried, {attrs.LINK_KIND: "replayed_from"})] if carried.is_valid else None
        attributes = _event_attributes(envelope)
        attributes[attrs.HANDLER] = subscription.name
        attributes[attrs.DEAD_LETTER_ID] = record.id
        attributes[attrs.DEAD_LETTER_REASON] = record.reason
        replays = envelope.metadata.get("eventbus_replays")
        if isinstance(replays, int):
            attributes[attrs.REPLAYS] = replays
        with self.tracer.start_as_current_span(
            f"replay {envelope.event_type}",
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            links=links,
        ) as span:
            return send(_carrying(envelope, span), (subscription,))

    # -- handler runs ---------------------------------------------------------

    @contextmanager
    def running(
        self, subscription: Subscription, wire: object, *, attempt: int, task_id: str | None
    ) -> Iterator[_HandlerRun]:
        attributes = attrs.envelope_attributes(wire)
        attributes[attrs.HANDLER] = subscription.name
        attributes[attrs.ATTEMPT] = attempt
        if task_id is not None:
            attributes[attrs.TASK_ID] = str(task_id)
        parent, links = _parent_of(carried_context(metadata_of(wire)))
        with self.tracer.start_as_current_span(
            f"handle {subscription.name}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            # Recorded below: a deferred run raises, and is no error.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            run = _HandlerRun(span)
            try:
                yield run
            except BaseException as exc:
                run.failed(exc)
                raise

    # -- dead letters ---------------------------------------------------------

    def dead_lettered(self, record: DeadLetter) -> None:
        """A span for a dead letter just written (in the process and thread that wrote it).

        Inside the handler's run (its own failure): a child of the handle
        span. Written by the worker's main process (a time limit, a lost
        worker, a message that never became a run): a child of the span the
        envelope carries, or a trace of its own for a message with none.
        """
        attributes = attrs.envelope_attributes(record.envelope)
        for name, value in (
            (attrs.EVENT_ID, record.event_id),
            (attrs.EVENT_TYPE, record.event_type),
        ):
            if name not in attributes and value is not None:  # (a record without an envelope)
                attributes[name] = value[: attrs.MAX_WIRE_TEXT]
        attributes[attrs.DEAD_LETTER_ID] = record.id
        attributes[attrs.DEAD_LETTER_REASON] = record.reason
        attributes[attrs.EXCEPTION_TYPE] = record.exception_type
        attributes[attrs.ATTEMPT] = record.attempts
        if record.handler is not None:
            attributes[attrs.HANDLER] = record.handler
        if record.task_id is not None:
            attributes[attrs.TASK_ID] = record.task_id
        parent, links = _parent_of(carried_context(metadata_of(record.envelope)))
        span = self.tracer.start_span(
            f"dead_letter {record.handler or record.queue or '?'}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
        )
        span.add_event(
            "eventbus.dead_letter.written",
            {
                "exception.type": record.exception_type,
                "exception.message": record.exception_message[:MAX_MESSAGE_LENGTH],
            },
        )
        span.set_status(Status(StatusCode.ERROR, f"dead-lettered: {record.reason}"))
        span.end()


def _parent_of(carried: Context) -> tuple[Context | None, list[Link] | None]:
    """The parent of a worker-side span, and its links: the carried context, or the current span.

    The current span is the parent when it is in the carried trace (Celery's
    own instrumentation's run span, or the handle span), or when nothing
    valid is carried. Else the carried context is, and the current span
    (a run span of a trace Celery's instrumentation started) is linked.
    """
    current = trace.get_current_span().get_span_context()
    carried_span = trace.get_current_span(carried).get_span_context()
    if not carried_span.is_valid:
        return None, None
    if current.is_valid and current.trace_id == carried_span.trace_id:
        return None, None
    links = [Link(current, {attrs.LINK_KIND: "delivered_by"})] if current.is_valid else None
    return carried, links


def _event_attributes(envelope: Envelope[Any]) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        attrs.EVENT_ID: str(envelope.event_id),
        attrs.EVENT_TYPE: envelope.event_type,
    }
    if envelope.aggregate_type is not None:
        attributes[attrs.AGGREGATE_TYPE] = envelope.aggregate_type
    if envelope.aggregate_id is not None:
        attributes[attrs.AGGREGATE_ID] = envelope.aggregate_id
    if envelope.sequence is not None:
        attributes[attrs.SEQUENCE] = envelope.sequence
    return attributes


def _carrying(envelope: Envelope[Any], span: Span) -> Envelope[Any]:
    """``envelope`` carrying ``span``'s context in its metadata (as it is if there is none)."""
    items = trace_metadata(span)
    if not items:
        return envelope  # no SDK and no caller's span: nothing to carry
    metadata = {k: v for k, v in envelope.metadata.items() if k not in (TRACEPARENT, TRACESTATE)}
    return envelope.model_copy(update={"metadata": {**metadata, **items}})
