"""Worker peak RSS: ``celery -A handlers worker`` vs raw Celery validating the same payloads.

Three workers run with the same ``celeryconfig`` settings and pool flags:

``handlers``  the example handlers (``handlers/``: eventbus, 5 handlers on 3 pydantic events);
``pydantic``  the baseline (``bench.raw_pydantic_app``): 5 raw Celery tasks doing the
              handlers' work, each validating the envelope's ``data`` into the same
              pydantic model (``bench.raw_models``, checked equal to
              ``handlers/events.py`` by ``bench/test_raw_models.py``); no eventbus;
``plain``     the old baseline, for reference (``bench.raw_app``): the same 5 tasks
              without pydantic (``--no-plain`` leaves it out).

The target is handlers/pydantic <= 1.1. Each worker is measured twice: started
with the ``celery`` command (which itself imports every installed
``celery.commands`` plugin, eventbus's included, so the raw workers carry
eventbus and pydantic too) and with ``bench.direct_worker`` (the same
``app.Worker(...).start()`` without the CLI: the clean baseline). The RSS
summed over the worker's process tree (main process + pool children, psutil)
is sampled every 20 ms from spawn to shutdown (a process seen in fewer than 3
samples is left out: the ``uname -p`` every worker's banner runs is, until its
exec, a fork that counts the worker's pages twice) while the worker starts, then
handles a load: per event, the 5 messages the example bus would send for a
user.registered, a todo.created and a todo.completed event (envelope wire
dicts) — without ``notify_assignee``, whose demo gateway fails twice per event
and retries with 1 s and 2 s backoff (left out on all sides). Completion is
seen through the workers' own task events (task-succeeded of every load
message). PSS (shared pages counted once) at the end of the load is printed
for reference.

What eventbus adds, in MiB: every process of a direct worker writes the
modules it loaded and its RSS at shutdown (``bench.direct_worker``,
``BENCH_MODULES_DIR``). The modules the handlers' worker loaded and the
pydantic baseline's did not are weighed one by one in a fresh process that
first loads the baseline's (``bench.import_memory``: RSS, then Python
allocations with tracemalloc), and printed by group (eventbus's modules, the
example app's, the libraries only eventbus loads) with the heaviest modules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BROKER_URLS,
    COUNTER_URL,
    POOLS,
    PYTHON,
    REPO,
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

KINDS = ["plain", "pydantic", "handlers"]
APP_SPEC = {
    "plain": "bench.raw_app:app",
    "pydantic": "bench.raw_pydantic_app:app",
    "handlers": "handlers",
}
#: The module each worker's app spec imports first.
APP_MODULE = {kind: spec.split(":")[0] for kind, spec in APP_SPEC.items()}
TASK_PREFIX = {
    "plain": {"user": "bench.raw_app", "todo": "bench.raw_app"},
    "pydantic": {"user": "bench.raw_pydantic_app", "todo": "bench.raw_pydantic_app"},
    "handlers": {"user": "handlers.user", "todo": "handlers.todo"},
}
TARGET = 1.1
BASELINE = "pydantic"  # the target's denominator
HEAVIEST = 10  # modules listed per group in the import report
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


def worker_env(url: str, run: str, queue: str) -> dict[str, str]:
    dlq = f"bench.{run}.dlq"
    return {
        "BENCH_BROKER_URL": url,
        "BENCH_QUEUE": queue,  # bench.raw_app, bench.raw_pydantic_app
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
    modules_dir: str | None,
) -> dict[str, Any]:
    queue = f"bench.{run}.rss-{kind}-{launcher}-{pool}-{rep}"
    janitor.track(queue, f"bench.{run}.dlq")
    env = worker_env(url, run, queue)
    if modules_dir is not None:
        env["BENCH_MODULES_DIR"] = modules_dir  # bench.direct_worker writes its modules there
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
        peak_procs, transient = worker.sampler.peak_procs, worker.sampler.transient
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
        "peak_procs": peak_procs,
        "transient": transient,
        "samples": samples,
        "ready_s": ready,
        "load_s": handled,
        "messages": len(ids),
    }


# -- what eventbus adds: the modules only its worker loads, weighed ---------------


def read_dumps(directory: str) -> list[dict[str, Any]]:
    """The records bench.direct_worker's processes wrote (main first)."""
    records = [json.loads(f.read_text()) for f in sorted(Path(directory).glob("*.json"))]
    return sorted(records, key=lambda r: r["role"] != "main")


