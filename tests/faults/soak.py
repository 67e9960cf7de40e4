"""A chaos soak: the real stack for a set time, faults injected on a seeded random schedule.

``python -m tests.faults.soak --broker redis|rabbitmq|both --minutes N --seed S``

Per broker, the soak runs a broker it may break (a private ``redis-server``
with ``appendonly yes`` and ``appendfsync always``, or a private three-node
RabbitMQ cluster with quorum queues), two prefork ``celery worker``
subprocesses running the fault tests' three handlers of ``Probe`` (plain,
idempotent, atomic: :mod:`tests.faults.fault_app`), and a publisher
subprocess. Every 10-60 s (``--gap``) the schedule, drawn from the seed,
injects one fault:

* ``worker_kill``: SIGKILL a worker's whole process group; a new worker starts.
* ``worker_stop``: SIGSTOP a worker's process group for 2-8 s, then SIGCONT.
* ``publisher_kill``: SIGKILL the publisher mid-stream; a new one starts.
* Redis: ``broker_kill`` (SIGKILL the server, down 1-5 s, started again on its
  AOF) and ``broker_oom`` (``maxmemory 1``, ``noeviction``, for 2-5 s).
* RabbitMQ: ``node_stop`` (``rabbitmqctl stop_app``) and ``node_kill`` (SIGKILL
  of the Erlang VM) of a random node, down 3-10 s, then brought back; one node
  at a time (a quorum queue needs a majority).

Sentinel failovers are not in it: a failover can lose acknowledged writes
(Redis replicates asynchronously), which a soak asserting ``lost=0`` cannot hold.

The publisher keeps a ledger in the shared Redis (never the broker under
fault): the id of each event whose ``publish`` returned. At the end the faults
stop, the broker is made whole, the publisher stops, and the soak waits (with
a deadline) until every ledger entry was handled by every handler or
dead-lettered with a reason (read through ``bus.dead_letters``). It prints
``soak[<broker>]: minutes=.. faults=.. published=.. handled=.. dead_lettered=..
lost=.. duplicate_effects=..`` and the seed; on a loss, the fault schedule, to
replay it with ``--seed``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import redis

from eventbus import PublishError, create_event
from tests.brokers import PrivateRedis
from tests.faults.cluster import PrivateRabbitMQCluster
from tests.faults.fault_app import ATOMIC, IDEM, PLAIN, Effects, FaultConfig, Probe, build_bus
from tests.faults.workers import ROOT, WorkerProcess
from tests.support import STATE_REDIS_URL, delete_state, wait_for

HANDLERS = (PLAIN, IDEM, ATOMIC)
WORKERS = 2  #: worker processes per broker
CONCURRENCY = 2  #: pool processes per worker
RATE = 10.0  #: events a second the publisher aims at (each to three handlers)
#: Faults each broker's schedule draws from.
FAULTS = {
    "redis": ("worker_kill", "worker_stop", "publisher_kill", "broker_kill", "broker_oom"),
    "rabbitmq": ("worker_kill", "worker_stop", "publisher_kill", "node_stop", "node_kill"),
}
#: Seconds before the end of the soak after which no fault starts: the last
#: one's recovery (a killed node boots again) stays inside the soak's time.
QUIET_END = 10.0


@dataclass(frozen=True)
class Fault:
    """One fault of the schedule: when (seconds after the previous one ended), what, how long."""

    gap: float
    kind: str
    target: int  #: which worker or node (an index, modulo the ones there are)
    hold: float  #: seconds a stop, a stopped node or an OOM lasts

    def describe(self) -> str:
        return f"+{self.gap:.1f}s {self.kind}#{self.target} hold={self.hold:.1f}s"


def schedule(broker: str, seed: int, gap: tuple[float, float], count: int = 10_000) -> list[Fault]:
    """The faults ``seed`` draws for ``broker``: the same seed, the same faults."""
    rng = random.Random(f"{seed}:{broker}")
    holds = {"worker_stop": (2, 8), "broker_kill": (1, 5), "broker_oom": (2, 5)}
    faults = []
    for _ in range(count):
        kind = rng.choice(FAULTS[broker])
        low, high = holds.get(kind, (3, 10))
        faults.append(
            Fault(
                gap=rng.uniform(*gap),
                kind=kind,
                target=rng.randrange(1000),
                hold=rng.uniform(low, high),
            )
        )
    return faults


@dataclass
class Ledger:
    """The publishers' ledger and counters, in the shared Redis under ``prefix``."""

    client: redis.Redis
    prefix: str

    @property
    def returned(self) -> str:
        return f"{self.prefix}ledger"  #: a set: event ids whose publish returned

    @property
    def refused(self) -> str:
        return f"{self.prefix}refused"  #: a set: event ids whose publish raised

    @property
    def counter(self) -> str:
        return f"{self.prefix}n"

    @property
    def stop_key(self) -> str:
        return f"{self.prefix}stop"

    def entries(self) -> set[str]:
        return {_text(v) for v in self.client.smembers(self.returned)}

    def refusals(self) -> set[str]:
        return {_text(v) for v in self.client.smembers(self.refused)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- the publisher subprocess ---------------------------------------------------


def publish_forever(config: FaultConfig, ledger_prefix: str, rate: float) -> None:
    """Publish Probes at ``rate`` a second until the soak says stop; keep the ledger.

    Runs in a subprocess of its own (``python -m tests.faults.soak publish``)
    so that a publisher kill is a real SIGKILL, mid-publish or not.
    """
    effects = Effects(config.effects_url, config.effects_prefix)
    bus = build_bus(config, effects)
    ledger = Ledger(redis.Redis.from_url(config.effects_url, socket_timeout=10), ledger_prefix)
    interval = 1.0 / rate
    next_at = time.monotonic()
    while not ledger.client.exists(ledger.stop_key):
        n = int(ledger.client.incr(ledger.counter))
        envelope = create_event(Probe, {"n": n})
        event_id = str(envelope.event_id)
        try:
            bus.publish(envelope)
        except PublishError:
            ledger.client.sadd(ledger.refused, event_id)
        else:
            ledger.client.sadd(ledger.returned, event_id)
        next_at = max(next_at + interval, time.monotonic() - 1.0)
        # Pacing, not a wait for a worker: the publisher is a web app's steady
        # traffic at `rate` events a second, whatever the workers do.
        time.sleep(max(0.0, next_at - time.monotonic()))


class PublisherProcess:
    """``python -m tests.faults.soak publish``, logging to a file; killed with SIGKILL."""

    def __init__(self, config: FaultConfig, ledger_prefix: str, rate: float, log_dir: Path):
        self.config = config
        self.ledger_prefix = ledger_prefix
        self.rate = rate
        self.log_path = log_dir / "publisher.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0

    def start(self) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")}
        environ.update(
            self.config.environ(),
            EVENTBUS_SOAK_LEDGER=self.ledger_prefix,
            EVENTBUS_SOAK_RATE=str(self.rate),
            PYTHONPATH=str(ROOT),
        )
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.soak", "publish"], cwd=ROOT, env=environ,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.started += 1

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def stop(self, client: redis.Redis, stop_key: str, timeout: float = 30) -> None:
        """Ask it to stop after the publish in progress; SIGKILL it past ``timeout``."""
        client.set(stop_key, "1")
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):  # killed below, then
                self.process.wait(timeout=timeout)
            self.kill()


