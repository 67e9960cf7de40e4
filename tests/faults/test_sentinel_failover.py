"""Redis Sentinel fail-over while events are published and handled (issue 13).

A :class:`~tests.sentinels.SentinelGroup` of the test's own (a master, its
replica, three sentinels) is the broker of two buses side by side, one of
them waiting for the replica (``eventbus_redis_wait_replicas = 1``), each
with a queue and a prefork ``celery worker`` subprocess of its own, on
eventbus's transport found through the sentinels (``sentinel://...``,
``master_name``). Each bus publishes a steady stream of events from a thread;
a few seconds in, the test forces a fail-over, the same for both:

* ``failover``: ``SENTINEL FAILOVER``. The replica is promoted while the old
  master is still up: connections made before keep writing to it until the
  sentinels demote it (10-20 s later here), and it then throws away what it
  has for the new master's data.
* ``sigkill``: the master is SIGKILLed; the sentinels elect the replica
  (about 3 s); the old master comes back on its AOF and is made a replica.

Redis replicates asynchronously: a write the master acknowledged can be gone
after either. The test counts, by event id, what became of every event whose
``publish`` returned (``lost``: never handled) and prints
``failover[redis-sentinel]: published=.. acknowledged=.. handled=.. lost=..``.
With ``eventbus_redis_wait_replicas = 1`` every publish waits for the replica
(``WAIT``): the same run measures what that closes, and what it costs
(:func:`test_what_waiting_for_the_replica_costs_a_publish`: the publish rate).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from eventbus import Envelope, create_event
from tests.faults.conftest import Publisher
from tests.faults.fault_app import PLAIN, Effects, FaultConfig, Probe, build_bus
from tests.faults.workers import WorkerProcess
from tests.sentinels import MASTER_NAME, SentinelGroup
from tests.support import STATE_REDIS_URL, delete_state, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.sentinel, pytest.mark.redis]

#: Events a second the publisher sends: steady traffic through the whole fault.
RATE = 150
#: Events the publisher has at most; it is stopped before it runs out (see AFTER_SYNC).
MAX_EVENTS = 60 * RATE
#: Events every publisher has acknowledged after the group settled (once the
#: old master is a replica again, in sync) before it stops: publishing resumed.
AFTER_SYNC = 2 * RATE
#: Events acknowledged before the fault is forced.
BEFORE_FAULT = 300
#: Seconds the broker must hold none of the queue's messages before events
#: still not handled count as lost.
DRAINED_FOR = 2.0

Figure = Callable[[str], str]


class SentinelEnv:
    """One test's world: the sentinel group, a publishing bus, the effects, the workers."""

    def __init__(self, group: SentinelGroup, log_dir: Path, *, wait_replicas: int) -> None:
        uid = uuid.uuid4().hex[:10]
        self.group = group
        self.log_dir = log_dir
        self.config = FaultConfig(
            broker_url=group.url,
            queue=f"faults.sentinel.{uid}",
            dead_letter_queue=f"faults.sentinel.{uid}.dlq",
            state_url=STATE_REDIS_URL,
            state_prefix=f"eventbus-faults-{uid}:",
            effects_url=STATE_REDIS_URL,
            effects_prefix=f"eventbus-faults-{uid}:fx:",
            handlers="count",
            master_name=MASTER_NAME,
            wait_replicas=wait_replicas,
        )
        self.effects = Effects(self.config.effects_url, self.config.effects_prefix)
        self.bus = build_bus(self.config, self.effects)
        self.workers: list[WorkerProcess] = []

    def start_workers(self, count: int, *, concurrency: int) -> list[WorkerProcess]:
        self.workers = [
            WorkerProcess(
                replace(self.config, worker=f"w{i}"), self.log_dir, concurrency=concurrency
            ).start()
            for i in range(count)
        ]
        return self.workers

    def remaining(self) -> int:
        """The queue's messages on the master now: waiting, or delivered and unacked."""
        with contextlib.closing(self.group.master_client()) as client:
            try:
                return int(client.llen(self.config.queue)) + int(client.hlen("unacked"))
            except OSError:
                return -1

    def takes(self) -> dict[str, int]:
        """Take commands the group's servers ran for clients, since their start: by name."""
        found = dict.fromkeys(("brpop", "eval", "evalsha"), 0)
        for server in self.group.servers:
            with contextlib.closing(server.client()) as client:
                stats = client.info("commandstats")
            for name in found:
                found[name] += int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        return found

    def logs(self) -> str:
        return "\n".join([*(w.log() for w in self.workers), self.group.logs()])

    def close(self) -> None:
        try:
            for worker in self.workers:
                worker.kill()
        finally:
            self.effects.close()
            delete_state(self.bus.app)  # the effects share the state's prefix
            self.bus.app.close()


