"""What traces cost a publish: ``bus.publish(event)`` traced and not, vs 5 raw ``apply_async``.

Per event with 5 subscribed handlers, on the broker (no worker; queues purged
after every run), contenders interleaved (the order rotates every repetition):

* raw:             ``task.apply_async((payload,))`` for 5 raw tasks (the baseline)
* untraced:        ``bus.publish(event)``, no instrumentation (``bus.instrumentation`` None)
* untraced-before: the same bus through ``publish`` as it was before the
                   instrumentation hook (a copy of its old body): what the hook costs untraced
* traced:          ``bus.publish(event)`` with :func:`eventbus.tracing.instrument` and the
                   OpenTelemetry SDK (a BatchSpanProcessor to an exporter that drops the spans:
                   the cost in the publishing process, not the exporter's network)
* traced-api:      instrumented, with the API's no-op tracer provider (no SDK configured)

Then the same without a broker, in microseconds per publish: the in-memory bus
with no subscriber, so that nothing but the envelope and the span is measured.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench import apps
from bench.common import (
    BROKER_URLS,
    Janitor,
    best,
    broker_available,
    brokers,
    fmt_num,
    fmt_ratio,
    install_signal_handlers,
    median,
    new_run_id,
    parser,
    print_header,
    ratio,
    rotate,
    table,
    write_json,
)
from eventbus import Envelope, InMemoryEventBus
from eventbus.bus.base import BaseEventBus, Subscription
from eventbus.domain.envelope import wrap
from eventbus.domain.events import resolve_event_type
from eventbus.tracing import instrument, uninstrument

CONTENDERS = ["raw", "untraced", "untraced-before", "traced", "traced-api"]
WARMUP_EVENTS = 50


class DroppingExporter(SpanExporter):
    """Takes every batch and sends it nowhere: the publishing process's own cost."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def publish_before_hook(bus: BaseEventBus, event: Any) -> Envelope[Any]:
    """``BaseEventBus.publish`` for an Event as it was before the instrumentation hook."""
    resolve_event_type(type(event), bus.event_registry)
    envelope = wrap(event)
    subscriptions: Sequence[Subscription] = bus._by_type.get(envelope.event_type, ())
    if (
        envelope.sequence is None
        and envelope.aggregate_id is not None
        and (envelope.event_type in bus._ordered_types or bus.assign_sequences)
    ):
        sequence = bus.state.sequencer.next_sequence(envelope.aggregate_type, envelope.aggregate_id)
        envelope = envelope.model_copy(update={"sequence": sequence})
    if subscriptions:
        bus._dispatch(envelope, subscriptions)
    bus.published[envelope.event_type] += 1
    return envelope


class Tracing:
    """Switches a bus between the contenders' settings."""

    def __init__(self) -> None:
        self.sdk = TracerProvider()
        # A queue that never fills here: a dropped span would cost less than a kept one.
        self.sdk.add_span_processor(
            BatchSpanProcessor(DroppingExporter(), max_queue_size=1_000_000)
        )
        self.api = trace.NoOpTracerProvider()

    def set(self, bus: BaseEventBus, contender: str) -> None:
        if contender == "traced":
            instrument(bus, tracer_provider=self.sdk)
        elif contender == "traced-api":
            instrument(bus, tracer_provider=self.api)
        else:
            uninstrument(bus)


def publisher(contender: str) -> Callable[[apps.BenchApp, list[Any], list[Any]], None]:
    if contender == "raw":
        return apps.publish_raw
    if contender == "untraced-before":

        def before(bench: apps.BenchApp, events: list[Any], payloads: list[Any]) -> None:
            for event in events:
                publish_before_hook(bench.bus, event)

        return before
    return apps.publish_eventbus


def run_once(
    bench: apps.BenchApp, janitor: Janitor, tracing: Tracing, contender: str, n: int, key: str
) -> float:
    events = apps.make_events(n, key)
    payloads = apps.wire_payloads(events)
    publish = publisher(contender)
    tracing.set(bench.bus, contender)
    gc.collect()
    start = time.perf_counter()
    publish(bench, events, payloads)
    elapsed = time.perf_counter() - start
    tracing.set(bench.bus, "untraced")
    janitor.purge([bench.queues["raw" if contender == "raw" else "eventbus"]])
    return n / elapsed


