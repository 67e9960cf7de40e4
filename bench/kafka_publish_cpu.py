"""CPU per event of a Kafka publish, stage by stage, without a broker (issue 14).

Where ``bench_kafka_produce.py`` times eventbus and a raw loop end to end on a
broker, this splits the Python side: each stage runs over the same events,
timed in thread CPU time (what a loaded machine's other processes do not
add), repeated, interleaved; the median per event is printed. The client is a
stand-in that sends nothing (its ``produce`` calls the delivery callback at
once), so librdkafka's own ``produce`` (the same for both, ``raw-bytes``
measures it end to end) is not in these figures:

* ``eventbus batch``: ``with bus.batch(): bus.publish(event, aggregate_id=...)``
* ``  wrap``: the envelope (:func:`eventbus.domain.envelope.wrap`)
* ``  encode_record``: the record (topic, JSON, headers) of a made envelope
* ``raw loop``: the bench's raw loop, ``json.dumps`` of a wire dict made
  before the clock, the same stand-in ``produce`` and ``poll(0)``
* ``raw-built loop``: the envelope dict built by hand, ``json.dumps``, headers

Run: ``python bench/kafka_publish_cpu.py [--events 20000] [--reps 9]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_kafka_produce import REGISTRY, built_record, make_events, raw_payloads
from bench.common import median
from eventbus.domain.envelope import wrap
from eventbus.kafka import KafkaEventBus, KafkaSettings, TopicNaming, encode_record


class NoBroker:
    """A producer client that sends nothing: ``produce`` reports delivery at once."""

    def produce(
        self, topic: str, *, on_delivery: Callable[..., None] | None = None, **_: Any
    ) -> None:
        if on_delivery is not None:
            on_delivery(None, None)

    def poll(self, timeout: float = 0) -> int:
        return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--reps", type=int, default=9)
    args = p.parse_args()
    n = args.events
    bus = KafkaEventBus(
        KafkaSettings("127.0.0.1:1"), topics=TopicNaming.fixed("t"), event_registry=REGISTRY
    )
    client = NoBroker()
    bus.producer._client = client  # (the stand-in: no librdkafka client is ever made)
    events = make_events(n)
    envelopes = [wrap(event, aggregate_id=aggregate) for event, aggregate in events]
    payloads = raw_payloads(bus, events)

    def eventbus_batch() -> None:
        with bus.batch():
            for event, aggregate in events:
                bus.publish(event, aggregate_id=aggregate)

    def wrap_only() -> None:
        for event, aggregate in events:
            wrap(event, aggregate_id=aggregate)

    def encode_only() -> None:
        for envelope in envelopes:
            encode_record(envelope, bus.topics)

    def raw_loop() -> None:
        for topic, key, wire, headers in payloads:
            value = json.dumps(wire, separators=(",", ":"), ensure_ascii=False).encode()
            client.produce(topic, value=value, key=key, headers=headers)
            client.poll(0)

    def raw_built_loop() -> None:
        for event, aggregate in events:
            value, key, headers = built_record(event, aggregate)
            client.produce("t", value=value, key=key, headers=headers)
            client.poll(0)

    stages: dict[str, Callable[[], None]] = {
        "eventbus batch": eventbus_batch,
        "  wrap": wrap_only,
        "  encode_record": encode_only,
        "raw loop": raw_loop,
        "raw-built loop": raw_built_loop,
    }
    times: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(args.reps):
        for name, stage in stages.items():
            gc.collect()
            start = time.thread_time()
            stage()
            times[name].append((time.thread_time() - start) / n * 1e6)
    print(f"CPU per event (thread time, median of {args.reps} interleaved runs of {n} events)")
    for name, values in times.items():
        print(f"{name:18s} {median(values):6.2f} us  (runs {min(values):.2f}-{max(values):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