def loaded_modules(dumps: list[list[dict[str, Any]]]) -> list[str]:
    """Every module any process of these workers had loaded, in first-seen order."""
    seen: dict[str, None] = {}
    for records in dumps:
        for record in records:
            seen.update(dict.fromkeys(record["modules"]))
    return list(seen)


def weigh_imports(
    url: str, run: str, base: list[str], extra: list[str], tmp: str
) -> dict[str, dict[str, Any]]:
    """bench.import_memory's two runs (RSS; tracemalloc) over ``base`` then ``extra``."""
    base_file, extra_file = Path(tmp, "base.json"), Path(tmp, "extra.json")
    base_file.write_text(json.dumps(base))
    extra_file.write_text(json.dumps(extra))
    env = {**os.environ, **worker_env(url, run, f"bench.{run}.import-memory")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    runs = {}
    for weight, flags in (("rss", []), ("py", ["--tracemalloc"])):
        out = subprocess.run(
            [
                PYTHON,
                "-m",
                "bench.import_memory",
                "--base",
                str(base_file),
                "--extra",
                str(extra_file),
                *flags,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        runs[weight] = json.loads(out.stdout)
    return runs


def group_of(module: str) -> str:
    top = module.split(".")[0]
    if top in ("eventbus", "handlers"):
        return top
    if top in sys.stdlib_module_names:
        return "stdlib"
    return top


def import_report(
    broker: str, runs: dict[str, dict[str, Any]], procs: dict[str, list[dict[str, Any]]]
) -> tuple[list[str], dict[str, Any]]:
    """Lines to print and a JSON record: what the modules only eventbus loads weigh."""
    rss_run, py_run = runs["rss"], runs["py"]
    py_of = {r["module"]: r for r in py_run["modules"]}
    extra = [r for r in rss_run["modules"] if r["phase"] == "extra"]
    importer = {r["module"]: r["importer"] for r in extra}

    def owner(module: str) -> str:
        """The nearest eventbus or example-app module in the import chain of ``module``."""
        seen = module
        while seen and group_of(seen) not in ("eventbus", "handlers"):
            seen = importer.get(seen, "")
        return seen or "(worker start/run)"

    groups: dict[str, dict[str, float]] = defaultdict(lambda: {"rss": 0, "py": 0, "n": 0})
    for r in extra:
        g = groups[group_of(r["module"])]
        g["rss"] += r["rss"]
        g["py"] += py_of.get(r["module"], {}).get("py", 0)
        g["n"] += 1
    total_rss = rss_run["rss_after"] - rss_run["rss_base"]
    total_py = py_run["py_after"] - py_run["py_base"]
    raw_models = next(
        (r for r in py_run["modules"] if r["module"] == "bench.raw_models"), {"py": 0}
    )
    raw_models_rss = next(
        (r for r in rss_run["modules"] if r["module"] == "bench.raw_models"), {"rss": 0}
    )
    lines = [
        f"{broker}: modules the handlers' worker loads and the pydantic baseline's does not: "
        f"{len(extra)}, weighing {mib(total_rss):.2f} MiB RSS, {mib(total_py):.2f} MiB of "
        "Python allocations, in one process (bench.import_memory, after the baseline's modules)",
    ]
    for name, g in sorted(groups.items(), key=lambda kv: -kv[1]["rss"]):
        lines.append(
            f"  {name:12s} {int(g['n']):3d} modules  {mib(g['rss']):5.2f} MiB RSS  "
            f"{mib(g['py']):5.2f} MiB Python"
        )
    lines.append(
        f"  (the example app's 3 event models are in 'handlers'; the baseline's equal "
        f"models, bench.raw_models, weigh {mib(raw_models_rss['rss']):.2f} MiB RSS, "
        f"{mib(raw_models['py']):.2f} MiB Python)"
    )

    def py(r: dict[str, Any]) -> int:
        return int(py_of.get(r["module"], {}).get("py", 0))

    ours = [r for r in extra if group_of(r["module"]) in ("eventbus", "handlers")]
    theirs = [r for r in extra if group_of(r["module"]) not in ("eventbus", "handlers")]
    for title, rows in (
        ("eventbus's and the example app's modules", ours),
        ("other modules only they load ([the eventbus or app module that loads them])", theirs),
    ):
        if not rows:
            continue
        lines.append(f"  heaviest of {title}; own weight, without what they import:")
        for r in sorted(rows, key=lambda r: -py(r))[:HEAVIEST]:
            via = "" if rows is ours else f" [{owner(r['module'])}]"
            lines.append(
                f"    {r['module']:36s} {r['rss'] / 1024:6.0f} KiB RSS {py(r) / 1024:6.0f} KiB "
                f"Python  <- {r['importer'] or '(worker start/run)'}{via}"
            )
    for kind, records in procs.items():
        lines.append(
            f"  RSS at shutdown, {kind}: "
            + "; ".join(
                f"{pool} " + " + ".join(f"{mib(r['rss']):.1f}" for r in recs) + " MiB"
                for pool, recs in records_by_pool(records).items()
            )
        )
    record = {
        "bench": "rss-imports",
        "broker": broker,
        "modules": len(extra),
        "rss_mib": mib(total_rss),
        "py_mib": mib(total_py),
        "groups": {
            k: {"modules": int(v["n"]), "rss_mib": mib(v["rss"]), "py_mib": mib(v["py"])}
            for k, v in groups.items()
        },
        "raw_models_rss_mib": mib(raw_models_rss["rss"]),
        "raw_models_py_mib": mib(raw_models["py"]),
        "failed": runs["rss"]["failed_base"] + runs["rss"]["failed_extra"],
        "weighed": [
            {
                "module": r["module"],
                "importer": r["importer"],
                "rss_kib": r["rss"] / 1024,
                "py_kib": py(r) / 1024,
            }
            for r in extra
        ],
    }
    return lines, record


def records_by_pool(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_pool: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_pool[r["pool"]].append(r)
    return by_pool


def bench_broker(
    broker: str, launchers: list[str], pools: list[str], kinds: list[str], n: int, reps: int
) -> tuple[list[dict[str, Any]], list[str]]:
    url = BROKER_URLS[broker]
    run = new_run_id("rss")
    janitor = Janitor(broker, url)
    load_app = make_app(f"bench-rss-load-{run}", url)
    results = []
    stopping: list[tuple[Worker, TaskEventCounter]] = []
    tmp = tempfile.mkdtemp(prefix="bench-rss-")
    modules_dirs: dict[str, list[tuple[str, str]]] = defaultdict(list)  # kind: (pool, dir)
    report: list[str] = []
    try:
        for launcher, pool in [(lch, pl) for lch in launchers for pl in pools]:
            for rep in range(reps):
                for kind in rotate(kinds, rep):
                    modules_dir = None
                    if launcher == "direct":
                        modules_dir = tempfile.mkdtemp(prefix=f"{kind}-{pool}-", dir=tmp)
                        modules_dirs[kind].append((pool, modules_dir))
                    r = measure(
                        kind,
                        broker,
                        url,
                        run,
                        launcher,
                        pool,
                        rep,
                        n,
                        janitor,
                        load_app,
                        stopping,
                        modules_dir,
                    )
                    print(
                        f"{broker} {r['setting']} {kind:8s}: peak RSS {mib(r['peak_rss']):6.1f} "
                        f"MiB over {r['peak_procs']} processes ({r['samples']} samples, "
                        f"{r['transient']} transient left out), "
                        f"PSS {mib(r['pss']):6.1f} MiB; ready {r['ready_s']:.1f}s, "
                        f"{r['messages']} messages in {r['load_s']:.1f}s",
                        flush=True,
                    )
                    results.append(r)
        for worker, events in stopping:  # reaped: the direct workers' dumps are written
            worker.stop()
            events.stop()
        stopping.clear()
        if modules_dirs.get("handlers") and modules_dirs.get(BASELINE):
            dumps = {
                kind: [
                    [{**r, "pool": pool} for r in read_dumps(d)] for pool, d in modules_dirs[kind]
                ]
                for kind in ("handlers", BASELINE)
            }
            base = [APP_MODULE[BASELINE], *loaded_modules(dumps[BASELINE])]
            base_set = set(base)
            extra = [APP_MODULE["handlers"]] + [
                m for m in loaded_modules(dumps["handlers"]) if m not in base_set
            ]
            runs = weigh_imports(url, run, base, extra, tmp)
            procs = {kind: [r for recs in dumps[kind] for r in recs] for kind in dumps}
            report, record = import_report(broker, runs, procs)
            results.append(record)
    finally:
        for worker, events in stopping:
            worker.stop()
            events.stop()
        load_app.pool.force_close_all()
        janitor.cleanup()
        ExecutionCounter(run).cleanup()  # the handlers' state keys (bench:<run>:state:*)
        shutil.rmtree(tmp, ignore_errors=True)
    return results, report


def peak_of(results: list[dict[str, Any]], broker: str, setting: str, kind: str, key: str) -> float:
    return median(
        [
            r[key]
            for r in results
            if r.get("bench") == "rss"
            and r["broker"] == broker
            and r["setting"] == setting
            and r["contender"] == kind
        ]
        or [0]
    )


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
        "worker without the celery CLI's plugin imports (and the only one whose "
        "modules are weighed)",
    )
    p.add_argument(
        "--no-plain",
        action="store_true",
        help="leave out the old baseline (bench.raw_app: no pydantic), shown for reference",
    )
    args = p.parse_args()
    install_signal_handlers()
    pools = ["prefork", "threads"] if args.pool == "both" else [args.pool]
    launchers = ["cli", "direct"] if args.launcher == "both" else [args.launcher]
    kinds = [k for k in KINDS if not (args.no_plain and k == "plain")]
    print_header(
        f"worker RSS: {args.events} x 5 messages of load, {args.reps} rep(s) per "
        f"worker, workers {', '.join(kinds)}, launchers {', '.join(launchers)}, "
        f"pools {', '.join(pools)}"
    )
    results: list[dict[str, Any]] = []
    reports: list[str] = []
    for broker in brokers(args.broker):
        why = broker_available(BROKER_URLS[broker])
        if why:
            print(f"{broker}: SKIPPED, broker unavailable ({why})", flush=True)
            continue
        found, report = bench_broker(broker, launchers, pools, kinds, args.events, args.reps)
        results += found
        reports += report

    rows, ratios = [], []
    for broker in brokers(args.broker):
        for launcher, pool in [(lch, pl) for lch in launchers for pl in pools]:
            setting = setting_of(launcher, pool)
            peak = {k: peak_of(results, broker, setting, k, "peak_rss") for k in kinds}
            pss = {k: peak_of(results, broker, setting, k, "pss") for k in kinds}
            if not peak[BASELINE]:
                continue
            rr = ratio(peak["handlers"], peak[BASELINE])
            plain = (
                [
                    f"{mib(peak['plain']):.1f}",
                    fmt_ratio(ratio(peak["handlers"], peak["plain"])),
                ]
                if "plain" in kinds
                else []
            )
            rows.append(
                [
                    broker,
                    setting,
                    f"{mib(peak['handlers']):.1f}",
                    f"{mib(peak[BASELINE]):.1f}",
                    f"{fmt_ratio(rr)} {verdict(rr, TARGET, at_most=True)}",
                    f"{mib(peak['handlers'] - peak[BASELINE]):+.1f}",
                    *plain,
                    f"{mib(pss['handlers']):.1f} / {mib(pss[BASELINE]):.1f}",
                    fmt_ratio(ratio(pss["handlers"], pss[BASELINE])),
                ]
            )
            ratios.append(
                {
                    "bench": "rss",
                    "broker": broker,
                    "setting": setting,
                    "ratio": "handlers/raw+pydantic peak RSS",
                    "value": rr,
                    "target": f"<= {TARGET}",
                    "ok": verdict(rr, TARGET, at_most=True),
                    "handlers_mib": mib(peak["handlers"]),
                    "raw_mib": mib(peak[BASELINE]),
                    "plain_mib": mib(peak["plain"]) if "plain" in kinds else None,
                }
            )
    print()
    print(f"worker peak RSS, MiB, sum over the process tree (median of {args.reps})")
    if "cli" in launchers:
        print(
            "note: the `celery` command imports every celery.commands entry point, here "
            "eventbus's (eventbus.errors, so pydantic) and flower's (tornado, "
            "prometheus_client, redis-py...), in every worker, raw ones included; "
            "'no CLI plugins' (bench/direct_worker.py) is the clean baseline."
        )
    headers = [
        "broker",
        "worker",
        "handlers (eventbus)",
        "raw + pydantic",
        f"ratio (<= {TARGET})",
        "difference",
    ]
    if "plain" in kinds:
        headers += ["plain raw (ref.)", "handlers/plain"]
    headers += ["PSS handlers / raw + pydantic", "PSS ratio"]
    print(table(headers, rows), flush=True)
    if reports:
        print()
        print("\n".join(reports), flush=True)
    elif "direct" not in launchers:
        print("(modules not weighed: only the direct launcher's workers report them)")
    write_json(args.json, results + ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
