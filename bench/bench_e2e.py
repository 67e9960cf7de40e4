"""End to end: events fully handled per second, 5 no-op handlers, real worker.

Concurrent measure: the publisher and the workers run together. Real worker
subprocesses per (broker, pool), same flags (``bench/contenders.py``):

* ``--workers split`` (default): each contender on a worker of its own, as it
  is deployed: eventbus's handlers with eventbus's settings (eventbus's Redis
  transport on Redis; task events sent in batches,
  ``eventbus.celery.internals.task_events``); raw Celery with the same
  guarantees (celeryconfig: late acks, task and task-sent events) on kombu's
  own transport and Celery's own sending of task events; raw Celery with
  Celery's defaults (``bench.defaults_app``); celery-pubsub as raw; dramatiq, a
  reference, on its own command with its defaults (2 processes x 8 threads).
* ``--workers shared``: eventbus, raw and celery-pubsub on one worker
  (eventbus's settings; the method of sessions 1 and 2); raw-defaults and
  dramatiq on their own.

All workers stay up; runs are interleaved (the order rotates every
repetition). A run's clock starts at its first publish and stops when the
Redis counter of its executions reaches N*5 (each no-op handler INCRs it;
polled, with a deadline). Publisher and workers share the machine, so this
measures publishing as much as handling (``bench_drain.py`` measures the
worker alone). Medians of the reps; ratios are ratios of medians with the
min-max of the paired ratios (rep i against rep i) in brackets.
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
    write_json,
)
from bench.contenders import Contenders, dramatiq_available

WARMUP_EVENTS = 20
#: eventbus against each of these, in the table's order, and the issue's targets.
AGAINST = ["raw-defaults", "raw", "celery-pubsub", "dramatiq"]
TARGETS = {"raw-defaults": 1.0, "raw": 1.0, "celery-pubsub": 1.2}


def run_once(
    c: Contenders, counter: ExecutionCounter, contender: str, n: int, key: str
) -> tuple[float, float]:
    """(events handled per second, events published per second) of one run."""
    events = apps.make_events(n, key)
    payloads = apps.wire_payloads(events)
    target = n * apps.FANOUT
    timeout = 60 + target / 50
    gc.collect()
    start = time.perf_counter()
    c.publish(contender, events, payloads)
    published = time.perf_counter()
    done = counter.wait(key, target, timeout)
    return n / (done - start), n / (published - start)


def plan(c: Contenders, split: bool) -> list[list[str]]:
    """The contenders each worker serves."""
    own = [["raw-defaults"]] + ([["dramatiq"]] if "dramatiq" in c.names else [])
    if split:
        return [["eventbus"], ["raw"], ["celery-pubsub"], *own]
    return [["eventbus", "raw", "celery-pubsub"], *own]


def bench_broker(
    broker: str, pools: list[str], n: int, reps: int, *, split: bool, with_dramatiq: bool
) -> list[dict[str, Any]]:
    url = BROKER_URLS[broker]
    run = new_run_id("e2e")
    janitor = Janitor(broker, url)
    counter = ExecutionCounter(run)
    c = Contenders.build(broker, url, run, with_dramatiq=with_dramatiq)
    c.track(janitor)
    results: list[dict[str, Any]] = []
    try:
        for pool in pools:
            concurrency = POOLS[pool]
            setting = f"{pool} c={concurrency}"
            served = plan(c, split)
            workers: list[Worker] = []
            for group in served:
                worker = c.worker(group, pool, concurrency, f"{run}-{pool}-{group[0]}")
                workers.append(worker)
                print(
                    f"{broker} {setting}: $ {' '.join(worker.argv[1:])}  "
                    f"({', '.join(group)}: {c.describe(group[0])})",
                    flush=True,
                )
            rates: dict[str, list[float]] = {name: [] for name in c.names}
            pub_rates: dict[str, list[float]] = {name: [] for name in c.names}
            with contextlib.ExitStack() as stack:
                for worker in workers:
                    stack.enter_context(worker)
                for worker, group in zip(workers, served, strict=True):
                    if group[0] == "dramatiq":
                        continue  # no ping: its warm-up run below waits for it
                    waited = worker.wait_ready(c.app_of(group[0]))
                    print(
                        f"{broker} {setting}: worker {worker.nodename} ready in {waited:.1f}s",
                        flush=True,
                    )
                for contender in c.names:
                    run_once(
                        c, counter, contender, WARMUP_EVENTS, counter.key(pool, contender, "w")
                    )
                keys = []
                for rep in range(reps):
                    for contender in rotate(c.names, rep):
                        key = counter.key(pool, contender, rep)
                        keys.append(key)
                        rate, pub = run_once(c, counter, contender, n, key)
                        rates[contender].append(rate)
                        pub_rates[contender].append(pub)
                    print(
                        f"{broker} {setting} rep {rep + 1}/{reps}: "
                        + ", ".join(f"{name} {fmt_num(rates[name][-1])}" for name in c.names),
                        flush=True,
                    )
                extra = {k: counter.get(k) - n * apps.FANOUT for k in keys}
                extra = {k: v for k, v in extra.items() if v}
                if extra:
                    print(f"{broker} {setting}: duplicate executions: {extra}", flush=True)
            for contender in c.names:
                results.append(
                    {
                        "bench": "e2e",
                        "broker": broker,
                        "setting": setting,
                        "contender": contender,
                        "unit": "events/s",
                        "median": median(rates[contender]),
                        "runs": rates[contender],
                        "publish_median": median(pub_rates[contender]),
                        "publish_runs": pub_rates[contender],
                    }
                )
    finally:
        c.close()
        counter.cleanup()
        janitor.cleanup()
    return results


def report(results: list[dict[str, Any]], reps: int) -> list[dict[str, Any]]:
    """Print the table; return the ratios' JSON records."""
    rows, ratios = [], []
    keys = list(dict.fromkeys((r["broker"], r["setting"]) for r in results if "contender" in r))
    for broker, setting in keys:
        by = {
            r["contender"]: r
            for r in results
            if "contender" in r and r["broker"] == broker and r["setting"] == setting
        }
        eb = by["eventbus"]["runs"]
        row = [broker, setting]
        for name in ["eventbus", *AGAINST]:
            if name not in by:
                row.append("n/a")
                continue
            handled, published = by[name]["median"], by[name]["publish_median"]
            row.append(f"{fmt_num(handled)} (pub {fmt_num(published)})")
        for name in AGAINST:
            value = paired(eb, by[name]["runs"]) if name in by else None
            row.append(fmt_paired(value))
            ratios.append(
                paired_result("e2e", broker, setting, f"eventbus/{name}", value, TARGETS.get(name))
            )
        rows.append(row)
    print()
    print(
        f"end to end (concurrent), events fully handled/s (1 event = 5 executions; pub: events "
        f"published/s), median of {reps} interleaved reps; eventbus/X = ratio of medians "
        "[paired min-max]"
    )
    print(
        table(
            [
                "broker",
                "worker",
                "eventbus",
                "raw defaults",
                "raw (same guarantees)",
                "celery-pubsub",
                "dramatiq 2x8",
                "eb/raw defaults (>=1.0)",
                "eb/raw (>=1.0)",
                "eb/pubsub (>=1.2)",
                "eb/dramatiq",
            ],
            rows,
        ),
        flush=True,
    )
    return ratios


def main() -> int:
    p = parser(__doc__.splitlines()[0], events=250, reps=5)
    p.add_argument(
        "--pool",
        choices=("prefork", "threads", "both"),
        default="both",
        help="prefork --concurrency=2, threads --concurrency=4 (dramatiq: 2 x 8 either way)",
    )
    p.add_argument(
        "--workers",
        choices=("split", "shared"),
        default="split",
        help="split (default): each contender on its own worker, as deployed; shared: "
        "eventbus, raw and celery-pubsub on one worker (raw-defaults and dramatiq on their own)",
    )
    p.add_argument("--no-dramatiq", action="store_true", help="leave dramatiq out")
    args = p.parse_args()
    install_signal_handlers()
    pools = ["prefork", "threads"] if args.pool == "both" else [args.pool]
    with_dramatiq = not args.no_dramatiq
    if with_dramatiq and (why := dramatiq_available()):
        print(f"dramatiq: SKIPPED, not installed ({why}): pip install 'dramatiq[redis,rabbitmq]'")
        with_dramatiq = False
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
            broker,
            pools,
            args.events,
            args.reps,
            split=args.workers == "split",
            with_dramatiq=with_dramatiq,
        )
    ratios = report(results, args.reps)
    write_json(args.json, results + ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
