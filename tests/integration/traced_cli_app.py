"""The traced app the ``eventbus dlq replay`` subprocess loads in tests/integration/test_traces.py.

``python -m eventbus.cli -A tests.integration.traced_cli_app dlq replay ID``
builds it from ``EVENTBUS_TRACE_TEST_BROKER``, ``..._QUEUE``, ``..._DLQ`` and
``..._HANDLER`` (the name of the test's handler, subscribed here so the replay
finds it), instruments its bus, and writes every finished span as one JSON
line to the file ``EVENTBUS_TRACE_TEST_SPANS``.
"""

from __future__ import annotations

import os

from eventbus import Envelope, EventBus

if os.environ.get("EVENTBUS_TRACE_TEST_BROKER"):
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    from eventbus.tracing import instrument
    from tests.contract.events import ItemAdded
    from tests.support import make_app

    def _one_line(span: ReadableSpan) -> str:
        return span.to_json(indent=None) + "\n"

    _spans_file = open(os.environ["EVENTBUS_TRACE_TEST_SPANS"], "a")  # noqa: SIM115 - the process's
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(ConsoleSpanExporter(out=_spans_file, formatter=_one_line))
    )

    app = make_app(os.environ["EVENTBUS_TRACE_TEST_BROKER"])
    bus = EventBus(
        app,
        default_queue=os.environ["EVENTBUS_TRACE_TEST_QUEUE"],
        dead_letter_queue=os.environ["EVENTBUS_TRACE_TEST_DLQ"],
    )

    def _not_run_here(envelope: Envelope[ItemAdded]) -> None:
        raise AssertionError("the worker runs it, not the CLI")

    bus.subscribe(ItemAdded, handler=_not_run_here, name=os.environ["EVENTBUS_TRACE_TEST_HANDLER"])
    instrument(bus, tracer_provider=provider)
