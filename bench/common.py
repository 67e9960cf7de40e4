"""Shared helpers of the benchmarks: brokers, workers, counters, cleanup, tables.

Benchmarks are not tests: they print figures and ratios. Every comparison is
made inside one run (the machine is shared and noisy), contenders interleaved.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil
import redis
from kombu import Connection

from bench.counting import FIRST

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

BROKER_URLS = {
    # A dedicated Redis db: the benchmark deletes every key it created there.
    "redis": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"),
    "rabbitmq": os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
}
#: Execution counters live in another Redis db than the broker's.
COUNTER_URL = os.environ.get("BENCH_COUNTER_URL", "redis://127.0.0.1:6379/15")

#: Worker flags common to every contender (no cluster chatter in a benchmark).
WORKER_FLAGS = ("--without-gossip", "--without-mingle", "--without-heartbeat")
POOLS = {"prefork": 2, "threads": 4}


# -- command line ----------------------------------------------------------------


def parser(description: str, *, events: int, reps: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--broker", choices=("redis", "rabbitmq", "both"), default="both")
    p.add_argument("--events", type=int, default=events, help=f"events per run (default {events})")
    p.add_argument(
        "--reps",
        type=int,
        default=reps,
        help=f"interleaved repetitions per contender (default {reps})",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON (for run.py)")
    return p


def brokers(choice: str) -> list[str]:
    return ["redis", "rabbitmq"] if choice == "both" else [choice]


def command_line() -> str:
    argv = list(sys.argv)
    with contextlib.suppress(ValueError):
        argv[0] = str(Path(argv[0]).resolve().relative_to(REPO))
    return f"cd {shlex.quote(str(REPO))} && {shlex.join([PYTHON, *argv])}"


def print_header(title: str) -> None:
    print(f"== {title}")
    print(f"command: {command_line()}", flush=True)


def broker_available(url: str) -> str | None:
    """None when the broker answers, else why not."""
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def new_run_id(tag: str) -> str:
    return f"{tag}-{os.getpid()}-{secrets.token_hex(3)}"


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP unwind the stack, so ``finally`` stops workers and cleans up."""

    def _exit(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)


# -- broker cleanup ------------------------------------------------------------

#: Exchanges every Celery app on a vhost shares (events, remote control).
SHARED_AMQP_EXCHANGES = ("celeryev", "celery.pidbox", "reply.celery.pidbox")


class Janitor:
    """Purges the run's queues between runs and deletes what the run created."""

    def __init__(self, broker: str, url: str) -> None:
        self.broker = broker
        self.url = url
        self.queues: set[str] = set()
        self.exchanges: set[str] = set()
        self._redis_before: set[bytes] = set()
        self._amqp_before: set[str] = set()
        if broker == "redis":
            self._redis = redis.Redis.from_url(url)
            self._redis_before = set(self._redis.scan_iter(count=1000))
        else:
            self._amqp_before = {
                name
                for name in SHARED_AMQP_EXCHANGES
                if self._amqp_call(
                    lambda ch, n=name: ch.exchange_declare(n, "direct", passive=True)
                )
            }

    def track(self, *queues: str) -> None:
        self.queues.update(queues)

    def track_exchanges(self, *exchanges: str) -> None:
        self.exchanges.update(exchanges)

    def _amqp_call(self, call: Callable[[Any], Any]) -> bool:
        # A failed AMQP operation (404) closes its channel: one channel per call.
        with Connection(self.url) as conn:
            channel = conn.channel()
            try:
                call(channel)
                return True
            except Exception:
                return False
            finally:
                with contextlib.suppress(Exception):
                    channel.close()

    def purge(self, queues: Iterable[str]) -> None:
        if self.broker == "redis":
            with Connection(self.url) as conn:
                channel = conn.default_channel
                for name in queues:
                    channel.queue_purge(name)
        else:
            for name in queues:
                self._amqp_call(lambda ch, n=name: ch.queue_purge(n))

    def cleanup(self) -> None:
        if self.broker == "redis":
            created = [k for k in self._redis.scan_iter(count=1000) if k not in self._redis_before]
            for i in range(0, len(created), 500):
                self._redis.delete(*created[i : i + 500])
            print(
                f"cleanup: deleted {len(created)} Redis key(s) this run created in {self.url}",
                flush=True,
            )
            return
        for name in sorted(self.queues):
            self._amqp_call(lambda ch, n=name: ch.queue_delete(n))
        # Celery declares a direct exchange named after each queue.
        for name in sorted(self.queues | self.exchanges):
            self._amqp_call(lambda ch, n=name: ch.exchange_delete(n))
        # Exchanges all Celery apps on the vhost share are never deleted: other
        # clients may use them (and cache their declaration) meanwhile.
        new = [
            n
            for n in SHARED_AMQP_EXCHANGES
            if n not in self._amqp_before
            and self._amqp_call(lambda ch, n=n: ch.exchange_declare(n, "direct", passive=True))
        ]
        print(
            f"cleanup: deleted {len(self.queues)} RabbitMQ queue(s) and "
            f"{len(self.queues | self.exchanges)} exchange(s) of this run"
            + (
                f"; left the shared Celery exchange(s) {', '.join(new)} in place "
                "(absent at the start)"
                if new
                else ""
            ),
            flush=True,
        )


