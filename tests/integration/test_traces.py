"""Traces on a real worker: one trace from a Flask route to every handler run (issue 15, item 7).

Each test runs on Redis and on RabbitMQ, with a real worker in a thread of
this process and OpenTelemetry's in-memory span exporter: the spans the
worker makes and those of the publishing side land in the same exporter,
and the test reads their parent/child links and attributes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import pytest
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from eventbus import Envelope
from eventbus.tracing import instrument
from tests.contract.events import ItemAdded

from .conftest import Env
from .helpers import wait_for

REPO = Path(__file__).resolve().parents[2]
CLI_APP = "tests.integration.traced_cli_app"
PUBLISH = f"publish {ItemAdded.event_type}"
REPLAY = f"replay {ItemAdded.event_type}"
#: Retried once, at once: two attempts, then a dead letter.
RETRY_ONCE = {"max_retries": 1, "retry_backoff": 0, "retry_jitter": False}


class Spans:
    """The finished spans of one test (an SDK provider of its own, exporting in memory)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {self.describe()}"
        return found[0]

    def runs(self, handler: str) -> list[ReadableSpan]:
        """The handle spans of ``handler``, by attempt, then by end."""
        found = self.named(f"handle {handler}")
        return sorted(found, key=lambda s: (attr(s, "eventbus.attempt"), s.end_time or 0))

    def describe(self) -> str:
        return ", ".join(
            f"{s.name}[{attr(s, 'eventbus.outcome')}]" for s in self.exporter.get_finished_spans()
        )


