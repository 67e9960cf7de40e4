"""Run the benchmarks (publish, e2e, worker RSS, guarantees; drain, DLQ, broker cost on request).

Each benchmark runs as its own subprocess (``bench/bench_*.py``, whose exact
command is printed) and hands its figures back as JSON. ``--broker``,
``--events`` and ``--reps``, when given, are passed to every benchmark;
otherwise each uses its own defaults (sized so the whole suite takes a few
minutes on 2 cores). The DLQ benchmark (100,000 dead letters per broker, 7-8
minutes on 2 cores) and the broker's cost per event (servers of its own, ~8
minutes) are not in the default set, nor is the drain measure (a fresh worker
per contender and rep, ~3 minutes per broker and pool): run them with
``--only dlq`` / ``--only cost`` / ``--only drain``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PYTHON,
    REPO,
    command_line,
    fmt_num,
    fmt_ratio,
    install_signal_handlers,
    table,
)

BENCHMARKS = {
    "publish": "bench/bench_publish.py",
    "e2e": "bench/bench_e2e.py",
    "drain": "bench/bench_drain.py",
    "rss": "bench/bench_rss.py",
    "guarantees": "bench/bench_guarantees.py",
    "dlq": "bench/bench_dlq.py",
    "cost": "bench/bench_broker_cost.py",
}
#: What runs without --only: dlq takes 7-8 minutes, cost starts servers of its
#: own (a RabbitMQ node among them) and a worker per run, and drain starts a
#: fresh worker per contender and rep (~3 minutes per broker and pool), so they
#: are opt-in.
DEFAULT = ["publish", "e2e", "rss", "guarantees"]
TIMEOUT = 900  # seconds per benchmark; then SIGTERM (the benchmark cleans up)
TIMEOUTS = {"dlq": 3600, "cost": 1800, "drain": 1800}


def run_benchmark(name: str, args: argparse.Namespace, out: Path) -> tuple[int, float]:
    cmd = [PYTHON, BENCHMARKS[name], "--broker", args.broker, "--json", str(out)]
    if args.events:
        cmd += ["--events", str(args.events)]
    if args.reps:
        cmd += ["--reps", str(args.reps)]
    if name == "dlq" and args.records:
        cmd += ["--records", str(args.records)]
    print(f"\n$ cd {REPO} && {shlex.join(cmd)}", flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO)
    try:
        rc = proc.wait(TIMEOUTS.get(name, TIMEOUT))
    except BaseException:
        proc.terminate()  # the benchmark stops its workers and cleans up on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    return rc, time.monotonic() - start


def summary_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    values = {
        (r["bench"], r["broker"], r["setting"], r["contender"]): r
        for r in results
        if "contender" in r
    }
    rows = []
    for r in results:
        if "ratio" not in r or r["bench"] == "dlq":  # dlq has a table of its own
            continue
        key = (r["bench"], r["broker"], r["setting"])
        if r["bench"] == "rss":
            eb = f"{r['handlers_mib']:.1f} MiB"
            raw = f"{r['raw_mib']:.1f} MiB"
            ps = "-"
        elif r["bench"] == "cost":  # the broker's CPU per handled event, median

            def cpu(contender: str, key: tuple[str, str, str] = key) -> str:
                found = values.get((*key, contender))
                return f"{found['median']:,.0f} us" if found else "n/a"

            eb, raw, ps = cpu("eventbus"), cpu("raw"), cpu("celery-pubsub")
        else:  # "A/B": the medians of A and B (never a best-of)

            def med(contender: str, key: tuple[str, str, str] = key) -> str:
                found = values.get((*key, contender))
                return fmt_num(found["median"]) if found else "n/a"

            a, b = r["ratio"].split("/", 1)
            eb, raw, ps = med(a), med(b), "-"
        value = fmt_ratio(r["value"])
        if r.get("paired_min") is not None:
            value += f" [{r['paired_min']:.2f}-{r['paired_max']:.2f}]"
        rows.append(
            [
                r["bench"],
                r["broker"],
                r["setting"],
                eb,
                raw,
                ps,
                r["ratio"],
                value,
                r["target"],
                r["ok"],
            ]
        )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--broker", choices=("redis", "rabbitmq", "both"), default="both")
    p.add_argument("--events", type=int, help="events per run for every benchmark")
    p.add_argument("--reps", type=int, help="repetitions per contender for every benchmark")
    p.add_argument(
        "--only",
        nargs="+",
        choices=sorted(BENCHMARKS),
        default=DEFAULT,
        help=f"benchmarks to run (default: {' '.join(DEFAULT)}; "
        "drain, dlq and cost only when named)",
    )
    p.add_argument("--records", type=int, help="dead letters per broker for dlq (default 100000)")
    args = p.parse_args()
    install_signal_handlers()
    print(f"command: {command_line()}", flush=True)

    results: list[dict[str, Any]] = []
    timings: list[str] = []
    failed: list[str] = []
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for name in args.only:
            out = Path(tmp) / f"{name}.json"
            rc, took = run_benchmark(name, args, out)
            timings.append(f"{name} {took:.0f}s")
            if rc != 0:
                failed.append(f"{name} (exit {rc})")
            if out.exists():
                results += json.loads(out.read_text())

    print("\n" + "=" * 100)
    rows = summary_rows(results)
    if rows:
        print(
            "SUMMARY (medians; A/B: ratio of medians [paired min-max]; publish, e2e: "
            "events/s, 1 event = 5 handler messages; drain: handler runs/s; "
            "rss: peak MiB; cost: broker CPU per handled event)"
        )
        print(
            table(
                [
                    "bench",
                    "broker",
                    "setting",
                    "A (eventbus)",
                    "B (raw)",
                    "celery-pubsub",
                    "ratio",
                    "value",
                    "target",
                    "result",
                ],
                rows,
            )
        )
    dlq = [r for r in results if r.get("bench") == "dlq"]
    if dlq:
        from bench.bench_dlq import dlq_table

        print(f"\nDLQ ({dlq[0]['records']:,} dead letters per broker; list/stats: time / peak RSS)")
        print(dlq_table(dlq))
    print(f"\ntook {time.monotonic() - start:.0f}s ({', '.join(timings)})")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