# -- workers -------------------------------------------------------------------

_LIVE: set[Worker] = set()


class TreeSampler(threading.Thread):
    """Samples the RSS summed over a process and all its descendants.

    A process seen in fewer than ``min_samples`` samples is left out of the
    sums: a subprocess the worker runs is, until it calls exec, a fork whose
    RSS is the worker's own pages counted a second time. Every Celery worker
    runs one at startup (its banner's ``platform.platform()`` runs
    ``uname -p``); caught by a sample, it doubled a worker's peak.
    """

    def __init__(self, pid: int, interval: float = 0.02, min_samples: int = 3) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.min_samples = min_samples
        self.samples = 0
        self._rss: list[dict[int, int]] = []  # per sample: pid -> RSS
        self._stop_event = threading.Event()

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.pid)
        return [root, *root.children(recursive=True)]

    def run(self) -> None:
        while not self._stop_event.is_set():
            sample = {}
            try:
                for proc in self.tree():
                    with contextlib.suppress(psutil.Error):
                        sample[proc.pid] = proc.memory_info().rss
            except psutil.Error:
                return
            self._rss.append(sample)
            self.samples += 1
            self._stop_event.wait(self.interval)

    def _lasting(self) -> set[int]:
        seen: Counter[int] = Counter(pid for sample in list(self._rss) for pid in sample)
        return {pid for pid, n in seen.items() if n >= self.min_samples or pid == self.pid}

    @property
    def peak(self) -> int:
        """The largest RSS sum over the tree's lasting processes (bytes)."""
        lasting = self._lasting()
        return max(
            (sum(rss for pid, rss in s.items() if pid in lasting) for s in list(self._rss)),
            default=0,
        )

    @property
    def peak_procs(self) -> int:
        """How many lasting processes the tree had at its peak."""
        lasting = self._lasting()
        sums = [(sum(rss for pid, rss in s.items() if pid in lasting), s) for s in list(self._rss)]
        if not sums:
            return 0
        return len([pid for pid in max(sums, key=lambda t: t[0])[1] if pid in lasting])

    @property
    def transient(self) -> int:
        """Processes left out of the sums (seen in fewer than ``min_samples`` samples)."""
        return len({pid for s in list(self._rss) for pid in s} - self._lasting())

    def pss(self) -> tuple[int, int]:
        """(sum of PSS, number of processes) right now: shared pages counted once."""
        total, procs = 0, 0
        for proc in self.tree():
            try:
                total += proc.memory_full_info().pss
                procs += 1
            except psutil.Error:
                pass
        return total, procs

    def stop(self) -> None:
        self._stop_event.set()
        self.join(2)


