"""Publish throughput: ``bus.publish(event)`` vs 5 raw ``apply_async`` per event.

Per event with 5 subscribed handlers:

* eventbus:       ``bus.publish(event)`` (builds the envelope, 5 messages in one batch)
* raw:            ``task.apply_async((payload,))`` for 5 raw tasks, ``payload`` being the
                  same envelope wire dict, computed *before* the clock starts
* celery-pubsub:  ``publish(topic, payload)`` (a group of 5), for reference

No worker runs; the queues are purged after every run. Contenders are
interleaved (the order rotates every repetition); best and median are printed,
ratios are of the best runs.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    verdict,
    write_json,
)

CONTENDERS = ["raw", "eventbus", "celery-pubsub"]
WARMUP_EVENTS = 50


def run_once(bench: apps.BenchApp, janitor: Janitor, contender: str, n: int, key: str) -> float:
    events = apps.make_events(n, key)
    payloads = apps.wire_payloads(events)
    publish = apps.PUBLISHERS[contender]
    gc.collect()
    start = time.perf_counter()
    publish(bench, events, payloads)
    elapsed = time.perf_counter() - start
    janitor.purge([bench.queues[apps.QUEUE_OF[contender]]])
    return n / elapsed


def bench_broker(broker: str, n: int, reps: int) -> list[dict[str, Any]]:
    url = BROKER_URLS[broker]
    run = new_run_id("pub")
    janitor = Janitor(broker, url)
    bench = apps.build(url, run)
    janitor.track(*bench.queues.values())
    janitor.track_exchanges(*apps.created_exchanges(run))
    rates: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    try:
        for contender in CONTENDERS:  # connections, queue declarations, first-call costs
            run_once(bench, janitor, contender, WARMUP_EVENTS, "warmup")
        for rep in range(reps):
            for contender in rotate(CONTENDERS, rep):
                rates[contender].append(run_once(bench, janitor, contender, n, f"r{rep}"))
    finally:
        bench.app.pool.force_close_all()
        janitor.cleanup()

    results = []
    for contender in CONTENDERS:
        results.append(
            {
                "bench": "publish",
                "broker": broker,
                "setting": "no worker",
                "contender": contender,
                "unit": "events/s",
                "best": best(rates[contender]),
                "median": median(rates[contender]),
                "runs": rates[contender],
            }
        )
    return results


def main() -> int:
    args = parser(__doc__.splitlines()[0], events=600, reps=3).parse_args()
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
    for broker in brokers(args.broker):
        by = {r["contender"]: r for r in results if r["broker"] == broker}
        if not by:
            continue
        eb, raw, ps = (by[c]["best"] for c in CONTENDERS[1::-1] + CONTENDERS[2:])
        target = 1.5 if broker == "redis" else 1.0
        r = ratio(eb, raw)
        rows.append(
            [
                broker,
                f"{fmt_num(eb)} (med {fmt_num(by['eventbus']['median'])})",
                f"{fmt_num(raw)} (med {fmt_num(by['raw']['median'])})",
                f"{fmt_num(ps)} (med {fmt_num(by['celery-pubsub']['median'])})",
                fmt_ratio(r),
                f">= {target} {verdict(r, target)}",
                fmt_ratio(ratio(eb, ps)),
            ]
        )
        results.append(
            {
                "bench": "publish",
                "broker": broker,
                "setting": "no worker",
                "ratio": "eventbus/raw",
                "value": r,
                "target": f">= {target}",
                "ok": verdict(r, target),
            }
        )
        results.append(
            {
                "bench": "publish",
                "broker": broker,
                "setting": "no worker",
                "ratio": "eventbus/celery-pubsub",
                "value": ratio(eb, ps),
                "target": "-",
                "ok": "-",
            }
        )
    print()
    print(
        f"publish throughput, events/s (1 event = 5 handler messages), best of {args.reps} (median)"
    )
    print(
        table(
            [
                "broker",
                "eventbus",
                "raw apply_async x5",
                "celery-pubsub",
                "eventbus/raw",
                "target",
                "eventbus/pubsub",
            ],
            rows,
        ),
        flush=True,
    )
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