# -- one broker's soak ----------------------------------------------------------


@dataclass
class Result:
    broker: str
    seed: int
    minutes: float
    faults: list[str]
    published: int
    refused: int
    handled: int
    dead_lettered: int
    lost: list[str]
    duplicates: dict[str, int]
    reasons: dict[str, int]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        kinds = Counter(f.split()[2].split("#")[0] for f in self.faults)
        return (
            f"soak[{self.broker}]: minutes={self.minutes:g} faults={len(self.faults)} "
            f"published={self.published} handled={self.handled} "
            f"dead_lettered={self.dead_lettered} lost={len(self.lost)} "
            f"duplicate_effects={sum(self.duplicates.values())} "
            f"(seed={self.seed}; faults {dict(sorted(kinds.items()))}; "
            f"plain/idem/atomic duplicates {'/'.join(map(str, self.duplicates.values()))}; "
            f"publish_errors={self.refused}; dead letters by reason {self.reasons}; "
            f"{', '.join(f'{k}={v}' for k, v in self.extra.items())}; "
            f"took {self.seconds:.0f}s)"
        )


class Soak:
    """One broker's soak: its broker, workers, publisher, fault schedule and figures."""

    def __init__(
        self,
        broker: str,
        *,
        seconds: float,
        seed: int,
        gap: tuple[float, float],
        rate: float = RATE,
        cluster: PrivateRabbitMQCluster | None = None,
        log_dir: Path | None = None,
        drain_timeout: float = 180,
    ) -> None:
        self.broker = broker
        self.seconds = seconds
        self.seed = seed
        self.gap = gap
        self.rate = rate
        self.drain_timeout = drain_timeout
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix=f"eventbus-soak-{broker}-"))
        self.private: PrivateRedis | None = None
        self.cluster = cluster
        self.own_cluster = False
        self.done: list[str] = []  #: faults injected, described, with their time
        self.workers: list[WorkerProcess] = []
        self.stopped: set[int] = set()  #: pids of process groups SIGSTOPped now
        uid = uuid.uuid4().hex[:10]
        self.uid = uid
        self.state = redis.Redis.from_url(STATE_REDIS_URL, socket_timeout=10)
        self.ledger = Ledger(self.state, f"eventbus-soak-{uid}:ledger:")
        self.config: FaultConfig | None = None
        self.publisher: PublisherProcess | None = None
        self.publisher_crashes = 0  #: publishers that exited on their own (see :meth:`watch`)

    # -- set-up and tear-down --

    def start_broker(self) -> str:
        if self.broker == "redis":
            self.private = PrivateRedis()
            self.private.start()
            return self.private.url
        if self.cluster is None:
            self.cluster = PrivateRabbitMQCluster()
            self.own_cluster = True
            self.cluster.launch()
        self.cluster.wait_formed()
        return self.cluster.url()

    def setup(self) -> None:
        url = self.start_broker()
        uid = self.uid
        self.config = FaultConfig(
            broker_url=url,
            queue=f"soak.{uid}",
            dead_letter_queue=f"soak.{uid}.dlq",
            state_url=STATE_REDIS_URL,
            state_prefix=f"eventbus-soak-{uid}:",
            effects_url=STATE_REDIS_URL,
            effects_prefix=f"eventbus-soak-{uid}:fx:",
            handlers="kill",
            queue_type="classic" if self.broker == "redis" else "quorum",
        )
        self.effects = Effects(self.config.effects_url, self.config.effects_prefix)
        self.bus = build_bus(self.config, self.effects)
        for _ in range(WORKERS):
            self.start_worker()
        if self.cluster is not None:
            # The workers declare the quorum queues; publish once they are there.
            names = [self.config.queue, self.config.dead_letter_queue]
            cluster = self.cluster
            wait_for(
                lambda: all(cluster.queue(name) is not None for name in names),
                timeout=90,
                interval=0.5,
                message=lambda: f"the workers to declare {names}\n{self.logs()}",
            )
        self.publisher = PublisherProcess(self.config, self.ledger.prefix, self.rate, self.log_dir)
        self.publisher.start()

    def start_worker(self) -> None:
        assert self.config is not None
        name = f"w{len(self.workers)}"
        worker = WorkerProcess(
            replace(self.config, worker=name), self.log_dir, concurrency=CONCURRENCY,
            loglevel="WARNING",
        )  # fmt: skip
        self.workers.append(worker.start())

    def live_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive()]

    def close(self) -> None:
        for pid in list(self.stopped):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)
        if self.publisher is not None:
            self.publisher.kill()
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.kill()
        if self.private is not None:
            self.private.close()
        if self.cluster is not None and self.own_cluster:
            self.cluster.close()
        elif self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.ensure_whole()
        if self.config is not None:
            delete_state(self.bus.app)  # state, effects and ledger share the prefix
            self.bus.app.close()
            self.effects.close()
        self.state.close()

    # -- faults --

    def inject(self, fault: Fault) -> None:
        """Inject ``fault`` and recover from it (returns once it is over)."""
        kind = fault.kind
        if kind == "worker_kill":
            workers = self.live_workers()
            workers[fault.target % len(workers)].kill()
            self.start_worker()
        elif kind == "worker_stop":
            worker = self.live_workers()[fault.target % len(self.live_workers())]
            os.killpg(worker.pid, signal.SIGSTOP)
            self.stopped.add(worker.pid)
            try:
                # The fault's duration (here and below): the chaos schedule holds
                # it for `hold` seconds; nothing is being waited for.
                time.sleep(fault.hold)
            finally:
                os.killpg(worker.pid, signal.SIGCONT)
                self.stopped.discard(worker.pid)
        elif kind == "publisher_kill":
            assert self.publisher is not None
            self.publisher.kill()
            self.publisher.start()
        elif kind == "broker_kill":
            assert self.private is not None
            self.private.crash()
            try:
                time.sleep(fault.hold)
            finally:
                self.private.start()
        elif kind == "broker_oom":
            assert self.private is not None
            with contextlib.closing(self.private.client()) as client:
                client.config_set("maxmemory-policy", "noeviction")
                client.config_set("maxmemory", 1)
                try:
                    time.sleep(fault.hold)
                finally:
                    client.config_set("maxmemory", 0)
        elif kind in ("node_stop", "node_kill"):
            assert self.cluster is not None
            node = self.cluster.nodes[fault.target % len(self.cluster.nodes)]
            if kind == "node_stop":
                self.cluster.stop(node)
            else:
                self.cluster.crash(node)
            try:
                time.sleep(fault.hold)
            finally:
                self.cluster.revive(node)
        else:
            raise ValueError(f"unknown fault {kind}")

    def run_faults(self, started: float) -> None:
        end = started + self.seconds
        for fault in schedule(self.broker, self.seed, self.gap):
            at = time.monotonic() + fault.gap
            if at > end - QUIET_END:
                break
            self.watch(fault.gap)
            self.done.append(f"{time.monotonic() - started:6.1f}s {fault.describe()}")
            self.inject(fault)
        self.watch(max(0.0, end - time.monotonic()))

    def watch(self, seconds: float) -> None:
        """Wait ``seconds``; restart the publisher if it died on its own (counted: a crash).

        ``publish`` raises :class:`~eventbus.PublishError` when the broker does not
        take a message; anything else escaping it ends the publisher, which the
        soak reports (``publisher_crashes``) rather than let it publish nothing.
        """
        until = time.monotonic() + seconds
        while True:
            process = self.publisher.process if self.publisher is not None else None
            if process is not None and process.poll() is not None:
                assert self.publisher is not None
                self.publisher_crashes += 1
                self.publisher.process = None
                self.publisher.start()
            left = until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.5, left))

    # -- the run --

    def run(self, minutes_label: float | None = None) -> Result:
        began = time.monotonic()
        try:
            self.setup()
            self.run_faults(time.monotonic())
            assert self.publisher is not None
            self.publisher.stop(self.state, self.ledger.stop_key)
            result = self.settle(began, minutes_label)
        except BaseException:
            print(self.report_failure(), file=sys.stderr)
            raise
        finally:
            self.close()
        if result.lost or self.publisher_crashes:
            print(self.report_failure(), file=sys.stderr)
            if self.publisher_crashes and self.publisher is not None:
                # What ended the publisher: the traceback it printed, for the CI log.
                text = self.publisher.log_path.read_text(errors="replace")[-4000:]
                print(f"--- soak[{self.broker}] publisher log:\n{text}", file=sys.stderr)
        else:
            # The workers' and publisher's logs are the evidence of a failure only.
            shutil.rmtree(self.log_dir, ignore_errors=True)
        return result

    def accounted(self, entries: set[str]) -> tuple[set[str], set[str], dict[str, set[str]]]:
        """Ledger entries handled by every handler, entries dead-lettered, and the rest."""
        runs = {handler: set(self.effects.runs(handler)) for handler in HANDLERS}
        dead: dict[str, set[str]] = {handler: set() for handler in HANDLERS}
        for record in self.bus.dead_letters:
            if record.event_id and record.handler in dead and record.reason:
                dead[record.handler].add(record.event_id)
        handled = set.intersection(*(runs[h] & entries for h in HANDLERS))
        dead_lettered = set.union(*(dead[h] & entries for h in HANDLERS))
        missing = {h: entries - runs[h] - dead[h] for h in HANDLERS}
        return handled, dead_lettered, missing

    def settle(self, began: float, minutes_label: float | None) -> Result:
        entries = self.ledger.entries()
        deadline = time.monotonic() + self.drain_timeout
        while True:
            handled, dead_lettered, missing = self.accounted(entries)
            if not any(missing.values()) or time.monotonic() > deadline:
                break
            time.sleep(1)
        runs = {h: self.effects.runs(h) for h in HANDLERS}
        labels = {PLAIN: "plain", IDEM: "idem", ATOMIC: "atomic"}
        reasons = Counter(str(record.reason) for record in self.bus.dead_letters)
        handled_unledgered = len(set(runs[PLAIN]) - entries - self.ledger.refusals())
        return Result(
            broker=self.broker if self.broker == "redis" else "rabbitmq-quorum-cluster",
            seed=self.seed,
            minutes=minutes_label if minutes_label is not None else self.seconds / 60,
            faults=self.done,
            published=len(entries),
            refused=len(self.ledger.refusals()),
            handled=len(handled),
            dead_lettered=len(dead_lettered),
            lost=sorted(set().union(*missing.values())),
            duplicates={labels[h]: sum(c - 1 for c in runs[h].values()) for h in HANDLERS},
            reasons=dict(reasons),
            seconds=time.monotonic() - began,
            extra={
                "publishers": self.publisher.started if self.publisher else 0,
                "publisher_crashes": self.publisher_crashes,
                "workers": len(self.workers),
                # Published, then the publisher was killed before its ledger write.
                "handled_unledgered": handled_unledgered,
            },
        )

    def logs(self) -> str:
        parts = [worker.log(tail=3000) for worker in self.workers]
        if self.publisher is not None and self.publisher.log_path.exists():
            text = self.publisher.log_path.read_text(errors="replace")[-3000:]
            parts.append(f"--- publisher:\n{text}")
        return "\n".join(parts)

    def report_failure(self) -> str:
        return (
            f"soak[{self.broker}] FAILED: seed={self.seed} (replay: python -m tests.faults.soak "
            f"--broker {self.broker} --minutes {self.seconds / 60:g} --seed {self.seed} "
            f"--gap {self.gap[0]:g} {self.gap[1]:g}); logs in {self.log_dir}\n"
            f"fault schedule as run:\n  " + "\n  ".join(self.done)
        )


