"""DLQ at scale: list, stats and replay of N dead letters vs the core publish rate.

Per broker, on a DLQ of its own (``bench.<run>.dlq``):

1. fill:    N distinct ``DeadLetter`` records, each written as the
            ``eventbus.dead_letter`` task message ``BrokerDeadLetterStore.append``
            writes (``app.amqp.create_task_message`` + ``producer.publish``,
            JSON, persistent, same headers), but batched: on Redis inside
            ``producer.batch()`` per chunk, on RabbitMQ a plain publish loop
            (no confirms). No task-sent events. Records/s, building included.
2. list:    ``eventbus -A bench.dlq_app dlq list --json`` as a subprocess,
            stdout counted (never stored): wall time, peak RSS of the process
            tree (psutil, every 20 ms), line count == N.
   stats:   ``eventbus -A bench.dlq_app dlq stats`` when the CLI has it, else
            ``DeadLetterQueue.groups()`` in a ``python -c`` subprocess (said so).
3. replay:  ``bus.dead_letters.replay_all()`` in process, no worker: the
            replayed handler messages pile up in the handler queue (checked
            == N, DLQ checked empty). Records/s, compared in the same run with
            ``bus.publish(event)`` of M events to the one subscribed handler
            (1 message per event), runs before and after the replay; the ratio
            uses the best publish run. Below the target, ``replay_all`` is run
            again under cProfile on a smaller refill and the top 25 functions
            by cumulative time are printed.
4. cleanup: the DLQ, the handler queue, their exchanges / keys, the Redis
            claim keys, the per-run event exchange; Celery's shared exchanges
            are never deleted. Redis runs in its own db (13 by default).
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import io
import json
import math
import os
import pstats
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from kombu import Queue

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import dlq_app
from bench.common import (
    PYTHON,
    REPO,
    Janitor,
    TreeSampler,
    broker_available,
    brokers,
    fmt_num,
    fmt_ratio,
    install_signal_handlers,
    mib,
    new_run_id,
    parser,
    print_header,
    ratio,
    table,
    verdict,
    write_json,
)

#: Redis in a dedicated db of its own (the run deletes every key it created there).
DLQ_BROKER_URLS = {
    "redis": os.environ.get("BENCH_DLQ_REDIS_URL", "redis://127.0.0.1:6379/13"),
    "rabbitmq": os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
}
RATIO_TARGET = 0.8  #: replay records/s over publish messages/s
RSS_TARGET_MB = 200  #: peak RSS of list / stats, in MB (10**6 bytes), from the issue
FILL_CHUNK = 1000  #: records per producer.batch() on Redis
CLI_TIMEOUT = 900  #: seconds a list/stats subprocess may take before it is killed
WARMUP_EVENTS = 50
EVENTBUS_CLI = str(Path(PYTHON).with_name("eventbus"))

STATS_SCRIPT = (
    "import json; from bench.dlq_app import bus; g = bus.dead_letters.groups(); "
    'print(json.dumps({"total": sum(g.values()), "groups": len(g)}))'
)


# -- subprocesses ----------------------------------------------------------------


@dataclass
class CliRun:
    argv: list[str]
    seconds: float
    peak_rss: int
    samples: int
    lines: int
    rc: int | None
    first_line: bytes
    last_line: bytes
    stderr: str


def run_cli(argv: Sequence[str], env: dict[str, str], timeout: float = CLI_TIMEOUT) -> CliRun:
    """Run ``argv``; count its stdout lines as they stream; sample its RSS tree."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        sampler = TreeSampler(proc.pid)
        sampler.start()
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        lines = 0
        first = b""
        tail = b""
        try:
            assert proc.stdout is not None
            while chunk := proc.stdout.read(1 << 16):
                if not first:
                    first = chunk.split(b"\n", 1)[0]
                lines += chunk.count(b"\n")
                tail = (tail + chunk)[-4096:]
            rc = proc.wait()
        finally:
            killer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            sampler.stop()
        seconds = time.perf_counter() - start
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    return CliRun(
        list(argv), seconds, sampler.peak, sampler.samples, lines, rc, first, last, stderr
    )


