"""Where a busy worker's time goes: py-spy over a worker draining no-op handlers.

The queue of one contender (``bench/contenders.py``: eventbus by default) is
pre-filled with N events x 5 handlers, a fresh worker is started on it, and
once its first handler ran, ``py-spy record`` samples the worker and its pool
processes (``--subprocesses``, ``--rate`` 100 Hz, idle threads left out,
frames aggregated by function) for ``--duration`` seconds while it drains. The
samples are summarized per process role (the worker's main process, which
receives and acks; the pool's processes, which run the tasks) as the top
frames by own time (the frame on CPU) and by total time (the frame anywhere on
the stack), in percent of that role's samples, and written to
``bench/profiles/<contender>-<broker>-<pool>.txt`` (with the command and the
handler runs per second during the profile; sampling slows the worker).

``--gil`` samples only the thread that holds the GIL (py-spy's ``--gil``): a
threads worker's Python CPU, which bounds its throughput, without the time its
threads wait on sockets (which plain sampling counts as busy). The samples
are then GIL-held time.

    python bench/profile_worker.py --broker rabbitmq --pool prefork
    python bench/profile_worker.py --broker rabbitmq --pool prefork --contender raw-defaults
    python bench/profile_worker.py --broker rabbitmq --pool prefork --contender raw-late-acks
    python bench/profile_worker.py --broker rabbitmq --pool threads --gil --rate 250 \
        --duration 25 --events 12000
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import apps
from bench.common import (
    BROKER_URLS,
    POOLS,
    REPO,
    ExecutionCounter,
    Janitor,
    command_line,
    install_signal_handlers,
    new_run_id,
)
from bench.contenders import KNOWN, Contenders

PROFILES = REPO / "bench" / "profiles"
TOP = 30
#: A frame on every stack of a pool's process or thread (the rest is the main
#: process's or thread's: receiving, acking, task events, dispatching to the pool).
POOL_FRAMES = ("Worker.workloop (billiard/pool.py", "_worker (concurrent/futures/thread.py")
#: Frames on at least this share of a role's stacks (the launcher, the loop) are
#: left out of the total-time list: they say nothing.
EVERYWHERE = 0.97


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def summarize(raw: Path, rate: int = 100) -> tuple[str, dict[str, int]]:
    """Top frames by own and total samples, per process role, from py-spy's raw output."""
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    total: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    samples: collections.Counter[str] = collections.Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        # (a forked pool process's stack starts with its parent's frames up to
        # the fork, so the role is read from the frames, not from the pid)
        pool = any(f.startswith(POOL_FRAMES) for f in frames)
        role = "pool (runs the tasks)" if pool else "main (receives, acks, dispatches)"
        if not frames:
            continue
        count = int(n)
        samples[role] += count
        own[role][frames[-1]] += count
        for frame in set(frames):
            total[role][frame] += count
    out = []
    for role in sorted(samples):
        n = samples[role]
        out.append(
            f"== {role}: {n} samples (at {rate} Hz: {n / rate:.1f} s of non-idle thread time)"
        )
        for title, counter in (("own", own[role]), ("total", total[role])):
            note = f", frames on >= {EVERYWHERE:.0%} of stacks left out" if title == "total" else ""
            out.append(f"-- top {TOP} by {title} time (% of the role's samples{note})")
            ranked = [
                (f, c) for f, c in counter.most_common() if c < EVERYWHERE * n or title == "own"
            ]
            for frame, count in ranked[:TOP]:
                out.append(f"{100 * count / n:6.1f}%  {frame}")
        out.append("")
    return "\n".join(out), dict(samples)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--broker", choices=("redis", "rabbitmq"), default="rabbitmq")
    p.add_argument("--pool", choices=("prefork", "threads"), default="prefork")
    p.add_argument("--contender", choices=KNOWN, default="eventbus")
    p.add_argument("--events", type=int, default=3000, help="pre-filled events (x 5 handlers)")
    p.add_argument("--duration", type=int, default=10, help="seconds of sampling")
    p.add_argument("--output", help="summary file (default bench/profiles/C-B-P.txt)")
    p.add_argument("--rate", type=int, default=100, help="samples a second")
    p.add_argument("--raw", help="also keep py-spy's raw output (collapsed stacks) there")
    p.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread that holds the GIL (py-spy --gil): a threads "
        "worker's Python CPU, which its throughput is bound by, without its I/O waits",
    )
    args = p.parse_args()
    install_signal_handlers()
    spy = py_spy()
    url = BROKER_URLS[args.broker]
    run = new_run_id("prof")
    janitor = Janitor(args.broker, url)
    counter = ExecutionCounter(run)
    c = Contenders.build(
        args.broker,
        url,
        run,
        with_dramatiq=args.contender == "dramatiq",
        names=[args.contender],
    )
    c.track(janitor)
    name = args.contender
    pool, concurrency = args.pool, POOLS[args.pool]
    out = Path(args.output or PROFILES / f"{name}-{args.broker}-{pool}.txt")
    try:
        # Warm-up: declares the queue and its bindings.
        warm = counter.key("warm")
        events = apps.make_events(10, warm)
        c.publish(name, events, apps.wire_payloads(events))
        with c.worker([name], pool, concurrency, f"{run}-warm"):
            counter.wait(warm, 10 * apps.FANOUT, 60)
        key = counter.key("load")
        events = apps.make_events(args.events, key)
        c.publish(name, events, apps.wire_payloads(events))
        worker = c.worker([name], pool, concurrency, f"{run}-{pool}")
        with worker, tempfile.TemporaryDirectory() as tmp:
            assert worker.proc is not None
            deadline = time.monotonic() + 60
            while counter.first(key) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            before, t0 = counter.get(key), time.time()
            raw = Path(tmp) / "raw.txt"
            cmd = [
                spy,
                "record",
                "--pid",
                str(worker.proc.pid),
                "--subprocesses",
                "--function",
                "--format",
                "raw",
                "--rate",
                str(args.rate),
                "--duration",
                str(args.duration),
                "--output",
                str(raw),
                *(["--gil"] if args.gil else []),
            ]
            subprocess.run(cmd, check=True, capture_output=True)
            after, t1 = counter.get(key), time.time()
            summary, _ = summarize(raw, args.rate)
            if args.raw:
                shutil.copy(raw, args.raw)
        done = after - before
        left = args.events * apps.FANOUT - after
        head = [
            f"# py-spy profile: {name} worker ({c.describe(name)}), {args.broker}, "
            f"{pool} c={concurrency}, draining no-op handlers",
            f"# command: {command_line()}",
            f"# py-spy: {' '.join(Path(a).name if a == spy else a for a in cmd)}",
            f"# worker: {' '.join(worker.argv[1:])}",
            f"# during the profile: {done} handler runs in {t1 - t0:.1f}s "
            f"({done / (t1 - t0):,.0f}/s, sampled); {left} still queued at its end"
            + ("  (QUEUE RAN DRY: raise --events)" if left <= 0 else ""),
            "# own: the frame on CPU; total: the frame anywhere on the stack (idle threads out)"
            + ("; --gil: only the thread holding the GIL (GIL-held time)" if args.gil else ""),
            "",
        ]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(head) + summary)
        print("\n".join(head) + summary[:6000])
        print(f"written: {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    finally:
        c.close()
        counter.cleanup()
        janitor.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
