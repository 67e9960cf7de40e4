"""What the delivery guarantees cost: idempotent and ordered handlers vs plain ones.

End to end, as ``bench_e2e.py``: events fully handled per second, 5 no-op
handlers per event, one real ``celery -A bench.guarantees_app:app worker``
subprocess serving three sets of handlers (plain, ``idempotent=True``,
``ordered=True``), each on its own queue; runs interleaved, the order rotating
every repetition. Events go round-robin over 50 aggregates. Medians of the
reps; ratios are ratios of medians with the paired min-max in brackets;
targets: idempotent/plain >= 0.85, ordered/plain >= 0.7.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from bench import apps, guarantees_app
from bench.common import (
    BROKER_URLS,
    COUNTER_URL,
    POOLS,
    ExecutionCounter,
    Janitor,
    Worker,
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

CONTENDERS = list(guarantees_app.SETS)
TARGETS = {"idempotent": 0.85, "ordered": 0.7}
WARMUP_EVENTS = 20


def run_once(
    bench: guarantees_app.GuaranteesApp,
    counter: ExecutionCounter,
    contender: str,
    n: int,
    key: str,
) -> float:
    events = guarantees_app.make_events(contender, n, key)
    target = n * guarantees_app.FANOUT
    gc.collect()
    start = time.perf_counter()
    guarantees_app.publish(bench, events)
    done = counter.wait(key, target, 60 + target / 50)
    return n / (done - start)


def bench_broker(broker: str, pools: list[str], n: int, reps: int) -> list[dict[str, Any]]:
    url = BROKER_URLS[broker]
    run = new_run_id("guar")
    janitor = Janitor(broker, url)
    counter = ExecutionCounter(run)
    bench = guarantees_app.build(url, run, COUNTER_URL)
    janitor.track(*bench.queues.values())
    janitor.track_exchanges(*apps.created_exchanges(run))
    env = {"BENCH_BROKER_URL": url, "BENCH_RUN": run, "BENCH_COUNTER_URL": COUNTER_URL}
    results: list[dict[str, Any]] = []
    try:
        for pool in pools:
            concurrency = POOLS[pool]
            setting = f"{pool} c={concurrency}"
            worker = Worker(
                "bench.guarantees_app:app",
                queues=[bench.queues[name] for name in CONTENDERS],
                pool=pool,
                concurrency=concurrency,
                name=f"{run}-{pool}",
                env=env,
            )
            print(f"{broker} {setting}: $ {' '.join(worker.argv[1:])}", flush=True)
            rates: dict[str, list[float]] = {c: [] for c in CONTENDERS}
            with worker:
                waited = worker.wait_ready(bench.app)
                print(f"{broker} {setting}: worker ready in {waited:.1f}s", flush=True)
                for contender in CONTENDERS:
                    key = counter.key(pool, contender, "warmup")
                    run_once(bench, counter, contender, WARMUP_EVENTS, key)
                keys = []
                for rep in range(reps):
                    for contender in rotate(CONTENDERS, rep):
                        key = counter.key(pool, contender, rep)
                        keys.append(key)
                        rates[contender].append(run_once(bench, counter, contender, n, key))
                extra = {k: counter.get(k) - n * guarantees_app.FANOUT for k in keys}
                extra = {k: v for k, v in extra.items() if v}
                if extra:
                    print(f"{broker} {setting}: duplicate executions: {extra}", flush=True)
            for contender in CONTENDERS:
                results.append(
                    {
                        "bench": "guarantees",
                        "broker": broker,
                        "setting": setting,
                        "contender": contender,
                        "unit": "events/s",
                        "median": median(rates[contender]),
                        "runs": rates[contender],
                    }
                )
    finally:
        bench.app.pool.force_close_all()
        counter.cleanup()
        state = redis.Redis.from_url(COUNTER_URL)
        keys = list(state.scan_iter(match=bench.state_prefix + "*", count=1000))
        if keys:
            state.delete(*keys)
        janitor.cleanup()
    return results


def main() -> int:
    p = parser(__doc__.splitlines()[0], events=250, reps=4)
    p.add_argument(
        "--pool",
        choices=("prefork", "threads", "both"),
        default="prefork",
        help="prefork --concurrency=2 (default), threads --concurrency=4",
    )
    args = p.parse_args()
    install_signal_handlers()
    pools = ["prefork", "threads"] if args.pool == "both" else [args.pool]
    print_header(
        f"guarantees: {args.events} events x 5 no-op handlers, plain vs idempotent vs "
        f"ordered, {args.reps} interleaved reps, pools {', '.join(pools)}"
    )
    results: list[dict[str, Any]] = []
    for broker in brokers(args.broker):
        why = broker_available(BROKER_URLS[broker])
        if why:
            print(f"{broker}: SKIPPED, broker unavailable ({why})", flush=True)
            continue
        results += bench_broker(broker, pools, args.events, args.reps)

    rows = []
    ratios = []
    for broker in brokers(args.broker):
        for pool in pools:
            setting = f"{pool} c={POOLS[pool]}"
            by = {
                r["contender"]: r
                for r in results
                if r["broker"] == broker and r["setting"] == setting
            }
            if not by:
                continue
            plain = by["plain"]["runs"]
            row = [broker, setting]
            for contender in CONTENDERS:
                row.append(fmt_num(by[contender]["median"]))
            for contender, target in TARGETS.items():
                value = paired(by[contender]["runs"], plain)
                row.append(f"{fmt_paired(value)} {verdict(value[0] if value else None, target)}")
                ratios.append(
                    paired_result(
                        "guarantees", broker, setting, f"{contender}/plain", value, target
                    )
                )
            rows.append(row)
    print()
    print(
        f"end to end, events fully handled/s (1 event = 5 executions), median of {args.reps} "
        "interleaved reps; X/plain = ratio of medians [paired min-max]"
    )
    print(
        table(
            [
                "broker",
                "worker",
                "plain",
                "idempotent",
                "ordered",
                "idempotent/plain (>=0.85)",
                "ordered/plain (>=0.7)",
            ],
            rows,
        ),
        flush=True,
    )
    write_json(args.json, results + ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