def bench_broker(broker: str, n: int, reps: int, tracing: Tracing) -> dict[str, list[float]]:
    url = BROKER_URLS[broker]
    run = new_run_id("trc")
    janitor = Janitor(broker, url)
    bench = apps.build(url, run)
    janitor.track(*bench.queues.values())
    janitor.track_exchanges(*apps.created_exchanges(run))
    rates: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    try:
        for contender in CONTENDERS:  # connections, declarations, first-call costs
            run_once(bench, janitor, tracing, contender, WARMUP_EVENTS, "warmup")
        for rep in range(reps):
            for contender in rotate(CONTENDERS, rep):
                rates[contender].append(run_once(bench, janitor, tracing, contender, n, f"r{rep}"))
    finally:
        bench.app.pool.force_close_all()
        janitor.cleanup()
    return rates


def bench_in_memory(n: int, reps: int, tracing: Tracing) -> dict[str, list[float]]:
    """Microseconds per publish on the in-memory bus with no subscriber."""
    bus = InMemoryEventBus()
    events = apps.make_events(n, "mem")
    contenders = CONTENDERS[1:]
    costs: dict[str, list[float]] = {c: [] for c in contenders}
    for rep in range(reps + 1):  # the first is the warm-up
        for contender in rotate(contenders, rep):
            tracing.set(bus, contender)
            publish: Callable[[Any], Any] = (
                (lambda e: publish_before_hook(bus, e))
                if contender == "untraced-before"
                else bus.publish
            )
            gc.collect()
            start = time.perf_counter()
            for event in events:
                publish(event)
            elapsed = time.perf_counter() - start
            if rep:
                costs[contender].append(elapsed / n * 1e6)
    tracing.set(bus, "untraced")
    return costs


def main() -> int:
    args = parser(__doc__.splitlines()[0], events=200, reps=3).parse_args()
    install_signal_handlers()
    print_header(f"tracing: {args.events} events x 5 handlers, {args.reps} interleaved reps")
    tracing = Tracing()
    results: list[dict[str, Any]] = []
    rows = []
    for broker in brokers(args.broker):
        why = broker_available(BROKER_URLS[broker])
        if why:
            print(f"{broker}: SKIPPED, broker unavailable ({why})", flush=True)
            continue
        print(f"{broker}: running ...", flush=True)
        rates = bench_broker(broker, args.events, args.reps, tracing)
        top = {c: best(rates[c]) for c in CONTENDERS}
        for c in CONTENDERS:
            results.append(
                {
                    "bench": "tracing",
                    "broker": broker,
                    "contender": c,
                    "unit": "events/s",
                    "best": top[c],
                    "median": median(rates[c]),
                    "runs": rates[c],
                }
            )
        rows.append(
            [
                broker,
                *(f"{fmt_num(top[c])} (med {fmt_num(median(rates[c]))})" for c in CONTENDERS),
                fmt_ratio(ratio(top["traced"], top["untraced"])),
                fmt_ratio(ratio(top["untraced"], top["untraced-before"])),
                fmt_ratio(ratio(top["traced"], top["raw"])),
            ]
        )
    print()
    print(f"publish throughput, events/s (1 event = 5 messages), best of {args.reps} (median)")
    print(
        table(
            [
                "broker",
                *CONTENDERS,
                "traced/untraced",
                "untraced/before",
                "traced/raw",
            ],
            rows,
        ),
        flush=True,
    )

    # Cheap: more repetitions, for a difference of a microsecond to show or not.
    costs = bench_in_memory(max(args.events * 10, 2000), max(args.reps, 7), tracing)
    print()
    print(
        f"in-memory bus, no subscriber: microseconds per publish, "
        f"best of {max(args.reps, 7)} (median)"
    )
    mem = CONTENDERS[1:]
    print(
        table(
            [*mem, "traced - untraced"],
            [
                [
                    *(f"{min(costs[c]):.1f} (med {median(costs[c]):.1f})" for c in mem),
                    f"{min(costs['traced']) - min(costs['untraced']):+.1f} us",
                ]
            ],
        ),
        flush=True,
    )
    for c in mem:
        results.append(
            {
                "bench": "tracing",
                "broker": "in-memory",
                "contender": c,
                "unit": "us/publish",
                "best": min(costs[c]),
                "median": median(costs[c]),
                "runs": costs[c],
            }
        )
    tracing.sdk.shutdown()
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
