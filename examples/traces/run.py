"""One trace from a Flask route to every handler run, its retry, its dead letter and its replay.

Run from the repository's root, with Redis on 127.0.0.1:6379 (or any broker
in ``EVENTBUS_BROKER_URL``)::

    pip install -e '.[tracing,flask]' opentelemetry-sdk opentelemetry-instrumentation-flask
    python -m examples.traces.run

A Flask route publishes ``example.user_registered`` to three handlers run by a
real Celery worker (in a thread of this process): one works, one fails its
first attempt and is retried, one fails until it is "fixed" and is
dead-lettered; then the dead letter is replayed. The spans go to an in-memory
exporter and are printed as trees, one per trace. In production, configure
an exporter (OTLP to your collector) instead; nothing else changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state
from flask import Flask
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from eventbus import Envelope, Event, EventBus
from eventbus.tracing import instrument

# -- the SDK: in every process that publishes or runs handlers --------------------

exporter = InMemorySpanExporter()
provider = TracerProvider(resource=Resource.create({"service.name": "traces-example"}))
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

# -- the app, its bus and its handlers ---------------------------------------------

RUN = uuid.uuid4().hex[:8]  # queues of this run's own, removed at the end
app = Celery("traces-example", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("EVENTBUS_BROKER_URL", "redis://127.0.0.1:6379/0"),
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    worker_enable_remote_control=False,
    broker_connection_retry_on_startup=True,
)
bus = EventBus(
    app, default_queue=f"traces-example.{RUN}", dead_letter_queue=f"traces-example.{RUN}.dlq"
)
instrument(bus)  # the one line: publish, handler runs, dead letters and replays make spans


class UserRegistered(Event):
    event_type = "example.user_registered"

    email: str


attempts: dict[str, int] = defaultdict(int)
payments_fixed = threading.Event()


@bus.subscribe(UserRegistered, name="users.send_welcome", max_retries=0)
def send_welcome(envelope: Envelope[UserRegistered]) -> None:
    attempts["send_welcome"] += 1


@bus.subscribe(
    UserRegistered, name="users.index_user", max_retries=2, retry_backoff=0, retry_jitter=False
)
def index_user(envelope: Envelope[UserRegistered]) -> None:
    attempts["index_user"] += 1
    if attempts["index_user"] == 1:
        raise ConnectionError("the search index timed out")


@bus.subscribe(
    UserRegistered, name="users.open_account", max_retries=1, retry_backoff=0, retry_jitter=False
)
def open_account(envelope: Envelope[UserRegistered]) -> None:
    attempts["open_account"] += 1
    if not payments_fixed.is_set():
        raise ValueError("the payments service refused the account")


# -- the web app: OpenTelemetry's Flask instrumentation makes the request's span --------

web = Flask(__name__)


@web.post("/users/<user_id>")
def register(user_id: str) -> dict[str, str]:
    envelope = bus.publish(
        UserRegistered(email=f"{user_id}@example.com"), aggregate_id=user_id, aggregate_type="user"
    )
    return {"event_id": str(envelope.event_id)}


try:
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
except ImportError:  # not installed: the route's span is made by hand
    tracer = trace.get_tracer("traces-example")
    route = web.view_functions["register"]

    def traced_register(user_id: str) -> dict[str, str]:
        with tracer.start_as_current_span("POST /users/<user_id>", kind=trace.SpanKind.SERVER):
            return route(user_id)  # type: ignore[no-any-return]

    web.view_functions["register"] = traced_register
else:
    FlaskInstrumentor().instrument_app(web)


# -- printing ---------------------------------------------------------------------

SHOWN = (
    "eventbus.fan_out",
    "eventbus.attempt",
    "eventbus.outcome",
    "eventbus.dead_letter.reason",
)


def describe(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    shown = " ".join(
        f"{k.removeprefix('eventbus.')}={attributes[k]}" for k in SHOWN if k in attributes
    )
    links = " ".join(
        f"link->{link.context.span_id:016x}({(link.attributes or {}).get('eventbus.link')})"
        for link in span.links
    )
    own = f"{span.context.span_id:016x}" if span.context else "?"
    return f"{span.name} [{own}] {shown} {links}".rstrip()


def print_traces(spans: tuple[ReadableSpan, ...]) -> None:
    children: dict[int | None, list[ReadableSpan]] = defaultdict(list)
    for span in sorted(spans, key=lambda s: s.start_time or 0):
        children[span.parent.span_id if span.parent else None].append(span)

    def walk(span: ReadableSpan, prefix: str, last: bool) -> Iterator[str]:
        yield f"{prefix}{'└── ' if last else '├── '}{describe(span)}"
        kids = children.get(span.context.span_id if span.context else None, [])
        for i, kid in enumerate(kids):
            yield from walk(kid, prefix + ("    " if last else "│   "), i == len(kids) - 1)

    for root in children[None]:
        print(f"trace {root.context.trace_id:032x}" if root.context else "trace ?")
        print("\n".join(walk(root, "", True)))
        print()


def wait_until(predicate: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.05)  # poll


def handled(handler: str) -> list[ReadableSpan]:
    """The finished handle spans of ``handler``."""
    return [s for s in exporter.get_finished_spans() if s.name == f"handle {handler}"]


def main() -> None:
    # The worker logs each failure with its traceback: the trees say it all here.
    logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)
    try:
        with start_worker(app, queues=bus.queues, pool="solo", perform_ping_check=False) as worker:
            response = web.test_client().post("/users/42")
            print("POST /users/42 ->", response.status_code, response.get_json())
            wait_until(lambda: len(bus.dead_letters) == 1, "the dead letter")
            wait_until(lambda: attempts["index_user"] == 2, "the retried run")

            payments_fixed.set()  # the bug is fixed: replay (as `eventbus dlq replay` does)
            (record,) = list(bus.dead_letters)
            bus.dead_letters.replay(record.id)
            wait_until(lambda: len(handled("users.open_account")) == 3, "the replayed run")
            # Stop the worker now: an idle AMQP connection's poll lasts up to 10 s.
            worker_state.should_terminate = 0
            worker.hub.call_soon(lambda: None)
        print_traces(exporter.get_finished_spans())
    finally:
        bus.dead_letters.purge()
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in (*bus.queues, bus.dead_letter_queue):
                with contextlib.suppress(*conn.channel_errors):
                    channel.queue_delete(name)
        app.close()


if __name__ == "__main__":
    main()