def attr(span: ReadableSpan, name: str) -> Any:
    return (span.attributes or {}).get(name)


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def trace_of(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


@pytest.fixture
def spans() -> Iterator[Spans]:
    """Asked for before ``env``: shut down after the worker stopped (its last spans end)."""
    recorded = Spans()
    yield recorded
    recorded.provider.shutdown()


def test_one_trace_runs_from_a_flask_route_to_every_handler_run(spans: Spans, env: Env) -> None:
    # Given a traced bus with three handlers of ItemAdded: one that works, one
    # that fails its first attempt, one that fails until it is fixed
    runs: Counter[str] = Counter()
    fixed = threading.Event()
    ok, flaky, doomed = env.name("ok"), env.name("flaky"), env.name("doomed")

    def works(envelope: Envelope[ItemAdded]) -> None:
        runs["ok"] += 1

    def fails_once(envelope: Envelope[ItemAdded]) -> None:
        runs["flaky"] += 1
        if runs["flaky"] == 1:
            raise ConnectionError("the index timed out")

    def fails_until_fixed(envelope: Envelope[ItemAdded]) -> None:
        runs["doomed"] += 1
        if not fixed.is_set():
            raise ValueError(f"no stock for {envelope.data.sku}")

    env.bus.subscribe(ItemAdded, handler=works, name=ok)
    env.bus.subscribe(ItemAdded, handler=fails_once, name=flaky, **RETRY_ONCE)
    env.bus.subscribe(ItemAdded, handler=fails_until_fixed, name=doomed, **RETRY_ONCE)
    instrument(env.bus, tracer_provider=spans.provider)

    # And a Flask app, traced by OpenTelemetry's Flask instrumentation, whose route publishes
    web = flask.Flask(__name__)

    @web.post("/carts/<cart>/items")
    def add_item(cart: str) -> dict[str, str]:
        envelope = env.bus.publish(
            ItemAdded(sku="sku-1", quantity=2), aggregate_id=cart, aggregate_type="cart"
        )
        return {"event_id": str(envelope.event_id)}

    FlaskInstrumentor().instrument_app(web, tracer_provider=spans.provider)
    try:
        env.start_worker()

        # When a request publishes the event
        response = web.test_client().post("/carts/c-1/items")
        assert response.status_code == 200
        event_id = response.get_json()["event_id"]

        # Then, once every handler has run and the dead letter is written,
        # one trace holds them all
        wait_for(
            lambda: (
                len(spans.runs(ok)) == 1
                and len(spans.runs(flaky)) == 2
                and len(spans.runs(doomed)) == 2
                and spans.named(f"dead_letter {doomed}")
            ),
            message=lambda: f"runs {dict(runs)}; spans: {spans.describe()}",
        )
        request = spans.one("POST /carts/<cart>/items")
        assert request.kind is SpanKind.SERVER
        publish = spans.one(PUBLISH)
        assert (trace_of(publish), parent_of(publish)) == (trace_of(request), span_id(request))
        assert publish.kind is SpanKind.PRODUCER
        assert {k: attr(publish, k) for k in ("eventbus.event.id", "eventbus.fan_out")} == {
            "eventbus.event.id": event_id,
            "eventbus.fan_out": 3,
        }
        assert attr(publish, "eventbus.event.type") == ItemAdded.event_type
        assert (
            attr(publish, "eventbus.aggregate.type"),
            attr(publish, "eventbus.aggregate.id"),
        ) == (
            "cart",
            "c-1",
        )
        assert sorted(attr(publish, "eventbus.handlers")) == sorted([ok, flaky, doomed])

        # Every handler run, retries included, is a child of the publish span
        outcomes = {
            handler: [
                (attr(s, "eventbus.attempt"), attr(s, "eventbus.outcome"))
                for s in spans.runs(handler)
            ]
            for handler in (ok, flaky, doomed)
        }
        assert outcomes == {
            ok: [(1, "success")],
            flaky: [(1, "retry"), (2, "success")],
            doomed: [(1, "retry"), (2, "dead_lettered")],
        }
        for handler in (ok, flaky, doomed):
            for run in spans.runs(handler):
                assert (trace_of(run), parent_of(run)) == (trace_of(request), span_id(publish))
                assert run.kind is SpanKind.CONSUMER
                assert attr(run, "eventbus.handler") == handler
                assert attr(run, "eventbus.event.id") == event_id
                assert attr(run, "eventbus.aggregate.id") == "c-1"
        failed = spans.runs(flaky)[0]
        assert not failed.status.is_ok
        assert [e.attributes["exception.type"] for e in failed.events] == ["ConnectionError"]

        # And the dead letter is a span under the last attempt, naming its record
        (record,) = list(env.bus.dead_letters)
        dead_letter = spans.one(f"dead_letter {doomed}")
        last = spans.runs(doomed)[-1]
        assert (trace_of(dead_letter), parent_of(dead_letter)) == (trace_of(request), span_id(last))
        assert attr(dead_letter, "eventbus.dead_letter.id") == record.id
        assert attr(dead_letter, "eventbus.dead_letter.reason") == "retries_exhausted"
        assert attr(dead_letter, "eventbus.event.id") == event_id

        # When the handler is fixed and the operator replays the dead letter
        fixed.set()
        env.bus.dead_letters.replay(record.id)

        # Then the replay is a trace of its own, linked to the original publish,
        # and the replayed run is its child
        wait_for(
            lambda: len(spans.runs(doomed)) == 3,
            message=lambda: f"runs {dict(runs)}; spans: {spans.describe()}",
        )
        replay = spans.one(REPLAY)
        assert trace_of(replay) != trace_of(request)
        assert [(link.context.trace_id, link.context.span_id) for link in replay.links] == [
            (trace_of(publish), span_id(publish))
        ]
        assert replay.links[0].attributes == {"eventbus.link": "replayed_from"}
        assert attr(replay, "eventbus.dead_letter.id") == record.id
        replayed = [s for s in spans.runs(doomed) if trace_of(s) == trace_of(replay)]
        assert [(parent_of(s), attr(s, "eventbus.outcome")) for s in replayed] == [
            (span_id(replay), "success")
        ]
        assert attr(replayed[0], "eventbus.event.id") == event_id
    finally:
        FlaskInstrumentor.uninstrument_app(web)


def test_a_replay_from_the_cli_links_to_the_original_trace(
    spans: Spans, env: Env, tmp_path: Path
) -> None:
    # Given a traced bus whose handler dead-lettered an event published in a trace
    runs: Counter[str] = Counter()
    fixed = threading.Event()
    handler = env.name("doomed")

    def fails_until_fixed(envelope: Envelope[ItemAdded]) -> None:
        runs[str(envelope.event_id)] += 1
        if not fixed.is_set():
            raise ValueError("no stock")

    env.bus.subscribe(ItemAdded, handler=fails_until_fixed, name=handler, max_retries=0)
    instrument(env.bus, tracer_provider=spans.provider)
    env.start_worker()
    with spans.provider.get_tracer("test").start_as_current_span("request"):
        env.bus.publish(ItemAdded(sku="sku-2", quantity=1), aggregate_id="c-2")
    wait_for(lambda: len(env.bus.dead_letters) == 1, message="the dead letter")
    publish = spans.one(PUBLISH)
    (record,) = list(env.bus.dead_letters)

    # When the operator replays it with `eventbus dlq replay`, the CLI's bus traced too
    fixed.set()
    cli_spans = tmp_path / "cli-spans.jsonl"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTBUS_", "CELERY_"))}
    environ.update(
        EVENTBUS_TRACE_TEST_BROKER=env.broker_url,
        EVENTBUS_TRACE_TEST_QUEUE=env.queue,
        EVENTBUS_TRACE_TEST_DLQ=env.dead_letter_queue,
        EVENTBUS_TRACE_TEST_HANDLER=handler,
        EVENTBUS_TRACE_TEST_SPANS=str(cli_spans),
    )
    result = subprocess.run(
        [sys.executable, "-m", "eventbus.cli", "-A", CLI_APP, "dlq", "replay", record.id],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    # Then the CLI's replay span links to the original publish span
    (replay,) = [
        s for s in map(json.loads, cli_spans.read_text().splitlines()) if s["name"] == REPLAY
    ]
    assert [
        (link["context"]["trace_id"], link["context"]["span_id"]) for link in replay["links"]
    ] == [(f"0x{trace_of(publish):032x}", f"0x{span_id(publish):016x}")]
    assert replay["attributes"]["eventbus.dead_letter.id"] == record.id

    # And the worker's run of the replayed event is a child of the CLI's replay span
    wait_for(lambda: len(spans.runs(handler)) == 2, message=lambda: spans.describe())
    rerun = spans.runs(handler)[-1]
    assert (f"0x{trace_of(rerun):032x}", f"0x{parent_of(rerun) or 0:016x}") == (
        replay["context"]["trace_id"],
        replay["context"]["span_id"],
    )
    assert attr(rerun, "eventbus.outcome") == "success"


def test_celery_instrumentation_spans_nest_in_the_same_trace(spans: Spans, env: Env) -> None:
    # Given a traced bus, and Celery's own OpenTelemetry instrumentation on too
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    runs: Counter[str] = Counter()
    handler = env.name("flaky")

    def fails_once(envelope: Envelope[ItemAdded]) -> None:
        runs["flaky"] += 1
        if runs["flaky"] == 1:
            raise ConnectionError("the index timed out")

    env.bus.subscribe(ItemAdded, handler=fails_once, name=handler, **RETRY_ONCE)
    instrument(env.bus, tracer_provider=spans.provider)
    celery_instrumentor = CeleryInstrumentor()
    celery_instrumentor.instrument(tracer_provider=spans.provider)
    try:
        env.start_worker()

        # When an event is published in a request's span
        with spans.provider.get_tracer("test").start_as_current_span("request") as request:
            env.bus.publish(ItemAdded(sku="sku-3", quantity=1))

        # Then both attempts' handle spans are in the request's trace, each
        # nested in Celery's run span of its message
        wait_for(lambda: len(spans.runs(handler)) == 2, message=lambda: spans.describe())
        by_id = {span_id(s): s for s in spans.exporter.get_finished_spans()}
        for run in spans.runs(handler):
            assert trace_of(run) == request.get_span_context().trace_id
            celery_run = by_id[parent_of(run) or 0]
            assert celery_run.name == f"run/{handler}"
        first = spans.runs(handler)[0]
        chain = []
        span: ReadableSpan | None = first
        while span is not None:
            chain.append(span.name)
            span = by_id.get(parent_of(span) or 0)
        assert chain == [
            f"handle {handler}",
            f"run/{handler}",
            f"apply_async/{handler}",
            PUBLISH,
            "request",
        ]
    finally:
        celery_instrumentor.uninstrument()