def stats_mode() -> str | None:
    """``json`` / ``text`` if ``eventbus dlq stats`` exists (with / without --json), else None.

    The command was being added concurrently with this benchmark.
    """
    proc = subprocess.run(
        [EVENTBUS_CLI, "dlq", "stats", "--help"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    if proc.returncode != 0:
        return None
    return "json" if b"--json" in proc.stdout else "text"


def stats_label(mode: str | None) -> str:
    return {"json": "dlq stats --json", "text": "dlq stats"}.get(mode or "", "python -c groups()")


def shown(argv: Sequence[str], env: dict[str, str]) -> str:
    names = ("BENCH_BROKER_URL", "BENCH_DLQ", "BENCH_DLQ_HANDLER_QUEUE", "BENCH_RUN")
    prefix = " ".join(f"{k}={env[k]}" for k in names if k in env)
    return f"cd {shlex.quote(str(REPO))} && {prefix} {shlex.join(argv)}"


# -- the benchmark ---------------------------------------------------------------


class DlqBench:
    def __init__(self, broker: str, url: str) -> None:
        self.broker = broker
        self.url = url
        self.run = new_run_id("dlq")
        self.dlq = f"bench.{self.run}.dlq"
        self.handler_queue = f"bench.{self.run}.handler"
        self.janitor = Janitor(broker, url)
        self.janitor.track(self.dlq, self.handler_queue)
        self.janitor.track_exchanges(*dlq_app.created_exchanges(self.run))
        self.d = dlq_app.build(url, self.dlq, self.handler_queue, self.run)
        self.app = self.d.app
        self.bus = self.d.bus
        self.store: Any = self.bus.dead_letter_store
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "BENCH_BROKER_URL": url,
            "BENCH_DLQ": self.dlq,
            "BENCH_DLQ_HANDLER_QUEUE": self.handler_queue,
            "BENCH_RUN": self.run,
        }

    # -- broker helpers

    def depth(self, name: str) -> int:
        with self.app.connection_for_write() as conn:
            channel = conn.channel()
            try:
                _, count, _ = Queue(name).bind(channel).queue_declare(passive=True)
                return int(count)
            except conn.channel_errors:
                return 0
            finally:
                with contextlib.suppress(Exception):
                    channel.close()

    def wait_depth(self, name: str, want: int, timeout: float = 60.0, what: str = "") -> float:
        """Wait until ``name`` holds ``want`` messages; return the seconds waited.

        On RabbitMQ the depth lags: publishes without confirms may still be in
        flight when the last ``publish`` returns, and a browse's requeue
        settles after its channel closed. The wait is never on the clock.
        """
        start = time.perf_counter()
        while (got := self.depth(name)) != want:
            if time.perf_counter() - start > timeout:
                raise RuntimeError(
                    f"{what or name}: {got} messages after {timeout:.0f}s, expected {want}"
                )
            time.sleep(0.05)
        return time.perf_counter() - start

    # -- 1. fill

    def fill(self, n: int) -> float:
        """Write n records as ``eventbus.dead_letter`` task messages; return records/s."""
        app = self.app
        queue = self.store.queue
        store = self.store
        base = dlq_app.base_time()
        gc.collect()
        start = time.perf_counter()
        with app.producer_or_acquire() as producer:
            queue.bind(producer.channel).declare()
            publish = producer.publish
            for first in range(0, n, FILL_CHUNK):
                batch = (
                    producer.batch(max_size=FILL_CHUNK)
                    if self.broker == "redis"
                    else contextlib.nullcontext()
                )
                with batch:
                    for i in range(first, min(first + FILL_CHUNK, n)):
                        record = dlq_app.make_record(i, self.handler_queue, base)
                        headers, properties, body, _sent_event = store.task_message(record)
                        headers["eventbus-dead-letter"] = record.id
                        # What send_task_message does for a direct queue: the
                        # default exchange, the queue's name as routing key.
                        publish(
                            body,
                            exchange="",
                            routing_key=self.dlq,
                            serializer="json",
                            delivery_mode=2,
                            headers=headers,
                            **properties,
                        )
        elapsed = time.perf_counter() - start
        return n / elapsed

    # -- 2. list / stats

    def cli_list(self, n: int) -> CliRun:
        argv = [EVENTBUS_CLI, "-A", "bench.dlq_app", "dlq", "list", "--json"]
        print(f"  $ {shown(argv, self.env)} > /dev/null   (lines counted)", flush=True)
        result = run_cli(argv, self.env)
        if result.rc != 0:
            raise RuntimeError(f"dlq list exited {result.rc}:\n{result.stderr[-2000:]}")
        if result.lines != n:
            raise RuntimeError(f"dlq list --json printed {result.lines} lines, expected {n}")
        first = json.loads(result.first_line)
        if first.get("handler") != dlq_app.HANDLER:
            raise RuntimeError(f"dlq list --json: unexpected first record {result.first_line!r}")
        return result

    def cli_stats(self, n: int, mode: str | None) -> tuple[CliRun, str]:
        if mode is None:
            argv = [PYTHON, "-c", STATS_SCRIPT]
        else:
            argv = [EVENTBUS_CLI, "-A", "bench.dlq_app", "dlq", "stats"]
            argv += ["--json"] if mode == "json" else []
        print(f"  $ {shown(argv, self.env)}", flush=True)
        result = run_cli(argv, self.env)
        if result.rc != 0:
            raise RuntimeError(f"stats exited {result.rc}:\n{result.stderr[-2000:]}")
        if mode == "text":  # "  COUNT  handler:exception" lines, then "  TOTAL  total"
            total = result.last_line.decode(errors="replace").split()[0]
            groups = result.lines - 2
        else:  # {"total": ..., "groups": [...] or a number}
            out = json.loads(result.last_line)
            total, groups = out["total"], out["groups"]
            groups = groups if isinstance(groups, int) else len(groups)
        if str(total) != str(n):
            raise RuntimeError(f"{stats_label(mode)} counted {total!r} records, expected {n}")
        return result, f"total {total}, {groups} group(s)"

    def cli_baseline(self) -> CliRun:
        """The CLI loading the same app and doing nothing big: the RSS floor."""
        argv = [EVENTBUS_CLI, "-A", "bench.dlq_app", "events", "--json"]
        return run_cli(argv, self.env)

    # -- 3. replay vs publish

    def publish_run(self, m: int) -> float:
        events = [dlq_app.make_event(i) for i in range(m)]
        publish = self.bus.publish
        gc.collect()
        start = time.perf_counter()
        for event in events:
            publish(event)
        elapsed = time.perf_counter() - start
        settle = self.wait_depth(self.handler_queue, m, what="publish: the handler queue")
        if settle > 0.5:
            print(f"  (the handler queue took {settle:.1f}s more to show {m:,})", flush=True)
        self.janitor.purge([self.handler_queue])
        return m / elapsed

    def replay(self, n: int) -> float:
        gc.collect()
        start = time.perf_counter()
        replayed = self.bus.dead_letters.replay_all()
        elapsed = time.perf_counter() - start
        self.check_replayed(n, replayed)
        return n / elapsed

    def check_replayed(self, n: int, replayed: int) -> None:
        if replayed != n:
            raise RuntimeError(f"replay_all() returned {replayed}, expected {n}")
        settle = self.wait_depth(self.handler_queue, n, what="replay: the handler queue")
        settle += self.wait_depth(self.dlq, 0, what="replay: the DLQ")
        print(
            f"  replay_all() returned {replayed}; handler queue {self.depth(self.handler_queue)}, "
            f"DLQ {self.depth(self.dlq)}"
            + (f" (after {settle:.1f}s more)" if settle > 0.5 else ""),
            flush=True,
        )
        self.janitor.purge([self.handler_queue])

    def profile_replay(self, n: int) -> str:
        rate = self.fill(n)
        self.wait_depth(self.dlq, n)
        print(f"  refilled {n:,} records ({rate:,.0f}/s) for the profile", flush=True)
        profile = cProfile.Profile()
        gc.collect()
        start = time.perf_counter()
        profile.enable()
        replayed = self.bus.dead_letters.replay_all()
        profile.disable()
        elapsed = time.perf_counter() - start
        self.check_replayed(n, replayed)
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("cumulative").print_stats(25)
        stats.sort_stats("tottime").print_stats(15)
        # Where a record's time goes: the store's walk, the chunk's batch, the re-publish.
        stats.print_callees(r"deadletter/(amqp|redis)\.py:\d+\((redeliver|_redeliver_page)\)")
        stats.print_callees(r"deadletter/queue\.py:\d+\(_publish_chunk\)")
        stats.print_callees(r"eventbus/bus\.py:\d+\(_redeliver\)")
        head = (
            f"cProfile of replay_all() on {self.broker}, {n:,} records, "
            f"{elapsed:.1f}s under the profiler ({n / elapsed:,.0f}/s)\n"
        )
        return head + out.getvalue()

    # -- 4. cleanup

    def cleanup(self) -> None:
        if self.broker == "redis":
            client = redis.Redis.from_url(self.url)
            claims = list(client.scan_iter(match=f"eventbus.dlq-claim:{self.dlq}:*", count=1000))
            for i in range(0, len(claims), 500):
                client.delete(*claims[i : i + 500])
            print(f"cleanup: {len(claims)} leftover claim key(s) deleted", flush=True)
        self.app.pool.force_close_all()
        self.janitor.cleanup()


def bench_broker(broker: str, args: Any, mode: str | None) -> dict[str, Any]:
    url = DLQ_BROKER_URLS[broker]
    n, m, reps = args.records, min(args.events, args.records), max(args.reps, 1)
    b = DlqBench(broker, url)
    print(f"{broker}: DLQ {b.dlq}, handler queue {b.handler_queue}, broker {url}", flush=True)
    result: dict[str, Any] = {"bench": "dlq", "broker": broker, "records": n, "events": m}
    try:
        fill = b.fill(n)
        settle = b.wait_depth(b.dlq, n)
        print(f"  fill: {n:,} records at {fill:,.0f} records/s (depth {n:,})", flush=True)
        if settle > 0.5:
            print(f"  (the queue took {settle:.1f}s more to show all of them)", flush=True)

        base = b.cli_baseline()
        print(
            f"  CLI baseline (events --json): {base.seconds:.2f}s, peak RSS "
            f"{mib(base.peak_rss):.1f} MiB",
            flush=True,
        )
        listed = b.cli_list(n)
        print(
            f"  list --json: {listed.lines:,} lines in {listed.seconds:.2f}s "
            f"({n / listed.seconds:,.0f} records/s), peak RSS {mib(listed.peak_rss):.1f} MiB "
            f"({listed.samples} samples)",
            flush=True,
        )
        b.wait_depth(b.dlq, n)
        stats, counted = b.cli_stats(n, mode)
        print(
            f"  stats ({stats_label(mode)}): {stats.seconds:.2f}s "
            f"({n / stats.seconds:,.0f} records/s), peak RSS {mib(stats.peak_rss):.1f} MiB; "
            f"{counted}",
            flush=True,
        )
        b.wait_depth(b.dlq, n)

        b.publish_run(WARMUP_EVENTS)
        before = math.ceil(reps / 2)
        publish = [b.publish_run(m) for _ in range(before)]
        print(f"  publish: {', '.join(f'{r:,.0f}' for r in publish)} msgs/s", flush=True)
        replay = b.replay(n)
        print(f"  replay_all: {n:,} records at {replay:,.0f} records/s", flush=True)
        after = [b.publish_run(m) for _ in range(reps - before)]
        publish += after
        if after:
            print(
                f"  publish after replay: {', '.join(f'{r:,.0f}' for r in after)} msgs/s",
                flush=True,
            )
        best_publish = max(publish)
        r = ratio(replay, best_publish)
        result.update(
            fill_per_s=fill,
            baseline_s=base.seconds,
            baseline_mib=mib(base.peak_rss),
            list_s=listed.seconds,
            list_mib=mib(listed.peak_rss),
            stats_via=stats_label(mode),
            stats_s=stats.seconds,
            stats_mib=mib(stats.peak_rss),
            replay_per_s=replay,
            publish_per_s=best_publish,
            publish_runs=publish,
            ratio=r,
            target=f">= {RATIO_TARGET}",
            ok=verdict(r, RATIO_TARGET),
            rss_ok=verdict(max(listed.peak_rss, stats.peak_rss) / 1e6, RSS_TARGET_MB, at_most=True),
        )
        if args.profile == "always" or (args.profile == "auto" and (r or 0) < RATIO_TARGET):
            p = min(args.profile_records, n)
            print(f"  replay/publish {fmt_ratio(r)} < {RATIO_TARGET}: profiling", flush=True)
            result["profile"] = b.profile_replay(p)
    finally:
        b.cleanup()
    return result


def main() -> int:
    p = parser(__doc__.splitlines()[0], events=20000, reps=2)
    p.description = (
        "DLQ at scale. --events: events per publish run (M, capped at --records); "
        "--reps: publish runs, split before/after the replay."
    )
    p.add_argument("--records", type=int, default=100_000, help="dead letters (default 100000)")
    p.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="cProfile replay_all (auto: when replay/publish < 0.8)",
    )
    p.add_argument(
        "--profile-records",
        type=int,
        default=20_000,
        help="records refilled for the profile (default 20000)",
    )
    args = p.parse_args()
    install_signal_handlers()
    m = min(args.events, args.records)
    print_header(
        f"dlq: {args.records:,} dead letters; publish {m:,} events x 1 handler, {args.reps} run(s)"
    )
    mode = stats_mode()
    print(
        "stats: "
        + (
            f"`eventbus {stats_label(mode)}`"
            if mode
            else "`eventbus dlq stats` is not available: measuring "
            "DeadLetterQueue.groups() in a `python -c` subprocess instead"
        ),
        flush=True,
    )
    results: list[dict[str, Any]] = []
    failed = []
    for broker in brokers(args.broker):
        why = broker_available(DLQ_BROKER_URLS[broker])
        if why:
            print(f"{broker}: SKIPPED, broker unavailable ({why})", flush=True)
            continue
        try:
            results.append(bench_broker(broker, args, mode))
        except Exception:
            traceback.print_exc()
            failed.append(broker)

    for r in results:
        if "profile" in r:
            print()
            print(r["profile"])
    print()
    print(
        f"DLQ at {args.records:,} records (list/stats: wall time of the subprocess incl. "
        "startup, peak RSS of its process tree)"
    )
    print(dlq_table(results), flush=True)
    for r in results:
        r.pop("profile", None)
    write_json(args.json, results)
    if failed:
        print(f"FAILED: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


def dlq_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        if "ratio" not in r:
            continue
        rows.append(
            [
                r["broker"],
                f"{r['records']:,}",
                fmt_num(r["fill_per_s"], "/s"),
                f"{r['list_s']:.1f}s / {r['list_mib']:.0f} MiB",
                f"{r['stats_s']:.1f}s / {r['stats_mib']:.0f} MiB",
                f"{r['baseline_mib']:.0f} MiB",
                fmt_num(r["replay_per_s"], "/s"),
                fmt_num(r["publish_per_s"], "/s"),
                fmt_ratio(r["ratio"]),
                f"{r['ok']} ({r['target']})",
                f"{r['rss_ok']} (< {RSS_TARGET_MB} MB)",
            ]
        )
    return table(
        [
            "broker",
            "records",
            "fill",
            "list --json",
            f"stats ({results[0]['stats_via'] if results else '-'})",
            "CLI floor",
            "replay_all",
            "publish (best)",
            "replay/publish",
            "ratio",
            "peak RSS",
        ],
        rows,
    )


if __name__ == "__main__":
    sys.exit(main())
