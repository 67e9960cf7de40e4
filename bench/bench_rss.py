"""Worker peak RSS: ``celery -A handlers worker`` vs a raw worker with 5 plain tasks.

Both workers run with the same ``celeryconfig`` settings and pool flags; the
raw one (``bench.raw_app``) has 5 plain tasks equivalent to the example
handlers and imports neither eventbus nor pydantic. Each pair is measured
twice: started with the ``celery`` command (which itself imports every
installed ``celery.commands`` plugin, eventbus's included, so the raw worker
carries eventbus too) and with ``bench.direct_worker`` (the same
``app.Worker(...).start()`` without the CLI: the clean baseline). The RSS summed over the
worker's process tree (main process + pool children, psutil) is sampled every
20 ms from spawn to shutdown while the worker starts, then handles a load:
per event, the 5 messages the example bus would send for a user.registered, a
todo.created and a todo.completed event (envelope wire dicts) — without
``notify_assignee``, whose demo gateway fails twice per event and retries with
1 s and 2 s backoff (left out on both sides). Completion is seen through the
workers' own task events (task-succeeded of every load message). PSS (shared
pages counted once) at the end of the load is printed for reference.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BROKER_URLS,
    COUNTER_URL,
    POOLS,
    ExecutionCounter,
    Janitor,
    TaskEventCounter,
    Worker,
    broker_available,
    brokers,
    fmt_ratio,
    install_signal_handlers,
    median,
    mib,
    new_run_id,
    parser,
    print_header,
    ratio,
    rotate,
    table,
    verdict,
    write_json,
)
from bench.settings import make_app
from eventbus import create_event
from handlers.events import TodoCompleted, TodoCreated, UserRegistered

KINDS = ["raw", "handlers"]
APP_SPEC = {"raw": "bench.raw_app:app", "handlers": "handlers"}
TASK_PREFIX = {
    "raw": {"user": "bench.raw_app", "todo": "bench.raw_app"},
    "handlers": {"user": "handlers.user", "todo": "handlers.todo"},
}
TARGET = 1.1
LAUNCHER_LABEL = {"cli": "celery CLI", "direct": "no CLI plugins"}


def load_messages(kind: str, n: int) -> list[tuple[str, dict[str, Any]]]:
    """(task name, envelope wire dict): 5 messages per event index."""
    user, todo = TASK_PREFIX[kind]["user"], TASK_PREFIX[kind]["todo"]
    messages = []
    for i in range(n):
        registered = create_event(
            UserRegistered,
            {
                "user_id": f"u{i}",
                "email": f"user{i}@example.com",
                "name": f"User {i}",
            },
            aggregate_id=f"u{i}",
            aggregate_type="User",
        ).to_wire()
        created = create_event(
            TodoCreated,
            {
                "title": f"benchmark todo {i}",
                "priority": "high",
                "assignee": f"u{i}",
            },
            aggregate_id=f"todo-{i}",
            aggregate_type="Todo",
        ).to_wire()
        completed = create_event(
            TodoCompleted,
            {"completed_by": f"u{i}"},
            aggregate_id=f"todo-{i}",
            aggregate_type="Todo",
        ).to_wire()
        messages += [
            (f"{user}.send_welcome_email", registered),
            (f"{user}.audit_log", registered),
            (f"{todo}.update_statistics", created),
            (f"{todo}.index_for_search", created),
            (f"{todo}.update_statistics", completed),
        ]
    return messages


def setting_of(launcher: str, pool: str) -> str:
    return f"{LAUNCHER_LABEL[launcher]}, {pool} c={POOLS[pool]}"


def measure(
    kind: str,
    broker: str,
    url: str,
    run: str,
    launcher: str,
    pool: str,
    rep: int,
    n: int,
    janitor: Janitor,
    load_app: Any,
    stopping: list[tuple[Worker, TaskEventCounter]],
) -> dict[str, Any]:
    queue = f"bench.{run}.rss-{kind}-{launcher}-{pool}-{rep}"
    dlq = f"bench.{run}.dlq"
    janitor.track(queue, dlq)
    env = {
        "BENCH_BROKER_URL": url,
        "BENCH_QUEUE": queue,  # bench.raw_app
        "EVENTBUS_BROKER_URL": url,
        "EVENTBUS_QUEUE": queue,  # handlers (celeryconfig)
        "EVENTBUS_DLQ": dlq,
        # The load comes from a plain Celery app, which declares the queue
        # without the dead-letter exchange eventbus adds on RabbitMQ: keep
        # one declaration (the DLX changes nothing in memory).
        "EVENTBUS_BROKER_DLX": "0",
        # The example handlers' idempotency/ordering state (a worker with such
        # handlers and no Redis refuses to start): the counters' db, a prefix
        # of the run's, removed at the end (ExecutionCounter.cleanup).
        "EVENTBUS_REDIS_URL": COUNTER_URL,
        "EVENTBUS_REDIS_PREFIX": f"bench:{run}:state:",
    }
    worker = Worker(
        APP_SPEC[kind],
        queues=[queue],
        pool=pool,
        concurrency=POOLS[pool],
        name=f"{run}-{kind}-{launcher}-{pool}-{rep}",
        env=env,
        sample_rss=True,
        launcher=launcher,
    )
    events = TaskEventCounter(load_app, worker.nodename).start()
    messages = load_messages(kind, n)
    worker.start()
    try:
        # Ready when a first task's task-succeeded event comes back (this
        # also proves the event receiver is subscribed).
        start = time.monotonic()
        warmup: list[str] = []
        while not warmup or not events.wait_any_succeeded(warmup, 1.0):
            if time.monotonic() - start > 60:
                raise TimeoutError(f"{kind} worker: no task event after 60s:\n{worker.log_tail()}")
            name, payload = messages[1]
            warmup.append(load_app.send_task(name, (payload,), queue=queue).id)
            if worker.proc is not None and worker.proc.poll() is not None:
                raise RuntimeError(f"{kind} worker exited:\n{worker.log_tail()}")
        ready = time.monotonic() - start
        t0 = time.monotonic()
        ids = [load_app.send_task(name, (payload,), queue=queue).id for name, payload in messages]
        if not events.wait_succeeded(ids + warmup, 60 + len(ids) / 20):
            raise TimeoutError(
                f"{kind} worker: {len(events.succeeded)} of "
                f"{len(ids) + len(warmup)} tasks succeeded:\n"
                f"{worker.log_tail()}"
            )
        handled = time.monotonic() - t0
        assert worker.sampler is not None
        pss, procs = worker.sampler.pss()
        peak, samples = worker.sampler.peak, worker.sampler.samples
    finally:
        # The figures are taken: the next worker may start while this one shuts
        # down (memory is per process tree); bench_broker() reaps them all.
        worker.terminate()
        events.stop(wait=False)
        stopping.append((worker, events))
    return {
        "bench": "rss",
        "broker": broker,
        "setting": setting_of(launcher, pool),
        "contender": kind,
        "peak_rss": peak,
        "pss": pss,
        "procs": procs,
        "samples": samples,
        "ready_s": ready,
        "load_s": handled,
        "messages": len(ids),
    }


def bench_broker(
    broker: str, launchers: list[str], pools: list[str], n: int, reps: int
) -> list[dict[str, Any]]:
    url = BROKER_URLS[broker]
    run = new_run_id("rss")
    janitor = Janitor(broker, url)
    load_app = make_app(f"bench-rss-load-{run}", url)
    results = []
    stopping: list[tuple[Worker, TaskEventCounter]] = []
    try:
        for launcher, pool in [(lch, pl) for lch in launchers for pl in pools]:
            for rep in range(reps):
                for kind in rotate(KINDS, rep):
                    r = measure(
                        kind, broker, url, run, launcher, pool, rep, n, janitor, load_app, stopping
                    )
                    print(
                        f"{broker} {r['setting']} {kind:8s}: peak RSS {mib(r['peak_rss']):6.1f} "
                        f"MiB over {r['procs']} processes ({r['samples']} samples), "
                        f"PSS {mib(r['pss']):6.1f} MiB; ready {r['ready_s']:.1f}s, "
                        f"{r['messages']} messages in {r['load_s']:.1f}s",
                        flush=True,
                    )
                    results.append(r)
    finally:
        for worker, events in stopping:
            worker.stop()
            events.stop()
        load_app.pool.force_close_all()
        janitor.cleanup()
        ExecutionCounter(run).cleanup()  # the handlers' state keys (bench:<run>:state:*)
    return results


def main() -> int:
    p = parser(__doc__.splitlines()[0], events=100, reps=1)
    p.add_argument(
        "--pool",
        choices=("prefork", "threads", "both"),
        default="both",
        help="prefork --concurrency=2, threads --concurrency=4",
    )
    p.add_argument(
        "--launcher",
        choices=("cli", "direct", "both"),
        default="both",
        help="cli: `celery -A APP worker`; direct: bench.direct_worker, the same "
        "worker without the celery CLI's plugin imports",
    )
    args = p.parse_args()
    install_signal_handlers()
    pools = ["prefork", "threads"] if args.pool == "both" else [args.pool]
    launchers = ["cli", "direct"] if args.launcher == "both" else [args.launcher]
    print_header(
        f"worker RSS: {args.events} x 5 messages of load, {args.reps} rep(s) per "
        f"worker, launchers {', '.join(launchers)}, pools {', '.join(pools)}"
    )
    results: list[dict[str, Any]] = []
    for broker in brokers(args.broker):
        why = broker_available(BROKER_URLS[broker])
        if why:
            print(f"{broker}: SKIPPED, broker unavailable ({why})", flush=True)
            continue
        results += bench_broker(broker, launchers, pools, args.events, args.reps)

    rows, ratios = [], []
    for broker in brokers(args.broker):
        for launcher, pool in [(lch, pl) for lch in launchers for pl in pools]:
            setting = setting_of(launcher, pool)
            peak = {
                k: median(
                    [
                        r["peak_rss"]
                        for r in results
                        if r["broker"] == broker and r["setting"] == setting and r["contender"] == k
                    ]
                    or [0]
                )
                for k in KINDS
            }
            pss = {
                k: median(
                    [
                        r["pss"]
                        for r in results
                        if r["broker"] == broker and r["setting"] == setting and r["contender"] == k
                    ]
                    or [0]
                )
                for k in KINDS
            }
            if not peak["raw"]:
                continue
            rr = ratio(peak["handlers"], peak["raw"])
            rows.append(
                [
                    broker,
                    setting,
                    f"{mib(peak['handlers']):.1f}",
                    f"{mib(peak['raw']):.1f}",
                    f"{fmt_ratio(rr)} {verdict(rr, TARGET, at_most=True)}",
                    f"{mib(pss['handlers']):.1f} / {mib(pss['raw']):.1f}",
                    fmt_ratio(ratio(pss["handlers"], pss["raw"])),
                ]
            )
            ratios.append(
                {
                    "bench": "rss",
                    "broker": broker,
                    "setting": setting,
                    "ratio": "handlers/raw peak RSS",
                    "value": rr,
                    "target": f"<= {TARGET}",
                    "ok": verdict(rr, TARGET, at_most=True),
                    "handlers_mib": mib(peak["handlers"]),
                    "raw_mib": mib(peak["raw"]),
                }
            )
    print()
    print(f"worker peak RSS, MiB, sum over the process tree (median of {args.reps})")
    if "cli" in launchers:
        print(
            "note: the `celery` command imports every celery.commands entry point, here "
            "eventbus's and flower's, so under 'celery CLI' the raw worker loads eventbus "
            "too; 'no CLI plugins' (bench/direct_worker.py) is the clean baseline."
        )
    print(
        table(
            [
                "broker",
                "worker",
                "handlers (eventbus)",
                "raw",
                f"ratio (<= {TARGET})",
                "PSS handlers / raw",
                "PSS ratio",
            ],
            rows,
        ),
        flush=True,
    )
    write_json(args.json, results + ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
