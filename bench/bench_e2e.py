"""End to end: events fully handled per second, 5 no-op handlers, real worker.

Real ``celery -A bench.apps:app worker`` subprocesses per (broker, pool), same
flags and settings: by default (``--workers split``) one runs eventbus's
handlers as eventbus deploys them (eventbus's Redis transport, celeryconfig's
default; task events sent in batches, ``eventbus.celery.internals.task_events``), the other the
raw tasks and celery-pubsub's as plain Celery runs them (kombu's own transport,
Celery's own sending of task events); on RabbitMQ both transports are kombu's.
``--workers shared`` runs all three on one worker (eventbus's settings). Both
stay up; runs are interleaved. A run's clock starts at its first publish and
stops when the Redis counter of its executions reaches N*5 (each no-op handler
INCRs it; polled, with a deadline). Publisher and worker share the machine.
Best and median are printed; ratios are of the best runs.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import apps
from bench.common import (
    BROKER_URLS,
    COUNTER_URL,
    POOLS,
    ExecutionCounter,
    Janitor,
    Worker,
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
WARMUP_EVENTS = 20


def run_once(
    bench: apps.BenchApp, counter: ExecutionCounter, contender: str, n: int, key: str
) -> tuple[float, float]:
    """(events handled per second, events published per second) of one run."""
    events = apps.make_events(n, key)
    payloads = apps.wire_payloads(events)
    publish = apps.PUBLISHERS[contender]
    target = n * apps.FANOUT
    timeout = 60 + target / 50
    gc.collect()
    start = time.perf_counter()
    publish(bench, events, payloads)
    published = time.perf_counter()
    done = counter.wait(key, target, timeout)
    return n / (done - start), n / (published - start)


def bench_broker(
    broker: str, pools: list[str], n: int, reps: int, *, split: bool
) -> list[dict[str, Any]]:
    url = BROKER_URLS[broker]
    run = new_run_id("e2e")
    janitor = Janitor(broker, url)
    counter = ExecutionCounter(run)
    bench = apps.build(url, run)
    janitor.track(*bench.queues.values())
    janitor.track_exchanges(*apps.created_exchanges(run))
    env = {"BENCH_BROKER_URL": url, "BENCH_RUN": run, "BENCH_COUNTER_URL": COUNTER_URL}
    results: list[dict[str, Any]] = []
    try:
        for pool in pools:
            concurrency = POOLS[pool]
            setting = f"{pool} c={concurrency}"
            if split:
                # Each product on its own worker: eventbus's on eventbus's Redis
                # transport (celeryconfig's default), raw Celery's and
                # celery-pubsub's on kombu's own, as each is deployed.
                plan = [
                    ("eb", [bench.queues["eventbus"]], env),
                    (
                        "stock",
                        [bench.queues["raw"], bench.queues["pubsub"]],
                        {**env, "BENCH_STOCK_TRANSPORT": "1"},
                    ),
                ]
            else:
                plan = [("all", bench.consume_queues, env)]
            workers = [
                Worker(
                    "bench.apps:app",
                    queues=queues,
                    pool=pool,
                    concurrency=concurrency,
                    name=f"{run}-{pool}-{tag}",
                    env=worker_env,
                )
                for tag, queues, worker_env in plan
            ]
            for worker, (_, _, worker_env) in zip(workers, plan, strict=True):
                stock = bool(worker_env.get("BENCH_STOCK_TRANSPORT"))
                transport = "eventbus's" if broker == "redis" and not stock else "kombu's"
                events = "Celery's" if stock else "eventbus's batched"
                print(
                    f"{broker} {setting}: $ {' '.join(worker.argv[1:])}  "
                    f"({transport} transport, {events} task events)",
                    flush=True,
                )
            rates: dict[str, list[float]] = {c: [] for c in CONTENDERS}
            pub_rates: dict[str, list[float]] = {c: [] for c in CONTENDERS}
            with contextlib.ExitStack() as stack:
                for worker in workers:
                    stack.enter_context(worker)
                for worker in workers:
                    waited = worker.wait_ready(bench.app)
                    print(
                        f"{broker} {setting}: worker {worker.nodename} ready in {waited:.1f}s",
                        flush=True,
                    )
                for contender in CONTENDERS:
                    run_once(
                        bench,
                        counter,
                        contender,
                        WARMUP_EVENTS,
                        counter.key(pool, contender, "warmup"),
                    )
                keys = []
                for rep in range(reps):
                    for contender in rotate(CONTENDERS, rep):
                        key = counter.key(pool, contender, rep)
                        keys.append(key)
                        rate, pub = run_once(bench, counter, contender, n, key)
                        rates[contender].append(rate)
                        pub_rates[contender].append(pub)
                extra = {k: counter.get(k) - n * apps.FANOUT for k in keys}
                extra = {k: v for k, v in extra.items() if v}
                if extra:
                    print(f"{broker} {setting}: duplicate executions: {extra}", flush=True)
            for contender in CONTENDERS:
                results.append(
                    {
                        "bench": "e2e",
                        "broker": broker,
                        "setting": setting,
                        "contender": contender,
                        "unit": "events/s",
                        "best": best(rates[contender]),
                        "median": median(rates[contender]),
                        "runs": rates[contender],
                        "publish_best": best(pub_rates[contender]),
                    }
                )
    finally:
        bench.app.pool.force_close_all()
        counter.cleanup()
        janitor.cleanup()
    return results


def main() -> int:
    p = parser(__doc__.splitlines()[0], events=250, reps=4)
    p.add_argument(
        "--pool",
        choices=("prefork", "threads", "both"),
        default="both",
        help="prefork --concurrency=2, threads --concurrency=4",
    )
    p.add_argument(
        "--workers",
        choices=("split", "shared"),
        default="split",
        help="split (default): eventbus's worker on eventbus's Redis transport, raw Celery's "
        "and celery-pubsub's on kombu's own; shared: one worker for all three",
    )
    args = p.parse_args()
    install_signal_handlers()
    pools = ["prefork", "threads"] if args.pool == "both" else [args.pool]
    print_header(
        f"end to end: {args.events} events x 5 no-op handlers, "
        f"{args.reps} interleaved reps, pools {', '.join(pools)}"
    )
    results: list[dict[str, Any]] = []
    for broker in brokers(args.broker):
        why = broker_available(BROKER_URLS[broker])
        if why:
            print(f"{broker}: SKIPPED, broker unavailable ({why})", flush=True)
            continue
        results += bench_broker(
            broker, pools, args.events, args.reps, split=args.workers == "split"
        )

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
            eb, raw, ps = by["eventbus"]["best"], by["raw"]["best"], by["celery-pubsub"]["best"]
            r_raw, r_ps = ratio(eb, raw), ratio(eb, ps)
            rows.append(
                [
                    broker,
                    setting,
                    f"{fmt_num(eb)} (med {fmt_num(by['eventbus']['median'])})",
                    f"{fmt_num(raw)} (med {fmt_num(by['raw']['median'])})",
                    f"{fmt_num(ps)} (med {fmt_num(by['celery-pubsub']['median'])})",
                    f"{fmt_ratio(r_raw)} {verdict(r_raw, 1.0)}",
                    f"{fmt_ratio(r_ps)} {verdict(r_ps, 1.2)}",
                ]
            )
            ratios += [
                {
                    "bench": "e2e",
                    "broker": broker,
                    "setting": setting,
                    "ratio": "eventbus/raw",
                    "value": r_raw,
                    "target": ">= 1.0",
                    "ok": verdict(r_raw, 1.0),
                },
                {
                    "bench": "e2e",
                    "broker": broker,
                    "setting": setting,
                    "ratio": "eventbus/celery-pubsub",
                    "value": r_ps,
                    "target": ">= 1.2",
                    "ok": verdict(r_ps, 1.2),
                },
            ]
    print()
    print(
        f"end to end, events fully handled/s (1 event = 5 executions), best of {args.reps} (median)"
    )
    print(
        table(
            [
                "broker",
                "worker",
                "eventbus",
                "raw",
                "celery-pubsub",
                "eventbus/raw (>=1.0)",
                "eventbus/pubsub (>=1.2)",
            ],
            rows,
        ),
        flush=True,
    )
    write_json(args.json, results + ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