class Worker:
    """A real ``celery worker`` subprocess, in its own process group.

    ``launcher="cli"`` runs ``celery -A APP worker ...``; ``"direct"`` runs
    ``bench.direct_worker`` (same worker, without the celery CLI's plugins).
    ``command`` runs that instead (another product's worker: dramatiq), with
    the same start, logs and stop; :meth:`wait_ready` (a Celery ping) does not apply.
    """

    def __init__(
        self,
        app_spec: str,
        *,
        queues: Sequence[str],
        pool: str,
        concurrency: int,
        name: str,
        env: dict[str, str] | None = None,
        loglevel: str = "WARNING",
        sample_rss: bool = False,
        launcher: str = "cli",
        flags: Sequence[str] = WORKER_FLAGS,
        command: Sequence[str] | None = None,
    ) -> None:
        self.app_spec = app_spec
        self.command = list(command) if command else None
        self.flags = list(flags)
        self.launcher = launcher
        self.queues = list(queues)
        self.pool = pool
        self.concurrency = concurrency
        self.nodename = f"{name}@bench"
        self.env = env or {}
        self.loglevel = loglevel
        self.sample_rss = sample_rss
        self.proc: subprocess.Popen[bytes] | None = None
        self.sampler: TreeSampler | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix="bench-worker-", suffix=".log", delete=False
        )

    @property
    def argv(self) -> list[str]:
        if self.command is not None:  # another worker than Celery's (dramatiq)
            return self.command
        if self.launcher == "direct":  # no celery CLI, so no celery.commands plugins
            head = [PYTHON, "-m", "bench.direct_worker", self.app_spec]
        else:
            head = [PYTHON, "-m", "celery", "-A", self.app_spec, "worker"]
        return [
            *head,
            f"--pool={self.pool}",
            f"--concurrency={self.concurrency}",
            "-Q",
            ",".join(self.queues),
            "-n",
            self.nodename,
            "-l",
            self.loglevel,
            *self.flags,
        ]

    def start(self) -> Worker:
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            self.argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _LIVE.add(self)
        if self.sample_rss:
            self.sampler = TreeSampler(self.proc.pid)
            self.sampler.start()
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(Path(self._log.name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, app: Any, timeout: float = 60.0) -> float:
        """Block until the worker answers a ping (its consumer runs); return seconds waited."""
        assert self.proc is not None
        start = time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"worker {self.nodename} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if app.control.ping(destination=[self.nodename], timeout=0.5, limit=1):
                return time.monotonic() - start
        raise TimeoutError(f"worker {self.nodename} not ready after {timeout}s:\n{self.log_tail()}")

    def pause(self) -> None:
        """SIGSTOP the worker's process group (pool children too): it sends nothing."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the worker's process group."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)

    def terminate(self) -> None:
        """Ask for a warm shutdown (SIGTERM) without waiting; :meth:`stop` reaps it."""
        if self.sampler is not None:
            self.sampler.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM); SIGKILL the whole process group past the deadline."""
        if self.sampler is not None:
            self.sampler.stop()
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self.resume()  # a paused worker would not act on SIGTERM
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    print(
                        f"worker {self.nodename}: no warm shutdown in {timeout}s, killing",
                        flush=True,
                    )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # leftovers (pool children) too
            proc.wait(10)
        finally:
            _LIVE.discard(self)
            self._log.close()
            if proc.returncode not in (0, -signal.SIGKILL, -signal.SIGTERM):
                print(
                    f"worker {self.nodename} exit code {proc.returncode}:\n{self.log_tail()}",
                    flush=True,
                )
            with contextlib.suppress(OSError):
                os.unlink(self._log.name)

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _stop_live_workers() -> None:
    for worker in list(_LIVE):
        worker.stop(timeout=5)


# -- counting executions -------------------------------------------------------


class ExecutionCounter:
    """Counts handler executions: each no-op task INCRs a key in a separate Redis db."""

    def __init__(self, run: str, url: str = COUNTER_URL) -> None:
        self.redis = redis.Redis.from_url(url)
        self.prefix = f"bench:{run}:"

    def key(self, *parts: object) -> str:
        return self.prefix + ":".join(map(str, parts))

    def get(self, key: str) -> int:
        return int(self.redis.get(key) or 0)

    def first(self, key: str) -> float | None:
        """Wall-clock time of the first execution counted on ``key`` (``bench.counting``)."""
        value = self.redis.get(key + FIRST)
        return float(value) if value is not None else None

    def wait(
        self,
        key: str,
        target: int,
        timeout: float,
        poll: float = 0.005,
        clock: Callable[[], float] = time.perf_counter,
    ) -> float:
        """Poll until ``key`` reaches ``target``; return ``clock()`` at that moment.

        ``clock=time.time`` to compare with :meth:`first` (another process's clock).
        """
        deadline = time.perf_counter() + timeout
        while True:
            now = clock()
            value = self.get(key)
            if value >= target:
                return now if value == target else clock()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{key}: {value}/{target} executions after {timeout:.0f}s")
            time.sleep(poll)

    def cleanup(self) -> None:
        keys = list(self.redis.scan_iter(match=self.prefix + "*", count=1000))
        if keys:
            self.redis.delete(*keys)


class TaskEventCounter:
    """Counts one worker's task events (task-succeeded ...) with Celery's event receiver."""

    def __init__(self, app: Any, nodename: str) -> None:
        self.app = app
        self.nodename = nodename
        self.counts: Counter[str] = Counter()
        self.succeeded: set[str] = set()
        self._cond = threading.Condition()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            with self.app.connection_for_read() as conn:
                self._receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
                self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:
            self.error = exc

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("hostname") == self.nodename:
            with self._cond:
                self.counts[event.get("type", "?")] += 1
                if event.get("type") == "task-succeeded":
                    self.succeeded.add(event.get("uuid"))
                self._cond.notify_all()

    def start(self) -> TaskEventCounter:
        self._thread.start()
        return self

    def wait_any_succeeded(self, task_ids: Iterable[str], timeout: float) -> bool:
        """Wait until one task of ``task_ids`` reported task-succeeded."""
        ids = set(task_ids)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ids & self.succeeded:
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def wait_succeeded(self, task_ids: Iterable[str], timeout: float) -> bool:
        """Wait until every task in ``task_ids`` reported task-succeeded."""
        ids = set(task_ids)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ids <= self.succeeded:
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def stop(self, wait: bool = True) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        if wait:
            self._thread.join(5)


# -- figures ---------------------------------------------------------------------


def best(values: Sequence[float]) -> float:
    return max(values)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float] | None:
    """A against B over interleaved reps: (ratio of medians, min, max of the paired ratios).

    Rep i of A and rep i of B ran next to each other (same rotation), so
    ``a[i] / b[i]`` is one paired ratio; its spread says how much of the
    median ratio is the machine's noise. None without reps on both sides.
    """
    pairs = [x / y for x, y in zip(a, b, strict=False) if x and y]
    if not pairs or not median(a) or not median(b):
        return None
    return median(a) / median(b), min(pairs), max(pairs)


