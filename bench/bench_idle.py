"""Idle workers on Redis: what they cost the server, and how soon they start a new event (issue 13).

Three kinds of worker (``bench/idle_app.py``), each a real ``celery worker
--pool solo`` process, against one private ``redis-server`` this benchmark
starts (no persistence, a free port, removed at the end):

* ``eventbus``: an eventbus handler on eventbus's Redis transport, whose idle
  channel waits for Redis's notification (``CLIENT TRACKING``);
* ``eventbus (poll)``: the same with ``eventbus_idle_wake = False``: the idle
  channel runs its take script every 0.05 s (eventbus before issue 13);
* ``raw Celery``: a raw task on kombu's own transport (``BRPOP``, 1 s timeout).

Parts, contenders in rotating order:

1. **idle**: ``--workers`` (50) processes of one kind on one queue, started,
   answering a ping, left idle ``--settle`` s; then Redis's ``INFO
   commandstats`` and ``INFO cpu`` over ``--window`` s: commands a second
   (as commandstats counts them: a Lua script's own calls included; and
   those clients sent), Redis's time in commands and its CPU.
2. **herd**: the same idle workers, ``--herd`` messages published one at a
   time, ``--gap`` s apart: Redis's commands and time per message above the
   idle rate, and how soon a handler started (every idle worker of the queue
   hears of a message; one takes it).
3. **latency**: one idle worker of each kind, each on its own queue;
   ``--samples`` probes per kind, interleaved, each published after a random
   0.05-0.25 s pause (the worker idle, at a random point of its poll): time
   from ``publish`` returning to the handler starting (``time.monotonic()``
   in both processes), p50/p90/p99.

Handlers note their start in another Redis (``BENCH_COUNTER_URL``, db 15 of
the shared one), so the private server's figures are the workers' and the
publisher's alone.

    python bench/bench_idle.py                     # 50 workers, 300 samples (~6-8 min)
    python bench/bench_idle.py --workers 10 --samples 200 --herd 50
    python bench/bench_idle.py --celery-defaults   # workers with heartbeat, gossip, mingle
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    COUNTER_URL,
    WORKER_FLAGS,
    Worker,
    command_line,
    install_signal_handlers,
    new_run_id,
    print_header,
)
from bench.idle_app import KINDS, IdleApp, build

NAMES = {"eventbus": "eventbus", "poll": "eventbus (poll)", "raw": "raw Celery"}
#: Commands only eventbus's take script runs (inside EVALSHA): not sent by a client.
SCRIPT_CALLS = ("lindex", "ltrim")


# -- a private redis-server ---------------------------------------------------------


class PrivateServer:
    """A ``redis-server`` of the benchmark's own: loopback, a free port, nothing persisted."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found: this benchmark starts one of its own")
        self.directory = Path(tempfile.mkdtemp(prefix="bench-idle-redis-"))
        self.port = _free_port()
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--maxclients", "10000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(port=self.port, socket_connect_timeout=3)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.version = self.client.info("server")["redis_version"]

    def stats(self) -> dict[str, Any]:
        """Commandstats (calls and usec per command) and the server's CPU seconds, now."""
        commands = {
            key.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for key, v in self.client.info("commandstats").items()
        }
        cpu = self.client.info("cpu")
        return {
            "commands": commands,
            "cpu": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            "at": time.monotonic(),
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per command: (calls, usec) between two :meth:`PrivateServer.stats`; and CPU, seconds."""
    commands = {}
    for name, (calls, usec) in after["commands"].items():
        c0, u0 = before["commands"].get(name, (0, 0))
        # (the benchmark's own INFO and CONFIG do not count)
        if calls > c0 and not name.startswith(("info", "config")):
            commands[name] = (calls - c0, usec - u0)
    return {
        "commands": commands,
        "cpu": after["cpu"] - before["cpu"],
        "seconds": after["at"] - before["at"],
    }


def totals(d: dict[str, Any], kind: str) -> dict[str, float]:
    calls = sum(c for c, _ in d["commands"].values())
    in_scripts = sum(d["commands"].get(n, (0, 0))[0] for n in SCRIPT_CALLS) if kind != "raw" else 0
    return {
        "calls": calls,
        "sent": calls - in_scripts,
        "usec": sum(u for _, u in d["commands"].values()),
        "cpu": d["cpu"],
        "seconds": d["seconds"],
    }


# -- workers ------------------------------------------------------------------------


def start_workers(
    server: PrivateServer, run: str, kind: str, count: int, flags: Sequence[str], tag: str
) -> list[Worker]:
    env = {
        "BENCH_BROKER_URL": server.url,
        "BENCH_RUN": run,
        "BENCH_IDLE_KIND": kind,
        "BENCH_PROBE_URL": COUNTER_URL,
    }
    workers = [
        Worker(
            "bench.idle_app:app",
            queues=[f"bench.{run}.idle.{kind}"],
            pool="solo",
            concurrency=1,
            name=f"idle-{tag}-{kind}-{n}",
            env=env,
            flags=flags,
        )
        for n in range(count)
    ]
    for worker in workers:
        worker.start()
    return workers


def wait_ready(app: IdleApp, workers: list[Worker], timeout: float = 600) -> float:
    """Until every worker answers a ping; seconds waited."""
    started = time.monotonic()
    names = {w.nodename for w in workers}
    answered: set[str] = set()
    while answered != names:
        if time.monotonic() - started > timeout:
            missing = sorted(names - answered)[:5]
            raise TimeoutError(f"workers not ready after {timeout:.0f}s: {missing}...")
        for worker in workers:
            if worker.proc is not None and worker.proc.poll() is not None:
                raise RuntimeError(f"{worker.nodename} exited:\n{worker.log_tail()}")
        for reply in app.app.control.ping(timeout=1.0) or []:
            answered |= set(reply) & names
    return time.monotonic() - started


def stop_workers(workers: list[Worker]) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.stop(timeout=30)


# -- probes ---------------------------------------------------------------------------


class Probe:
    """Publishes probes of one kind and reads when their handler started."""

    def __init__(self, app: IdleApp) -> None:
        self.app = app
        self.records = redis.Redis.from_url(COUNTER_URL)
        self.records.delete(app.probe_key)
        self.latencies: list[float] = []  #: handler start - publish returned
        self.from_call: list[float] = []  #: handler start - publish called
        self._seq = 0

    def once(self, timeout: float = 30) -> float:
        self._seq += 1
        called = time.monotonic()
        self.app.publish(self._seq)
        returned = time.monotonic()
        while True:
            reply: Any = self.records.blpop([self.app.probe_key], timeout=timeout)
            if reply is None:
                raise TimeoutError(f"{self.app.kind}: probe {self._seq} not handled in {timeout}s")
            seq, started = bytes(reply[1]).decode().split()
            if int(seq) == self._seq:
                latency = float(started) - returned
                self.latencies.append(latency)
                self.from_call.append(float(started) - called)
                return latency

    def close(self) -> None:
        self.records.delete(self.app.probe_key)
        self.records.close()


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]

    return {
        "n": len(ordered),
        "p50": q(0.50),
        "p90": q(0.90),
        "p99": q(0.99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


# -- the parts -------------------------------------------------------------------


def idle_and_herd(
    server: PrivateServer, run: str, kind: str, args: argparse.Namespace, flags: Sequence[str]
) -> dict[str, Any]:
    app = build(server.url, run, kind, probe_url=COUNTER_URL)
    workers = start_workers(server, run, kind, args.workers, flags, "many")
    try:
        ready = wait_ready(app, workers)
        time.sleep(args.settle)  # (startup, the ping's replies, the first takes: over)
        before = server.stats()
        time.sleep(args.window)
        idle = delta(before, server.stats())

        probe = Probe(app)
        before = server.stats()  # (no probe with --herd 0)
        for _ in range(args.herd):
            time.sleep(args.gap)
            probe.once()
        herd = delta(before, server.stats())
        probe.close()
    finally:
        stop_workers(workers)
        app.app.close()
    return {
        "ready": ready,
        "idle": idle,
        "herd": herd,
        "latency": probe.latencies,
        "from_call": probe.from_call,
    }


def latency_probe(
    server: PrivateServer,
    run: str,
    kinds: list[str],
    args: argparse.Namespace,
    flags: Sequence[str],
) -> dict[str, list[float]]:
    apps = {kind: build(server.url, run, kind, probe_url=COUNTER_URL) for kind in kinds}
    workers = {kind: start_workers(server, run, kind, 1, flags, "one") for kind in kinds}
    rng = random.Random(13)
    try:
        for kind in kinds:
            wait_ready(apps[kind], workers[kind])
        probes = {kind: Probe(apps[kind]) for kind in kinds}
        for probe in probes.values():  # (a first run each: imports, connections)
            probe.once()
            probe.latencies.clear()
            probe.from_call.clear()
        order = list(kinds)
        for n in range(args.samples):
            for kind in order:
                time.sleep(rng.uniform(0.05, 0.25))
                probes[kind].once()
            order = order[1:] + order[:1]
            if (n + 1) % 50 == 0:
                print(f"  latency: {n + 1}/{args.samples} samples each", flush=True)
        return {
            **{kind: probe.latencies for kind, probe in probes.items()},
            **{f"{kind}:call": probe.from_call for kind, probe in probes.items()},
        }
    finally:
        for kind_workers in workers.values():
            stop_workers(kind_workers)
        for app in apps.values():
            app.app.close()


# -- report -------------------------------------------------------------------------


def report_idle(results: dict[str, dict[str, Any]], workers: int) -> dict[str, Any]:
    print(f"\nidle: {workers} worker processes of each kind (--pool solo), one queue")
    head = (
        f"{'':18} {'commands/s':>10} {'per worker':>10} {'sent/worker':>11} "
        f"{'Redis us/s':>10} {'Redis CPU':>9}  by command (calls/s)"
    )
    print(head)
    table = {}
    for kind, result in results.items():
        t = totals(result["idle"], kind)
        secs = t["seconds"]
        by = ", ".join(
            f"{name} {calls / secs:.1f}"
            for name, (calls, _) in sorted(
                result["idle"]["commands"].items(), key=lambda kv: -kv[1][0]
            )
        )
        row = {
            "calls_per_s": t["calls"] / secs,
            "per_worker": t["calls"] / secs / workers,
            "sent_per_worker": t["sent"] / secs / workers,
            "usec_per_s": t["usec"] / secs,
            "cpu_share": t["cpu"] / secs,
        }
        table[kind] = row
        print(
            f"{NAMES[kind]:18} {row['calls_per_s']:10.1f} {row['per_worker']:10.2f} "
            f"{row['sent_per_worker']:11.2f} {row['usec_per_s']:10.0f} "
            f"{row['cpu_share'] * 100:8.1f}%  {by}"
        )
    return table


def report_herd(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    print(
        f"\nherd: the same {args.workers} idle workers, {args.herd} messages published one "
        f"at a time, {args.gap} s apart (above the idle rate)"
    )
    print(
        "handler start: after publish returned (the publisher shares 2 cores with the "
        "woken workers) | after publish was called"
    )
    print(
        f"{'':18} {'commands/msg':>12} {'sent/msg':>9} {'Redis us/msg':>12} "
        f"{'CPU ms/msg':>10} {'start p50 ms':>12} {'p99 ms':>8} | {'p50 ms':>8} {'p99 ms':>8}"
    )
    table = {}
    for kind, result in results.items():
        idle, herd = totals(result["idle"], kind), totals(result["herd"], kind)

        def above(key: str, idle: dict[str, float] = idle, herd: dict[str, float] = herd) -> float:
            return float((herd[key] - idle[key] / idle["seconds"] * herd["seconds"]) / args.herd)

        lat = quantiles(result["latency"])
        call = quantiles(result["from_call"])
        row = {
            "calls_per_msg": above("calls"),
            "sent_per_msg": above("sent"),
            "usec_per_msg": above("usec"),
            "cpu_ms_per_msg": above("cpu") * 1000,
            "p50_ms": lat["p50"] * 1000,
            "p99_ms": lat["p99"] * 1000,
            "from_call_p50_ms": call["p50"] * 1000,
            "from_call_p99_ms": call["p99"] * 1000,
        }
        table[kind] = row
        print(
            f"{NAMES[kind]:18} {row['calls_per_msg']:12.1f} {row['sent_per_msg']:9.1f} "
            f"{row['usec_per_msg']:12.0f} {row['cpu_ms_per_msg']:10.2f} "
            f"{row['p50_ms']:12.2f} {row['p99_ms']:8.2f} | "
            f"{row['from_call_p50_ms']:8.2f} {row['from_call_p99_ms']:8.2f}"
        )
    return table


def report_latency(latencies: dict[str, list[float]]) -> dict[str, Any]:
    n = min(len(v) for v in latencies.values())
    print(f"\nlatency: one idle worker of each kind, {n} probes each, interleaved")
    print(
        "handler start after publish returned (negative: it started before publish "
        "returned); last columns: after publish was called"
    )
    print(
        f"{'':18} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'mean ms':>8}"
        f" | {'p50 ms':>8} {'p99 ms':>8}"
    )
    table: dict[str, Any] = {}
    for kind, values in latencies.items():
        if kind.endswith(":call"):
            continue
        q = quantiles(values)
        c = quantiles(latencies[f"{kind}:call"])
        table[kind] = {
            **{k: (v * 1000 if k != "n" else v) for k, v in q.items()},
            "from_call": {k: (v * 1000 if k != "n" else v) for k, v in c.items()},
        }
        print(
            f"{NAMES[kind]:18} {ms(q['p50']):>8} {ms(q['p90']):>8} {ms(q['p99']):>8} "
            f"{ms(q['max']):>8} {ms(q['mean']):>8} | {ms(c['p50']):>8} {ms(c['p99']):>8}"
        )
    return table


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=50, help="idle worker processes per kind")
    p.add_argument("--settle", type=float, default=5.0, help="seconds idle before measuring")
    p.add_argument("--window", type=float, default=10.0, help="seconds of the idle measurement")
    p.add_argument("--herd", type=int, default=100, help="messages to the idle workers")
    p.add_argument("--gap", type=float, default=0.2, help="seconds between those messages")
    p.add_argument("--samples", type=int, default=300, help="latency probes per kind")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"of {', '.join(KINDS)}")
    p.add_argument("--skip", nargs="*", default=[], choices=("idle", "latency"))
    p.add_argument(
        "--celery-defaults",
        action="store_true",
        help="workers as Celery starts them (heartbeat, gossip, mingle); default: "
        + " ".join(WORKER_FLAGS),
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    flags: Sequence[str] = () if args.celery_defaults else WORKER_FLAGS

    install_signal_handlers()
    print_header("bench_idle: idle Redis workers (issue 13)")
    server = PrivateServer()
    run = new_run_id("idle")
    print(
        f"redis-server {server.version} on port {server.port}; run {run}; worker flags: "
        f"{' '.join(flags) or '(Celery defaults)'}",
        flush=True,
    )
    out: dict[str, Any] = {"command": command_line(), "redis": server.version, "args": vars(args)}
    try:
        if "idle" not in args.skip:
            results: dict[str, dict[str, Any]] = {}
            for kind in kinds:
                started = time.monotonic()
                print(f"idle+herd: {args.workers} x {NAMES[kind]} ...", flush=True)
                results[kind] = idle_and_herd(server, run, kind, args, flags)
                print(
                    f"  ready in {results[kind]['ready']:.0f}s, "
                    f"done in {time.monotonic() - started:.0f}s",
                    flush=True,
                )
            out["idle"] = report_idle(results, args.workers)
            out["herd"] = report_herd(results, args) if args.herd else {}
            if "eventbus" in out["idle"] and "raw" in out["idle"]:
                e, r = out["idle"]["eventbus"], out["idle"]["raw"]
                print(
                    "ratio eventbus/raw Celery, idle: commands "
                    f"{ratio(e['calls_per_s'], r['calls_per_s'])}, "
                    f"sent {ratio(e['sent_per_worker'], r['sent_per_worker'])}, "
                    f"Redis time in commands {ratio(e['usec_per_s'], r['usec_per_s'])}, "
                    f"Redis CPU {ratio(e['cpu_share'], r['cpu_share'])}"
                )
            if "eventbus" in out["herd"] and "raw" in out["herd"]:
                e, r = out["herd"]["eventbus"], out["herd"]["raw"]
                print(
                    f"ratio eventbus/raw Celery, per message to {args.workers} idle workers: "
                    f"commands {ratio(e['calls_per_msg'], r['calls_per_msg'])}, "
                    f"Redis time in commands {ratio(e['usec_per_msg'], r['usec_per_msg'])}, "
                    f"Redis CPU {ratio(e['cpu_ms_per_msg'], r['cpu_ms_per_msg'])}"
                )
        if "latency" not in args.skip:
            latencies = latency_probe(server, run, kinds, args, flags)
            out["latency"] = report_latency(latencies)
            if "eventbus" in out["latency"] and "raw" in out["latency"]:
                e, r = out["latency"]["eventbus"], out["latency"]["raw"]
                c, d = e["from_call"], r["from_call"]
                print(
                    "eventbus vs raw Celery, handler start after publish returned: "
                    f"p50 {e['p50'] - r['p50']:+.2f} ms, p99 {ratio(e['p99'], r['p99'])}; "
                    f"after publish was called: p50 {ratio(c['p50'], d['p50'])}, "
                    f"p99 {ratio(c['p99'], d['p99'])}"
                )
    finally:
        server.close()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
