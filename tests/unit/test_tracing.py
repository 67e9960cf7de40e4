"""Traces without a broker: spans of an eager bus, hostile trace contexts, and the cost of none.

Handler runs go through Celery's real task machinery: an eager app on the
embedded ``memory://`` transport runs the bus's tasks inside ``publish``.
The integration tests (tests/integration/test_traces.py) run a real worker.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventbus import DeadLetter, Envelope, EventBus, InMemoryEventBus
from eventbus.tracing import TRACEPARENT, instrument, uninstrument
from eventbus.tracing.attributes import MAX_WIRE_TEXT, envelope_attributes
from tests.contract.events import ItemAdded
from tests.support import make_app, unique

ROOT = Path(__file__).resolve().parents[2]
PUBLISH = f"publish {ItemAdded.event_type}"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def eager() -> Iterator[tuple[Celery, EventBus]]:
    app = make_app("memory://", task_always_eager=True)
    bus = EventBus(app, default_queue=unique("unit-q"), dead_letter_queue=unique("unit-dlq"))
    yield app, bus
    bus.dead_letters.purge()
    app.close()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def attr(span: ReadableSpan, name: str) -> Any:
    return (span.attributes or {}).get(name)


def test_an_eager_bus_traces_publish_handler_runs_and_the_dead_letter(
    eager: tuple[Celery, EventBus], provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # Given a traced bus with a handler that works and one that always fails
    _, bus = eager

    def works(envelope: Envelope[ItemAdded]) -> None:
        pass

    def fails(envelope: Envelope[ItemAdded]) -> None:
        raise ValueError("never works")

    bus.subscribe(ItemAdded, handler=works, name="unit.tracing.works")
    bus.subscribe(ItemAdded, handler=fails, name="unit.tracing.fails", max_retries=0)
    instrument(bus, tracer_provider=provider)

    # When an event is published
    envelope = bus.publish(ItemAdded(sku="s", quantity=1), aggregate_id="a-1")

    # Then the envelope carries the publish span's context, the runs are its
    # children and the dead letter is a child of the failed run
    (publish,) = named(exporter, PUBLISH)
    assert publish.context is not None
    assert envelope.metadata[TRACEPARENT].startswith(
        f"00-{publish.context.trace_id:032x}-{publish.context.span_id:016x}-"
    )
    (ok,) = named(exporter, "handle unit.tracing.works")
    (failed,) = named(exporter, "handle unit.tracing.fails")
    assert [s.parent.span_id if s.parent else None for s in (ok, failed)] == [
        publish.context.span_id
    ] * 2
    assert (attr(ok, "eventbus.outcome"), attr(failed, "eventbus.outcome")) == (
        "success",
        "dead_lettered",
    )
    (dead_letter,) = named(exporter, "dead_letter unit.tracing.fails")
    assert failed.context is not None and dead_letter.parent is not None
    assert dead_letter.parent.span_id == failed.context.span_id
    assert attr(dead_letter, "eventbus.dead_letter.id") == next(iter(bus.dead_letters)).id

    # And once uninstrumented, publishing makes no span and carries no context
    uninstrument(bus)
    exporter.clear()
    again = bus.publish(ItemAdded(sku="s", quantity=1))
    assert exporter.get_finished_spans() == ()
    assert TRACEPARENT not in again.metadata


def test_an_envelope_published_again_links_to_the_trace_it_carries(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # Given an envelope that carries the context of an earlier trace (a relay, a forward)
    bus = InMemoryEventBus()
    instrument(bus, tracer_provider=provider)
    first = bus.publish(ItemAdded(sku="s", quantity=1))
    (earlier,) = named(exporter, PUBLISH)
    exporter.clear()

    # When it is published again inside another trace
    with provider.get_tracer("test").start_as_current_span("relay") as relay:
        again = bus.publish(first)

    # Then the new publish is in the caller's trace, linked to the earlier one
    (publish,) = named(exporter, PUBLISH)
    assert publish.context is not None and earlier.context is not None
    assert publish.context.trace_id == relay.get_span_context().trace_id
    assert [(link.context.span_id, dict(link.attributes or {})) for link in publish.links] == [
        (earlier.context.span_id, {"eventbus.link": "published_from"})
    ]
    assert again.metadata[TRACEPARENT] != first.metadata[TRACEPARENT]


@pytest.mark.parametrize(
    "traceparent",
    [
        {"nested": "dict"},
        42,
        "garbage",
        "00-" + "0" * 32 + "-" + "0" * 16 + "-01",  # all-zero ids: invalid
        "00-" + "a" * 32 + "-" + "b" * 16 + "-01" + "x" * 5000,
    ],
    ids=["dict", "int", "garbage", "zero-ids", "huge"],
)
def test_a_hostile_trace_context_starts_a_trace_of_its_own(
    eager: tuple[Celery, EventBus],
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    traceparent: object,
) -> None:
    # Given a message whose envelope metadata carries a bad traceparent
    _, bus = eager
    ran: list[str] = []
    bus.subscribe(ItemAdded, handler=lambda e: ran.append(e.data.sku), name="unit.tracing.h")
    tracing = instrument(bus, tracer_provider=provider)
    sub = bus.subscription("unit.tracing.h")
    wire_dict = bus.publish(ItemAdded(sku="s", quantity=1)).to_wire()
    exporter.clear()
    wire_dict["metadata"] = {TRACEPARENT: traceparent, "tracestate": ["x"]}

    # When the run's span is made
    with tracing.running(sub, wire_dict, attempt=1, task_id="t-1") as run:
        run.outcome("success")

    # Then it is a root span of a trace of its own, with the event's attributes
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert attr(span, "eventbus.event.id") == wire_dict["event_id"]


def test_wire_attributes_take_bounded_strings_only() -> None:
    wire = {
        "event_id": "e" * 10_000,
        "event_type": {"not": "a string"},
        "aggregate_id": 7,
        "aggregate_type": "cart",
        "sequence": True,
    }
    assert envelope_attributes(wire) == {
        "eventbus.event.id": "e" * MAX_WIRE_TEXT,
        "eventbus.aggregate.type": "cart",
    }
    assert envelope_attributes(["not", "a", "dict"]) == {}


def test_a_dead_letter_written_outside_a_run_is_a_child_of_the_carried_context(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # Given a dead letter the worker's main process writes (a time limit): no run span current
    bus = InMemoryEventBus()
    tracing = instrument(bus, tracer_provider=provider)
    envelope = bus.publish(ItemAdded(sku="s", quantity=1), aggregate_id="a-9")
    (publish,) = named(exporter, PUBLISH)
    record = DeadLetter(
        handler="unit.tracing.slow",
        reason="time_limit",
        attempts=1,
        exception_type="TimeLimitExceeded",
        exception_message="hard time limit",
        envelope=envelope.to_wire(),
    )

    # When its span is made
    tracing.dead_lettered(record)

    # Then it hangs under the publish span the envelope carries
    (span,) = named(exporter, "dead_letter unit.tracing.slow")
    assert publish.context is not None and span.parent is not None
    assert span.parent.span_id == publish.context.span_id
    assert attr(span, "eventbus.dead_letter.reason") == "time_limit"
    assert attr(span, "eventbus.aggregate.id") == "a-9"


def test_instrument_takes_a_bus() -> None:
    with pytest.raises(TypeError, match="takes an event bus, got Celery"):
        instrument(Celery(set_as_current=False))  # type: ignore[arg-type]


#: Publishes on an eager Celery bus and the in-memory bus, untraced.
_UNTRACED = """
    import sys
    from celery import Celery
    from eventbus import EventBus, InMemoryEventBus
    from tests.contract.events import ItemAdded

    app = Celery("untraced", broker="memory://", set_as_current=False)
    app.conf.task_always_eager = True
    bus = EventBus(app, default_queue="untraced-q", dead_letter_queue="untraced-dlq")
    memory = InMemoryEventBus()
    for b in (bus, memory):
        b.subscribe(ItemAdded, handler=lambda e: None, name="untraced.h")
        envelope = b.publish(ItemAdded(sku="s", quantity=1))
        assert "traceparent" not in envelope.metadata, envelope.metadata
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
    print("loaded:", loaded)
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_untraced_bus_imports_no_opentelemetry_module() -> None:
    # Given OpenTelemetry installed (the test extra) but no bus instrumented,
    # when events are published and handled, then nothing of it is imported
    result = run_python(_UNTRACED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded: []"


def test_without_opentelemetry_everything_works_and_tracing_says_what_to_install() -> None:
    # Given a Python where opentelemetry cannot be imported (the extra not installed)
    blocked = "import sys\nsys.modules['opentelemetry'] = None\n"
    # Then publishing and handling work as ever
    result = run_python(blocked + textwrap.dedent(_UNTRACED))
    assert result.returncode == 0, result.stderr
    # And asking for traces names the extra
    result = run_python(blocked + "import eventbus.tracing\n")
    assert result.returncode != 0
    assert "pip install 'eventbus[tracing]'" in result.stderr


def test_the_carried_context_is_what_the_w3c_propagator_writes_and_reads() -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from eventbus.tracing.carrier import carried_span_context, trace_metadata

    context = SpanContext(
        0xABC,
        0xDEF,
        is_remote=False,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("k", "v")]),
    )
    span = NonRecordingSpan(context)
    written: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(written, context=trace.set_span_in_context(span))
    assert trace_metadata(span) == written
    read = carried_span_context(written)
    assert (read.trace_id, read.span_id, read.trace_state) == (0xABC, 0xDEF, context.trace_state)
    assert trace_metadata(NonRecordingSpan(trace.INVALID_SPAN_CONTEXT)) == {}