def run_soaks(
    brokers: list[str],
    *,
    seconds: float,
    seed: int,
    gap: tuple[float, float],
    rate: float = RATE,
    cluster: PrivateRabbitMQCluster | None = None,
    minutes_label: float | None = None,
    drain_timeout: float = 180,
) -> list[Result]:
    """Run one soak per broker, concurrently; return their results (re-raise a failure)."""
    soaks = [
        Soak(
            b,
            seconds=seconds,
            seed=seed,
            gap=gap,
            rate=rate,
            cluster=cluster if b == "rabbitmq" else None,
            drain_timeout=drain_timeout,
        )
        for b in brokers
    ]
    results: dict[str, Result] = {}
    errors: dict[str, BaseException] = {}

    def run(soak: Soak) -> None:
        try:
            results[soak.broker] = soak.run(minutes_label)
        except BaseException as exc:
            errors[soak.broker] = exc

    threads = [threading.Thread(target=run, args=(s,), name=f"soak-{s.broker}") for s in soaks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for soak in soaks:
        result = results.get(soak.broker)
        if result is not None:
            print(result.line(), flush=True)
            if result.lost:
                print(soak.report_failure(), flush=True)
    if errors:
        broker, error = next(iter(errors.items()))
        raise RuntimeError(f"soak[{broker}] failed (seed={seed}): {error!r}") from error
    return [results[b] for b in brokers]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["publish"]:
        config = FaultConfig.from_environ(dict(os.environ))
        rate = float(os.environ.get("EVENTBUS_SOAK_RATE", RATE))
        publish_forever(config, os.environ["EVENTBUS_SOAK_LEDGER"], rate)
        return 0
    parser = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__)
    parser.add_argument("--broker", choices=["redis", "rabbitmq", "both"], default="both")
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    parser.add_argument("--gap", type=float, nargs=2, default=(10, 60), metavar=("MIN", "MAX"))
    parser.add_argument("--rate", type=float, default=RATE, help="events a second per broker")
    options = parser.parse_args(args)
    seed = options.seed if options.seed is not None else random.randrange(1_000_000)
    brokers = ["redis", "rabbitmq"] if options.broker == "both" else [options.broker]
    print(f"soak: brokers={','.join(brokers)} minutes={options.minutes:g} seed={seed}", flush=True)
    results = run_soaks(
        brokers,
        seconds=options.minutes * 60,
        seed=seed,
        gap=(options.gap[0], options.gap[1]),
        rate=options.rate,
        drain_timeout=max(180.0, options.minutes * 15),
    )
    failed = [r for r in results if r.lost or r.extra["publisher_crashes"] or not r.published]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
