"""Drain: handler runs per second of a fresh worker on a pre-filled queue.

Per (broker, pool) and repetition, for each contender in turn (the order
rotates every repetition): N events (400) x 5 handlers are published to the
contender's queue while no worker consumes it, then a fresh worker is started
on that queue alone and stopped once it has run all N x 5. The clock runs from
the first handler execution (noted by the handler itself, wall clock:
``bench.counting``) to the moment the execution counter reaches N x 5 (polled
every 2 ms), so the worker's start-up is left out and nothing else runs
meanwhile: this is the worker's own throughput, which the concurrent end-to-end
measure (``bench_e2e.py``) mostly hides behind the publisher's.

Contenders (``bench/contenders.py``): eventbus, raw (celeryconfig's
guarantees), raw-defaults (Celery's defaults), celery-pubsub, and dramatiq as a
reference (its ``dramatiq`` command, 2 processes x 8 threads, whatever the
Celery pool). Celery workers: ``--pool=prefork --concurrency=2`` and
``--pool=threads --concurrency=4``, no gossip, mingle or heartbeat.

``--contenders`` picks and orders them (default: the five above). Besides,
raw-defaults' variants add one guarantee at a time to Celery's defaults,
without eventbus (``bench.defaults_app.VARIANTS``): raw-late-acks (acks_late,
reject_on_worker_lost), raw-events (the worker's task events, ``-E``) and
raw-late-acks-events (both). What each guarantee costs in Celery itself:

    python bench/bench_drain.py --broker rabbitmq --pool prefork \
        --contenders eventbus,raw-defaults,raw-late-acks,raw-events,raw-late-acks-events,raw

and eventbus-no-task-events is eventbus with its worker's task events off
(Flower sees no handler run): what those events cost eventbus's worker.

Medians of the reps; ratios are ratios of medians, with the min-max of the
paired ratios (rep i against rep i) in brackets.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import apps
from bench.common import (
    BROKER_URLS,
    POOLS,
    ExecutionCounter,
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
    write_json,
)
from bench.contenders import KNOWN, Contenders, choose, dramatiq_available

WARMUP_EVENTS = 10
#: eventbus against each of these, in the table's order.
AGAINST = ["raw-defaults", "raw", "celery-pubsub", "dramatiq"]
TARGETS = {"raw-defaults": 1.0, "celery-pubsub": 1.2, "dramatiq": 0.75}
#: Every contender against this one in the second table (what a guarantee costs).
BASE = "raw-defaults"


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live descendants (the pool's)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return total
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def cpu_per_run(cpu: tuple[float, float], runs: tuple[int, int]) -> float | None:
    """Milliseconds of the worker's CPU per handler run between two samples of
    (CPU seconds, runs counted); None when no run fell between them."""
    done = runs[1] - runs[0]
    return 1000 * (cpu[1] - cpu[0]) / done if done > 0 else None


def drain_once(
    c: Contenders,
    counter: ExecutionCounter,
    contender: str,
    pool: str,
    n: int,
    key: str,
    tag: str,
    *,
    show: bool = False,
) -> tuple[float, float, float | None]:
    """(handler runs per second, seconds from the worker's spawn to its first run,
    the worker's CPU ms per handler run while it drained).

    The CPU is the worker's process tree's (main process and pool), sampled
    once the first handler ran and again when the last did: less sensitive to
    a neighbour's load than the wall clock (waiting for a core is not counted).
    """
    events = apps.make_events(n, key)
    payloads = apps.wire_payloads(events)
    c.publish(contender, events, payloads)  # no worker consumes the queue yet
    target = n * apps.FANOUT
    timeout = 60 + target / 50
    worker = c.worker([contender], pool, POOLS[pool], f"{c.run}-{pool}-{contender}-{tag}")
    if show:
        print(f"{c.broker} {pool}: {contender}: $ {' '.join(worker.argv[1:])}", flush=True)
    gc.collect()
    spawned = time.time()
    with worker:
        assert worker.proc is not None
        deadline = time.monotonic() + timeout
        while counter.first(key) is None and time.monotonic() < deadline:
            time.sleep(0.002)
        cpu0, runs0 = tree_cpu(worker.proc.pid), counter.get(key)
        end = counter.wait(key, target, timeout, poll=0.002, clock=time.time)
        cpu1, runs1 = tree_cpu(worker.proc.pid), counter.get(key)
    first = counter.first(key)
    extra = counter.get(key) - target
    if extra:
        print(f"  {contender}: {extra} duplicate execution(s)", flush=True)
    assert first is not None
    return target / (end - first), first - spawned, cpu_per_run((cpu0, cpu1), (runs0, runs1))


def bench_broker(
    broker: str, pools: list[str], n: int, reps: int, *, names: list[str]
) -> list[dict[str, Any]]:
    url = BROKER_URLS[broker]
    run = new_run_id("drain")
    janitor = Janitor(broker, url)
    counter = ExecutionCounter(run)
    c = Contenders.build(broker, url, run, with_dramatiq="dramatiq" in names, names=names)
    c.track(janitor)
    results: list[dict[str, Any]] = []
    try:
        for contender in c.names:
            print(f"{broker}: {contender}: {c.describe(contender)}", flush=True)
            # Declares the queues, opens the publishers' connections, pays first calls.
            key = counter.key("warm", contender)
            drain_once(c, counter, contender, pools[0], WARMUP_EVENTS, key, "warm")
        for pool in pools:
            setting = f"{pool} c={POOLS[pool]}"
            rates: dict[str, list[float]] = {name: [] for name in c.names}
            startup: dict[str, list[float]] = {name: [] for name in c.names}
            cpu: dict[str, list[float]] = {name: [] for name in c.names}
            for rep in range(reps):
                for contender in rotate(c.names, rep):
                    key = counter.key(pool, contender, f"r{rep}")
                    rate, took, ms = drain_once(
                        c, counter, contender, pool, n, key, f"r{rep}", show=rep == 0
                    )
                    rates[contender].append(rate)
                    startup[contender].append(took)
                    cpu[contender].append(ms or 0.0)  # (0: none measured, left out)
                print(
                    f"{broker} {setting} rep {rep + 1}/{reps}: "
                    + ", ".join(f"{name} {fmt_num(rates[name][-1])}" for name in c.names),
                    flush=True,
                )
            for contender in c.names:
                results.append(
                    {
                        "bench": "drain",
                        "broker": broker,
                        "setting": setting,
                        "contender": contender,
                        "unit": "handler runs/s",
                        "median": median(rates[contender]),
                        "runs": rates[contender],
                        "startup_median_s": median(startup[contender]),
                        "cpu_ms_per_run": cpu[contender],
                        "cpu_ms_per_run_median": median([v for v in cpu[contender] if v] or [0]),
                    }
                )
    finally:
        c.close()
        counter.cleanup()
        janitor.cleanup()
    return results


Paired = tuple[float, float, float] | None


def against_base(
    by: dict[str, dict[str, Any]], base: str = BASE, field: str = "runs"
) -> list[tuple[str, float, Paired]]:
    """(contender, median, its ratio to ``base`` [paired min-max]) for every contender
    of one (broker, setting) but ``base``, in ``by``'s order; empty without ``base``.

    ``field``: the reps' figures (``runs``: runs/s; ``cpu_ms_per_run``)."""
    if base not in by or field not in by[base]:
        return []
    runs = by[base][field]
    return [
        (name, median([v for v in r[field] if v] or [0]), paired(r[field], runs))
        for name, r in by.items()
        if name != base and field in r
    ]


def fmt_ms(value: float | None) -> str:
    return "n/a" if not value else f"{value:.3f}"


def fmt_change(value: tuple[float, float, float] | None) -> str:
    """A ratio of medians as a change in runs/s: ``-14%`` for 0.86."""
    return "n/a" if value is None else f"{(value[0] - 1) * 100:+.0f}%"


def report_against_base(
    results: list[dict[str, Any]], n: int, reps: int, base: str = BASE
) -> list[dict[str, Any]]:
    """Print every contender against ``base``; return those ratios' JSON records
    (eventbus/raw-defaults left out: :func:`report` has it)."""
    rows, ratios = [], []
    for (broker, setting), by in by_setting(results).items():
        if base not in by:
            continue
        cpu = {name: (mid, value) for name, mid, value in against_base(by, base, "cpu_ms_per_run")}
        base_cpu = median([v for v in by[base].get("cpu_ms_per_run", []) if v] or [0])
        head = [broker, setting, base, fmt_num(by[base]["median"]), "(base)", "-"]
        rows.append([*head, fmt_ms(base_cpu), "(base)"])
        for name, mid, value in against_base(by, base):
            cpu_mid, cpu_value = cpu.get(name, (None, None))
            head = [broker, setting, name, fmt_num(mid), fmt_paired(value), fmt_change(value)]
            rows.append([*head, fmt_ms(cpu_mid), fmt_paired(cpu_value)])
            if name != "eventbus":
                ratios.append(paired_result("drain", broker, setting, f"{name}/{base}", value))
    if rows:
        print()
        print(
            f"drain against {base}, handler runs/s, median of {reps} interleaved reps "
            f"({n} events x 5); X/{base} = ratio of medians [paired min-max]; CPU: the "
            "worker's (main + pool processes) per handler run, first to last run"
        )
        headers = ["broker", "worker", "contender", "runs/s", f"X/{base}", "runs/s change"]
        headers += ["CPU ms/run", f"CPU X/{base}"]
        print(table(headers, rows), flush=True)
    return ratios


def by_setting(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """The contenders' records per (broker, setting), in the results' order."""
    out: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in results:
        if "contender" in r:
            out.setdefault((r["broker"], r["setting"]), {})[r["contender"]] = r
    return out


def report(results: list[dict[str, Any]], n: int, reps: int) -> list[dict[str, Any]]:
    """Print the table of eventbus against the others; return the ratios' JSON records."""
    rows, ratios = [], []
    for (broker, setting), by in by_setting(results).items():
        if "eventbus" not in by:
            continue
        eb = by["eventbus"]["runs"]
        row = [broker, setting]
        row += [
            fmt_num(by[name]["median"]) if name in by else "n/a" for name in ["eventbus", *AGAINST]
        ]
        for name in AGAINST:
            value = paired(eb, by[name]["runs"]) if name in by else None
            row.append(fmt_paired(value))
            ratios.append(
                paired_result(
                    "drain", broker, setting, f"eventbus/{name}", value, TARGETS.get(name)
                )
            )
        rows.append(row)
    if not rows:
        return ratios
    print()
    print(
        f"drain, handler runs/s ({n} events x 5 handlers pre-filled, fresh worker, first to last "
        f"run), median of {reps} interleaved reps; eventbus/X = ratio of medians [paired min-max]"
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
                "eb/raw",
                "eb/pubsub (>=1.2)",
                "eb/dramatiq (>=0.75)",
            ],
            rows,
        ),
        flush=True,
    )
    return ratios