def test_the_instrumentor_traces_every_bus_made_before_and_after(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    from importlib.metadata import entry_points

    from eventbus.tracing.instrumentor import EventBusInstrumentor

    # Given a bus made before the instrumentor runs
    before = InMemoryEventBus()
    instrumentor = EventBusInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        # When buses publish, made before and after
        after = InMemoryEventBus()
        before.publish(ItemAdded(sku="before", quantity=1))
        after.publish(ItemAdded(sku="after", quantity=1))
        # Then both are traced
        assert len(named(exporter, PUBLISH)) == 2
    finally:
        instrumentor.uninstrument()
    # And after uninstrument() neither is, nor a new one
    exporter.clear()
    for bus in (before, after, InMemoryEventBus()):
        bus.publish(ItemAdded(sku="untraced", quantity=1))
    assert exporter.get_finished_spans() == ()
    # And opentelemetry-instrument finds it by its entry point
    (found,) = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "eventbus"]
    assert found.load() is EventBusInstrumentor


def test_trace_context_lets_an_outbox_row_link_back_to_its_request(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    from eventbus import create_event
    from eventbus.tracing import trace_context

    # Given an envelope made in a request's span (an outbox row) with its context
    bus = InMemoryEventBus()
    instrument(bus, tracer_provider=provider)
    assert trace_context() == {}  # no span current: nothing to carry
    with provider.get_tracer("test").start_as_current_span("request") as request:
        row = create_event(ItemAdded, {"sku": "s", "quantity": 1}, metadata=trace_context())

    # When the relay publishes it later, in no trace
    bus.publish(row)

    # Then the publish links to the request
    (publish,) = named(exporter, PUBLISH)
    assert [link.context.span_id for link in publish.links] == [request.get_span_context().span_id]


def test_a_publish_that_fails_is_an_error_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    from eventbus import PublishError

    # Given a traced bus whose broker refuses connections
    app = make_app(
        "redis://127.0.0.1:1/0",
        task_publish_retry_policy={"max_retries": 0},
        broker_connection_timeout=0.5,
    )
    try:
        bus = EventBus(app, default_queue=unique("unit-q"), dead_letter_queue=unique("unit-dlq"))
        bus.subscribe(ItemAdded, handler=lambda e: None, name="unit.tracing.unreached")
        instrument(bus, tracer_provider=provider)
        # When an event is published, then PublishError, and the span says so
        with pytest.raises(PublishError):
            bus.publish(ItemAdded(sku="s", quantity=1))
    finally:
        app.close()
    (publish,) = named(exporter, PUBLISH)
    assert not publish.status.is_ok
    assert [e.attributes["exception.type"] for e in publish.events if e.attributes] == [
        "eventbus.errors.PublishError"
    ]


def test_the_in_memory_bus_traces_as_the_celery_bus_does(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # Given a traced in-memory bus (users' unit tests) with a flaky and a doomed handler
    bus = InMemoryEventBus()
    calls: list[str] = []

    def flaky(envelope: Envelope[ItemAdded]) -> None:
        calls.append("flaky")
        if calls.count("flaky") == 1:
            raise ConnectionError("once")

    def doomed(envelope: Envelope[ItemAdded]) -> None:
        raise ValueError("always")

    bus.subscribe(ItemAdded, handler=flaky, name="unit.mem.flaky", max_retries=1)
    bus.subscribe(ItemAdded, handler=doomed, name="unit.mem.doomed", max_retries=0)
    instrument(bus, tracer_provider=provider)

    # When an event is published
    bus.publish(ItemAdded(sku="s", quantity=1))

    # Then every attempt is a child of the publish span, a failed one an error
    (publish,) = named(exporter, PUBLISH)
    assert publish.context is not None
    runs = [
        (s.name, attr(s, "eventbus.attempt"), attr(s, "eventbus.outcome"), s.status.is_ok)
        for s in exporter.get_finished_spans()
        if s.name.startswith("handle ")
        and s.parent is not None
        and s.parent.span_id == publish.context.span_id
    ]
    assert sorted(runs) == [
        ("handle unit.mem.doomed", 1, "dead_lettered", False),
        ("handle unit.mem.flaky", 1, "retry", False),
        ("handle unit.mem.flaky", 2, "success", True),
    ]
    # And the dead letter is a span under the doomed run
    (doomed_run,) = named(exporter, "handle unit.mem.doomed")
    (dead_letter,) = named(exporter, "dead_letter unit.mem.doomed")
    assert doomed_run.context is not None and dead_letter.parent is not None
    assert dead_letter.parent.span_id == doomed_run.context.span_id
    assert [e.attributes["exception.type"] for e in doomed_run.events if e.attributes] == [
        "ValueError"
    ]
