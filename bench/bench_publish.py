"""Publish throughput: ``bus.publish(event)`` vs 5 raw ``apply_async`` per event.

Per event with 5 subscribed handlers:

* eventbus:       ``bus.publish(event)`` (builds the envelope, 5 messages in one batch)
* raw:            ``task.apply_async((payload,))`` for 5 raw tasks, ``payload`` being the
                  same envelope wire dict, computed *before* the clock starts; the
                  app on celeryconfig's settings (task-sent events)
* raw-defaults:   the same on an app with Celery's default settings (no task-sent
                  events; ``bench.defaults_app``)
* eventbus-batch: the same ``bus.publish`` calls inside one ``bus.batch()`` per run
                  (one pipeline per 500 messages on Redis, one confirm wait on RabbitMQ)
* celery-pubsub:  ``publish(topic, payload)`` (a group of 5), for reference
* raw-confirm:    RabbitMQ only: raw-defaults with kombu's own publisher confirms
                  (``broker_transport_options={"confirm_publish": True}``: each
                  ``apply_async`` waits for its confirm), what stock Celery pays for
                  "publish returned => the broker has it"; for reference
* confirm-floor:  RabbitMQ only: py-amqp alone, 6 persistent messages per event and
                  one confirm wait (``bench/confirm_floor.py``): the floor of any
                  publisher that confirms each event; for reference

No worker runs; the queues are purged after every run. Contenders are
interleaved (the order rotates every repetition). Medians of the reps; ratios
are ratios of medians with the min-max of the paired ratios (rep i against
rep i) in brackets.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import apps, confirm_floor, defaults_app
from bench.common import (
    BROKER_URLS,
    Janitor,
    broker_available,
    brokers,
    fmt_num,
    fmt_paired,
    install_signal_handlers,
    median,
    new_run_id,
    paired,
    paired_result,
    parser,
    print_header,
    rotate,
    table,
    verdict,
    write_json,
)
from bench.contenders import Contenders

CONTENDERS = ["raw", "raw-defaults", "eventbus", "eventbus-batch", "celery-pubsub"]
WARMUP_EVENTS = 50
#: eventbus against each of these, in the table's order, and the targets
#: (issue 16: >= 0.9x raw defaults per event on RabbitMQ; issue 3's against raw).
AGAINST = ["raw-defaults", "raw", "celery-pubsub"]


def targets(broker: str) -> dict[str, float]:
    if broker == "redis":
        return {"raw": 1.5}
    return {"raw": 1.0, "raw-defaults": 0.9}


def publish_batched(c: Contenders, events: list[apps.BenchHappened]) -> None:
    bus = c.bench.bus
    with bus.batch():
        for event in events:
            bus.publish(event)


def run_once(
    c: Contenders,
    janitor: Janitor,
    contender: str,
    n: int,
    key: str,
    confirming: defaults_app.DefaultsApp | None = None,
    floor: confirm_floor.ConfirmFloor | None = None,
) -> float:
    events = apps.make_events(n, key)
    payloads = apps.wire_payloads(events)
    gc.collect()
    start = time.perf_counter()
    if contender == "eventbus-batch":
        publish_batched(c, events)
    elif contender == "raw-confirm":
        assert confirming is not None
        defaults_app.publish(confirming, payloads)
    elif contender == "confirm-floor":
        assert floor is not None
        floor.publish(payloads)
    else:
        c.publish(contender, events, payloads)
    elapsed = time.perf_counter() - start
    queue_of = {
        "eventbus-batch": "eventbus",
        "raw-confirm": "raw-defaults",
        "confirm-floor": "raw-defaults",
    }
    janitor.purge([c.queue(queue_of.get(contender, contender))])
    return n / elapsed


def bench_broker(broker: str, n: int, reps: int) -> list[dict[str, Any]]:
    url = BROKER_URLS[broker]
    run = new_run_id("pub")
    janitor = Janitor(broker, url)
    c = Contenders.build(broker, url, run, with_dramatiq=False)
    c.track(janitor)
    names = contenders_of(broker)
    # (The same queue as raw-defaults, purged after every run.)
    confirming = (
        defaults_app.build(url, run, confirm_publish=True) if "raw-confirm" in names else None
    )
    floor: confirm_floor.ConfirmFloor | None = None
    rates: dict[str, list[float]] = {name: [] for name in names}
    try:
        for contender in names:  # connections, queue declarations, first-call costs
            if contender == "confirm-floor":  # (on the queue raw-defaults declared)
                floor = confirm_floor.build(url, c.queue("raw-defaults"))
            run_once(c, janitor, contender, WARMUP_EVENTS, "warmup", confirming, floor)
        for rep in range(reps):
            for contender in rotate(names, rep):
                rate = run_once(c, janitor, contender, n, f"r{rep}", confirming, floor)
                rates[contender].append(rate)
    finally:
        c.close()
        if confirming is not None:
            confirming.app.pool.force_close_all()
        if floor is not None:
            floor.close()
        janitor.cleanup()

    return [
        {
            "bench": "publish",
            "broker": broker,
            "setting": "no worker",
            "contender": contender,
            "unit": "events/s",
            "median": median(rates[contender]),
            "runs": rates[contender],
        }
        for contender in names
    ]


def contenders_of(broker: str) -> list[str]:
    return [*CONTENDERS, "raw-confirm", "confirm-floor"] if broker == "rabbitmq" else CONTENDERS


def main() -> int:
    args = parser(__doc__.splitlines()[0], events=600, reps=5).parse_args()
    install_signal_handlers()
    print_header(f"publish: {args.events} events x 5 handlers, {args.reps} interleaved reps")
    results: list[dict[str, Any]] = []
    for broker in brokers(args.broker):
        why = broker_available(BROKER_URLS[broker])
        if why:
            print(f"{broker}: SKIPPED, broker unavailable ({why})", flush=True)
            continue
        print(f"{broker}: running ...", flush=True)
        results += bench_broker(broker, args.events, args.reps)

    rows = []
    ratios = []
    for broker in brokers(args.broker):
        by = {r["contender"]: r for r in results if r["broker"] == broker}
        if not by:
            continue
        row = [broker] + [fmt_num(by[name]["median"]) for name in ["eventbus", *AGAINST]]
        for name in AGAINST:
            value = paired(by["eventbus"]["runs"], by[name]["runs"])
            target = targets(broker).get(name)
            row.append(
                fmt_paired(value)
                + (f" {verdict(value[0] if value else None, target)}" if target else "")
            )
            ratios.append(
                paired_result("publish", broker, "no worker", f"eventbus/{name}", value, target)
            )
        value = paired(by["eventbus-batch"]["runs"], by["raw-defaults"]["runs"])
        row[2:2] = [fmt_num(by["eventbus-batch"]["median"])]
        row.append(f"{fmt_paired(value)} {verdict(value[0] if value else None, 1.5)}")
        ratios.append(
            paired_result("publish", broker, "no worker", "eventbus-batch/raw-defaults", value, 1.5)
        )
        rows.append(row)
    print()
    print(
        "publish throughput, events/s (1 event = 5 handler messages), median of "
        f"{args.reps} interleaved reps; eventbus/X = ratio of medians [paired min-max]"
    )
    print(
        table(
            [
                "broker",
                "eventbus",
                "eventbus in bus.batch()",
                "raw defaults x5",
                "raw apply_async x5",
                "celery-pubsub",
                "eb/raw defaults (rabbitmq >=0.9)",
                "eb/raw (redis >=1.5, rabbitmq >=1.0)",
                "eb/pubsub",
                "eb batch/raw defaults (>=1.5)",
            ],
            rows,
        ),
        flush=True,
    )
    confirm_rows = []
    for broker in brokers(args.broker):
        by = {r["contender"]: r for r in results if r["broker"] == broker}
        if "raw-confirm" not in by:
            continue
        confirm_rows.append(
            [
                broker,
                fmt_num(by["raw-confirm"]["median"]),
                fmt_num(by["raw-defaults"]["median"]),
                fmt_paired(paired(by["raw-confirm"]["runs"], by["raw-defaults"]["runs"])),
                fmt_paired(paired(by["eventbus"]["runs"], by["raw-confirm"]["runs"])),
                fmt_paired(paired(by["eventbus-batch"]["runs"], by["raw-confirm"]["runs"])),
                fmt_num(by["confirm-floor"]["median"]),
                fmt_paired(paired(by["confirm-floor"]["runs"], by["raw-defaults"]["runs"])),
                fmt_paired(paired(by["eventbus"]["runs"], by["confirm-floor"]["runs"])),
            ]
        )
        for a, b in (
            ("raw-confirm", "raw-defaults"),
            ("eventbus", "raw-confirm"),
            ("confirm-floor", "raw-defaults"),
            ("eventbus", "confirm-floor"),
        ):
            value = paired(by[a]["runs"], by[b]["runs"])
            ratios.append(paired_result("publish", broker, "no worker", f"{a}/{b}", value, None))
    if confirm_rows:
        print()
        print(
            "stock Celery's own publisher confirms (raw defaults + broker_transport_options"
            "={'confirm_publish': True}: one confirm wait per message), and the floor of "
            "one confirm wait per event (py-amqp alone), events/s"
        )
        print(
            table(
                [
                    "broker",
                    "raw defaults + confirm_publish",
                    "raw defaults",
                    "raw-confirm/raw defaults",
                    "eb/raw-confirm",
                    "eb batch/raw-confirm",
                    "confirm floor (py-amqp, 1 wait/event)",
                    "floor/raw defaults",
                    "eb/floor",
                ],
                confirm_rows,
            ),
            flush=True,
        )
    write_json(args.json, results + ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