@pytest.fixture
def sentinel_group() -> Iterator[SentinelGroup]:
    group = SentinelGroup()
    try:
        yield group.start()
    finally:
        group.close()


class Steady:
    """``publish`` at most :data:`RATE` times a second (a web app's steady traffic).

    A publish that took long (a fail-over) is not made up for by a burst: the
    next one goes :data:`RATE`'s interval after it started. Remembers when
    publishes raised (``refused``: monotonic start and end of each).
    """

    def __init__(self, publish: Callable[[Envelope[Any]], object]) -> None:
        self._publish = publish
        self._next = 0.0
        self.refused: list[tuple[float, float]] = []
        self.sent_at: dict[str, float] = {}  #: event id -> when its publish started

    def __call__(self, envelope: Envelope[Any]) -> object:
        time.sleep(max(0.0, self._next - time.monotonic()))  # pacing the traffic, not a wait
        started = time.monotonic()
        self._next = started + 1 / RATE
        self.sent_at[str(envelope.event_id)] = started
        try:
            return self._publish(envelope)
        except Exception:
            self.refused.append((started, time.monotonic()))
            raise

    def refusals(self, since: float) -> str:
        """When publishes raised, in seconds after ``since`` (monotonic)."""
        if not self.refused:
            return "none refused"
        return (
            f"refused from {self.refused[0][0] - since:+.1f}s to "
            f"{self.refused[-1][1] - since:+.1f}s after the fault"
        )


@dataclass
class Stream:
    """One bus's side of a run: its steady publisher and what it saw."""

    env: SentinelEnv
    steady: Steady
    publisher: Publisher
    at_fault: int = 0  #: events acknowledged when the fault was forced
    at_sync: int = 0  #: events acknowledged when the group had settled


@pytest.mark.parametrize("fault", ["failover", "sigkill"])
def test_acknowledged_events_through_a_sentinel_failover(
    sentinel_group: SentinelGroup, tmp_path: Path, figure: Figure, fault: str
) -> None:
    # Given two buses on a Sentinel-managed Redis, one waiting for the replica
    # (eventbus_redis_wait_replicas = 1), each with a queue, a prefork worker and a
    # steady publisher of its own: both go through the same fault
    envs = [SentinelEnv(sentinel_group, tmp_path, wait_replicas=replicas) for replicas in (0, 1)]
    try:
        run(sentinel_group, envs, fault, figure)
    finally:
        for env in envs:
            env.close()


def run(group: SentinelGroup, envs: list[SentinelEnv], fault: str, figure: Figure) -> None:
    streams = []
    for env in envs:
        env.start_workers(1, concurrency=2)
        envelopes = [create_event(Probe, {"n": n}) for n in range(MAX_EVENTS)]
        steady = Steady(env.bus.publish)
        streams.append(Stream(env, steady, Publisher(steady, envelopes).start()))

    # When, once every worker runs events, the master fails over
    def ready() -> bool:
        return all(
            len(s.publisher.acknowledged) >= BEFORE_FAULT and s.env.effects.by_worker()
            for s in streams
        )

    wait_for(
        ready,
        timeout=60,
        interval=0.05,
        message=lambda: "; ".join(
            f"{len(s.publisher.acknowledged)}/{BEFORE_FAULT} acknowledged, runs by worker "
            f"{s.env.effects.by_worker()}\n{s.env.logs()}"
            for s in streams
        ),
    )
    for stream in streams:
        stream.at_fault = len(stream.publisher.acknowledged)
    old = group.master()
    fault_at = time.monotonic()
    switched = group.failover() if fault == "failover" else group.kill_master()
    # and the publishers go on until the group settled: a master the sentinels agree
    # on, the other server its replica, in sync (the old master demoted; or, should
    # the sentinels fail over again, the other way round)
    settled = group.wait_in_sync()
    for stream in streams:
        stream.at_sync = len(stream.publisher.acknowledged)
    role = (
        f"old master :{old.port} a replica"
        if group.master() is not old
        else f"the sentinels failed over again, back to :{old.port}"
    )
    wait_for(
        lambda: all(
            len(s.publisher.acknowledged) - s.at_sync >= AFTER_SYNC or s.publisher.error is not None
            for s in streams
        ),
        timeout=60,
        interval=0.05,
        message=lambda: "; ".join(
            f"{len(s.publisher.acknowledged) - s.at_sync}/{AFTER_SYNC} acknowledged after the "
            f"sync, {len(s.publisher.refused)} refused\n{s.env.logs()}"
            for s in streams
        ),
    )
    for stream in streams:
        stream.publisher.stop()
        assert stream.publisher.error is None, stream.publisher.error
        assert stream.publisher.attempted < MAX_EVENTS, "a publisher ran out of events"

    # Then: what became of every event whose publish returned
    for stream in streams:
        env, publisher = stream.env, stream.publisher
        acknowledged, refused = publisher.acknowledged, publisher.refused
        wait_until_settled(env, acknowledged, timeout=120)
        runs = env.effects.runs(PLAIN)
        lost = [event_id for event_id in acknowledged if event_id not in runs]
        when = sorted(stream.steady.sent_at[event_id] - fault_at for event_id in lost)
        lost_when = (
            f" [published +{when[0]:.2f}s to +{when[-1]:.2f}s after the fault]" if lost else ""
        )
        duplicates = sum(count - 1 for count in runs.values())
        figure(
            f"failover[redis-sentinel] {fault}, wait_replicas={env.config.wait_replicas}: "
            f"published={publisher.attempted} acknowledged={len(acknowledged)} "
            f"handled={len(set(acknowledged) & set(runs))} lost={len(lost)}{lost_when} "
            f"(publish_errors={len(refused)}, refused but handled="
            f"{len(set(refused) & set(runs))}, duplicate_effects={duplicates}; fault at "
            f"{stream.at_fault} acknowledged, new master named {switched:.1f}s later, settled "
            f"{settled:.1f}s after that ({role}); publishes {stream.steady.refusals(fault_at)}, "
            f"slowest {publisher.slowest:.1f}s; acknowledged after the sync: "
            f"{len(acknowledged) - stream.at_sync})"
        )
        assert all(worker.alive() for worker in env.workers), env.logs()
        # And waiting for the replica, every event whose publish returned was handled
        if env.config.wait_replicas:
            assert not lost, f"acknowledged, replicated and never handled: {lost[:5]}"
    # (the workers took with eventbus's script, never with BRPOP, before and after)
    takes = envs[0].takes()
    assert takes["evalsha"] + takes["eval"] and not takes["brpop"], takes