def fmt_paired(value: tuple[float, float, float] | None) -> str:
    """``1.23 [0.90-1.40]``: ratio of medians [paired min-max]."""
    if value is None:
        return "n/a"
    mid, lo, hi = value
    return f"{mid:.2f} [{lo:.2f}-{hi:.2f}]"


def paired_result(
    bench: str,
    broker: str,
    setting: str,
    name: str,
    value: tuple[float, float, float] | None,
    target: float | None = None,
) -> dict[str, Any]:
    """A ratio's JSON record (run.py's summary): ratio of medians, paired min-max, verdict."""
    mid = value[0] if value else None
    return {
        "bench": bench,
        "broker": broker,
        "setting": setting,
        "ratio": name,
        "value": mid,
        "paired_min": value[1] if value else None,
        "paired_max": value[2] if value else None,
        "target": f">= {target}" if target is not None else "-",
        "ok": verdict(mid, target) if target is not None else "-",
    }


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def fmt_num(value: float | None, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:,.0f}{unit}"


def mib(value: float) -> float:
    return value / (1024 * 1024)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def rotate(items: Sequence[str], k: int) -> list[str]:
    """Interleave contenders: the order shifts by one every repetition."""
    k %= len(items)
    return [*items[k:], *items[:k]]


def verdict(value: float | None, target: float, *, at_most: bool = False) -> str:
    if value is None:
        return "n/a"
    ok = value <= target if at_most else value >= target
    return "OK" if ok else "MISS"


def write_json(path: str | None, results: list[dict[str, Any]]) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=2))