def main() -> int:
    p = parser(__doc__.splitlines()[0], events=400, reps=5)
    p.add_argument(
        "--pool",
        choices=("prefork", "threads", "both"),
        default="both",
        help="prefork --concurrency=2, threads --concurrency=4 (dramatiq: 2 x 8 either way)",
    )
    p.add_argument("--no-dramatiq", action="store_true", help="leave dramatiq out")
    p.add_argument(
        "--contenders",
        metavar="A,B,...",
        help=f"which contenders, in this order (default: {','.join(choose(None))}); "
        f"known: {','.join(KNOWN)}",
    )
    args = p.parse_args()
    install_signal_handlers()
    pools = ["prefork", "threads"] if args.pool == "both" else [args.pool]
    try:
        names = choose(args.contenders, with_dramatiq=not args.no_dramatiq)
    except ValueError as exc:
        p.error(str(exc))
    if "dramatiq" in names and (why := dramatiq_available()):
        print(f"dramatiq: SKIPPED, not installed ({why}): pip install 'dramatiq[redis,rabbitmq]'")
        names.remove("dramatiq")
    print_header(
        f"drain: {args.events} events x 5 no-op handlers pre-filled, fresh worker, "
        f"{args.reps} interleaved reps, pools {', '.join(pools)}, contenders {', '.join(names)}"
    )
    results: list[dict[str, Any]] = []
    for broker in brokers(args.broker):
        why = broker_available(BROKER_URLS[broker])
        if why:
            print(f"{broker}: SKIPPED, broker unavailable ({why})", flush=True)
            continue
        results += bench_broker(broker, pools, args.events, args.reps, names=names)
    ratios = report(results, args.events, args.reps)
    ratios += report_against_base(results, args.events, args.reps)
    write_json(args.json, results + ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