def wait_until_settled(env: SentinelEnv, event_ids: list[str], timeout: float) -> None:
    """Wait until every event ran, or the master has held none of the queue's messages a while."""
    wanted = set(event_ids)
    drained_since: list[float] = []

    def settled() -> bool:
        if env.remaining():
            drained_since.clear()
            return False
        if not drained_since:
            drained_since.append(time.monotonic())
        done = wanted <= set(env.effects.runs(PLAIN))
        return done or time.monotonic() - drained_since[0] >= DRAINED_FOR

    wait_for(
        settled,
        timeout=timeout,
        interval=0.2,
        message=lambda: (
            f"events to run or the queue to drain: {env.remaining()} left\n" + env.logs()
        ),
    )


#: Events per round of the cost measurement, and rounds (each bus publishes one per round).
COST_EVENTS, COST_ROUNDS = 50, 20


def test_what_waiting_for_the_replica_costs_a_publish(
    sentinel_group: SentinelGroup, tmp_path: Path, figure: Figure
) -> None:
    # Given two buses on the same healthy Sentinel group: one waits for the replica
    envs = {
        replicas: SentinelEnv(sentinel_group, tmp_path, wait_replicas=replicas)
        for replicas in (0, 1)
    }
    try:
        seconds = dict.fromkeys(envs, 0.0)
        for env in envs.values():  # (connections made, scripts loaded: not measured)
            env.bus.publish(create_event(Probe, {"n": -1}))
        # When each publishes the same events, in alternating rounds (the machine's
        # load falls on both alike)
        for _ in range(COST_ROUNDS):
            for replicas, env in envs.items():
                envelopes = [create_event(Probe, {"n": n}) for n in range(COST_EVENTS)]
                started = time.perf_counter()
                for envelope in envelopes:
                    env.bus.publish(envelope)
                seconds[replicas] += time.perf_counter() - started
        # Then the figures (no timing is asserted: a loaded machine)
        events = COST_EVENTS * COST_ROUNDS
        rate = {replicas: events / spent for replicas, spent in seconds.items()}
        extra = (seconds[1] - seconds[0]) / events * 1000
        figure(
            f"wait-cost[redis-sentinel]: events={events} per bus, publish rate "
            f"wait_replicas=0: {rate[0]:.0f}/s, wait_replicas=1: {rate[1]:.0f}/s "
            f"({rate[1] / rate[0]:.2f}x, +{extra:.2f} ms per event)"
        )
        with contextlib.closing(sentinel_group.master_client()) as client:
            for env in envs.values():
                assert client.llen(env.config.queue) == events + 1
    finally:
        for env in envs.values():
            env.close()
