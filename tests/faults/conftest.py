"""Fixtures of the fault-injection tests: a broker that fails, worker subprocesses, figures.

Every test runs on Redis and on RabbitMQ (``fault_broker``). The broker is
one the test may break: on Redis a private ``redis-server`` of the test's
own, on RabbitMQ a private node of the pytest run's own (see
:mod:`tests.faults.brokers`); idempotency and ordering state and the
handlers' effects stay on the shared Redis (``tests.support.STATE_REDIS_URL``)
under a key prefix of the test's own, so a broker fault never touches them.
The Redis workers run eventbus's transport (:mod:`eventbus.celery.internals.redis_transport`),
or kombu's own with ``EVENTBUS_FAULTS_TRANSPORT=kombu``.

Each test records one figure line per result (``kill[redis] atomic: published=2000
handled=2000 lost=0 duplicate_effects=0``): printed, and listed again at the
end of the pytest run by :func:`pytest_terminal_summary`. A failing test's
report carries its workers' logs.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from _pytest.terminal import TerminalReporter
from kombu.connection import Connection

from eventbus import Envelope, PublishError
from tests.brokers import PrivateRedis, require_server
from tests.faults.brokers import (
    HOLD_TIMEOUT,
    RABBITMQ_SERVER,
    BrokerRestart,
    Describe,
    PrivateRabbitMQ,
    hold_down,
    restart_rabbitmq,
    restart_redis,
)
from tests.faults.cluster import PrivateRabbitMQCluster
from tests.faults.fault_app import REDIS_TRANSPORTS, Effects, FaultConfig, HandlerSet, build_bus
from tests.faults.workers import WorkerProcess
from tests.support import (
    STATE_REDIS_URL,
    delete_queues,
    delete_state,
    require_broker,
    wait_for,
)

FIGURES: list[str] = []  #: every figure line of this pytest run, in order

#: The Redis transport of the workers (a key of REDIS_TRANSPORTS): eventbus's by
#: default; ``EVENTBUS_FAULTS_TRANSPORT=kombu`` shows kombu's own loss.
REDIS_TRANSPORT = os.environ.get("EVENTBUS_FAULTS_TRANSPORT", "eventbus")
if REDIS_TRANSPORT not in REDIS_TRANSPORTS:
    raise ValueError(f"EVENTBUS_FAULTS_TRANSPORT={REDIS_TRANSPORT!r}: not a Redis transport")

_ENVS = pytest.StashKey["FaultEnv"]()
_NODE = pytest.StashKey[PrivateRabbitMQ]()
_CLUSTER = pytest.StashKey[PrivateRabbitMQCluster]()
_LAST_CLUSTER_TEST = pytest.StashKey[str]()


class FaultBroker:
    """The broker of one fault test, and how to restart it."""

    def __init__(
        self,
        kind: str,
        rabbitmq: PrivateRabbitMQ | None = None,
        *,
        cluster: PrivateRabbitMQCluster | None = None,
    ) -> None:
        self.kind = kind
        self.private: PrivateRedis | None = None
        self.rabbitmq = rabbitmq
        self.cluster = cluster
        #: How the bus declares its queues (``eventbus_queue_type``): quorum on the cluster.
        self.queue_type = "classic"
        if kind == "redis":
            self.private = PrivateRedis()
            self.private.start()
            self.url = self.private.url
        elif cluster is not None:
            self.url = cluster.url()  # every node, in order: Celery's failover
            self.queue_type = "quorum"
        else:
            assert rabbitmq is not None, "a RabbitMQ fault broker needs the private node"
            self.url = rabbitmq.url
        self.restarts: list[BrokerRestart] = []

    def restart(
        self,
        *,
        until: Callable[[], bool],
        waiting_for: Describe,
        on_down: Callable[[], None] = lambda: None,
    ) -> BrokerRestart:
        """Crash (Redis) or stop (RabbitMQ) the broker and bring it back, in a thread.

        ``on_down`` runs once the broker is down; it stays down until
        ``until()`` says the outage was seen (see
        :func:`tests.faults.brokers.hold_down`; ``waiting_for`` says by whom).
        """
        private, rabbitmq = self.private, self.rabbitmq
        if private is not None:
            restart = BrokerRestart(
                lambda: restart_redis(
                    private, until=until, waiting_for=waiting_for, on_down=on_down
                )
            )
        else:
            assert rabbitmq is not None
            restart = BrokerRestart(
                lambda: restart_rabbitmq(
                    rabbitmq, until=until, waiting_for=waiting_for, on_down=on_down
                )
            )
        self.restarts.append(restart)
        return restart.start()

    def refuse_writes(
        self,
        *,
        until: Callable[[], bool],
        waiting_for: Describe,
        on_refusing: Callable[[], None] = lambda: None,
    ) -> float:
        """Make the broker refuse writes until ``until()`` says it was seen; return the seconds.

        ``on_refusing`` runs once the broker refuses writes (on RabbitMQ: once
        its memory alarm is raised, before a publish is held).

        Redis stays up and full (``maxmemory 1``, ``noeviction``: every
        command that may grow memory gets an OOM error, reads and deletes
        still work). RabbitMQ stops in the middle of a write: a memory alarm
        holds the first publish unconfirmed, then the node stops
        (``stop_app``) and starts again.
        """
        started = time.monotonic()
        private, rabbitmq = self.private, self.rabbitmq
        if private is None:
            assert rabbitmq is not None
            rabbitmq.block_publishers()
            try:
                on_refusing()
                wait_for(
                    lambda: rabbitmq.blocked_connections() > 0,
                    timeout=HOLD_TIMEOUT,
                    message="a publish held by the memory alarm (a write in flight)",
                )
                self.restart(until=until, waiting_for=waiting_for).join()
            finally:
                rabbitmq.block_publishers(False)
            return time.monotonic() - started
        with contextlib.closing(private.client()) as client:
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", 1)
            try:
                on_refusing()
                hold_down(until, waiting_for)
            finally:
                client.config_set("maxmemory", 0)
        return time.monotonic() - started

    def close(self) -> None:
        for restart in self.restarts:
            with contextlib.suppress(AssertionError):  # the test reported it
                restart.join()
        if self.private is not None:
            self.private.close()
        if self.rabbitmq is not None:
            self.rabbitmq.ensure_running()  # the next test's broker too
        if self.cluster is not None:
            self.cluster.ensure_whole()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Launch the private RabbitMQ node, and the cluster, now if their tests are to run.

    A node takes 6 to 20 seconds to boot on a 2-core machine: it boots while
    the first (Redis) tests run. One node per session: a restart of its
    application takes about a second. The cluster's three nodes boot at once
    and join in a thread (about 12 s on an idle machine), while the tests
    before the cluster's run.
    """
    wanted = any(
        isinstance(item, pytest.Function)
        and getattr(item, "callspec", None) is not None
        and item.callspec.params.get("fault_broker") == "rabbitmq"
        for item in session.items
    )
    if not os.access(RABBITMQ_SERVER, os.X_OK):
        return  # the fixtures skip or fail
    if wanted:
        node = PrivateRabbitMQ()
        node.launch()
        session.config.stash[_NODE] = node
    cluster_tests = [
        item
        for item in session.items
        if item.get_closest_marker("cluster")
        or "rabbitmq_cluster" in getattr(item, "fixturenames", ())
    ]
    if cluster_tests:
        cluster = PrivateRabbitMQCluster()
        session.config.stash[_CLUSTER] = cluster
        session.config.stash[_LAST_CLUSTER_TEST] = cluster_tests[-1].nodeid
        cluster.launch()


@pytest.hookimpl(trylast=True)  # after the test's fixtures are torn down (they revive nodes)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Kill the cluster once its last test is done: the tests after it need none of its CPU."""
    if item.nodeid == item.config.stash.get(_LAST_CLUSTER_TEST, None):
        cluster = item.config.stash.get(_CLUSTER, None)
        if cluster is not None:
            cluster.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    node = session.config.stash.get(_NODE, None)
    if node is not None:
        node.close()
    cluster = session.config.stash.get(_CLUSTER, None)
    if cluster is not None:
        cluster.close()


@pytest.fixture(scope="session")
def private_rabbitmq(request: pytest.FixtureRequest) -> PrivateRabbitMQ:
    """The RabbitMQ node of this pytest run's own, once it answers; killed at the session's end."""
    node = request.config.stash.get(_NODE, None)
    if node is None:
        node = PrivateRabbitMQ()
        node.launch()
        request.config.stash[_NODE] = node
    waited = node.wait_up()
    booted = node.boot_seconds()
    FIGURES.append(
        f"private RabbitMQ node {node.node}: booted in "
        f"{'?' if booted is None else f'{booted:.1f}'}s (the first RabbitMQ test waited "
        f"{waited:.1f}s for it)"
    )
    return node


@pytest.fixture(scope="session")
def rabbitmq_cluster(request: pytest.FixtureRequest) -> PrivateRabbitMQCluster:
    """The three-node RabbitMQ cluster of this pytest run, once formed; killed at the end."""
    require_server(RABBITMQ_SERVER, "the cluster tests start three RabbitMQ nodes")
    cluster = request.config.stash.get(_CLUSTER, None)
    if cluster is None:
        cluster = PrivateRabbitMQCluster()
        request.config.stash[_CLUSTER] = cluster
        cluster.launch()
    waited = cluster.wait_formed()
    boots = [node.boot_seconds() for node in cluster.nodes]
    FIGURES.append(
        f"private RabbitMQ cluster of {len(cluster.nodes)} nodes: formed in "
        f"{cluster.formed_in:.1f}s (nodes booted in "
        f"{', '.join('?' if b is None else f'{b:.1f}' for b in boots)}s, joined in "
        f"{cluster.joined_in:.1f}s; the first cluster test waited {waited:.1f}s for it)"
    )
    return cluster


@pytest.fixture
def cluster_broker(rabbitmq_cluster: PrivateRabbitMQCluster) -> Iterator[FaultBroker]:
    """The cluster as a test's broker (quorum queues); made whole again after the test."""
    require_broker("redis")  # the shared Redis keeps the state and the effects
    broker = FaultBroker("rabbitmq-quorum", cluster=rabbitmq_cluster)
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def fault_broker(request: pytest.FixtureRequest) -> Iterator[FaultBroker]:
    """A broker each test may break: a private redis-server, or the private RabbitMQ node."""
    require_broker("redis")  # the shared Redis keeps the state and the effects
    if request.param == "rabbitmq":
        broker = FaultBroker("rabbitmq", request.getfixturevalue("private_rabbitmq"))
    else:
        broker = FaultBroker("redis")
    try:
        yield broker
    finally:
        broker.close()


class Publisher:
    """Publishes envelopes from a thread, counting what the bus acknowledged and refused."""

    def __init__(
        self, publish: Callable[[Envelope[Any]], object], envelopes: Sequence[Envelope[Any]]
    ) -> None:
        self._publish = publish
        self.envelopes = list(envelopes)
        self.acknowledged: list[str] = []  #: event ids whose publish() returned
        self.refused: list[str] = []  #: event ids whose publish() raised PublishError
        self.first_error = ""
        self.slowest = 0.0  #: seconds the slowest publish() took, returned or raised
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def _run(self) -> None:
        try:
            for envelope in self.envelopes:
                if self._stop.is_set():
                    return
                started = time.monotonic()
                try:
                    self._publish(envelope)
                except PublishError as exc:
                    self.refused.append(str(envelope.event_id))
                    self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"
                else:
                    self.acknowledged.append(str(envelope.event_id))
                finally:
                    self.slowest = max(self.slowest, time.monotonic() - started)
        except BaseException as exc:  # re-raised by join()
            self.error = exc

    def start(self) -> Publisher:
        self._thread.start()
        return self

    @property
    def attempted(self) -> int:
        return len(self.acknowledged) + len(self.refused)

    def stop(self) -> None:
        """Publish nothing more (a failed test's teardown); wait for the publish in progress."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(30)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(
                f"publishing did not finish within {timeout}s ({self.attempted} attempted)"
            )
        if self.error is not None:
            raise AssertionError(f"publishing failed: {self.error!r}") from self.error


class FaultEnv:
    """One fault test's world: its broker, a publishing bus, the effects, the workers."""

    def __init__(
        self, broker: FaultBroker, handlers: HandlerSet, log_dir: Path, *, gated: bool = False
    ) -> None:
        uid = uuid.uuid4().hex[:10]
        self.broker = broker
        self.kind = broker.kind
        self.log_dir = log_dir
        self.config = FaultConfig(
            broker_url=broker.url,
            queue_type=broker.queue_type,
            queue=f"faults.{handlers}.{uid}",
            dead_letter_queue=f"faults.{handlers}.{uid}.dlq",
            state_url=STATE_REDIS_URL,
            state_prefix=f"eventbus-faults-{uid}:",
            effects_url=STATE_REDIS_URL,
            effects_prefix=f"eventbus-faults-{uid}:fx:",
            handlers=handlers,
            gated=gated,
            transport=REDIS_TRANSPORT,
        )
        self.effects = Effects(self.config.effects_url, self.config.effects_prefix)
        self.bus = build_bus(self.config, self.effects)
        self.app = self.bus.app
        self.workers: list[WorkerProcess] = []
        self.publishers: list[Publisher] = []

    @property
    def label(self) -> str:
        """Figure lines' broker: ``redis``, ``redis+kombu`` (kombu's transport), ``rabbitmq``."""
        if self.kind == "redis" and self.config.transport != "eventbus":
            return f"redis+{self.config.transport}"
        return self.kind

    def start_workers(
        self, count: int, *, concurrency: int, loglevel: str = "WARNING"
    ) -> list[WorkerProcess]:
        """Start ``count`` prefork workers (``loglevel=INFO`` logs every task run)."""
        started = [
            WorkerProcess(
                replace(self.config, worker=f"w{len(self.workers) + i}"),
                self.log_dir,
                concurrency=concurrency,
                loglevel=loglevel,
            ).start()
            for i in range(count)
        ]
        self.workers.extend(started)
        return started

    def publisher(self, envelopes: Sequence[Envelope[Any]]) -> Publisher:
        publisher = Publisher(self.bus.publish, envelopes)
        self.publishers.append(publisher)
        return publisher

    def remaining(self) -> int:
        """Messages of the handler queue the broker holds: waiting, or delivered and unacked."""
        if self.broker.cluster is not None:
            return self.broker.cluster.messages(self.config.queue)
        if self.broker.rabbitmq is not None:
            return self.broker.rabbitmq.messages(self.config.queue)
        with Connection(self.broker.url, connect_timeout=3) as conn:
            channel = conn.default_channel
            client = channel.client
            # kombu keeps one list per priority step, and every delivered,
            # unacked message in one hash (the broker is this test's alone).
            keys = {channel._q_for_pri(self.config.queue, pri) for pri in channel.priority_steps}
            return sum(int(client.llen(key)) for key in keys) + int(client.hlen("unacked"))

    def waiting(self) -> int:
        """Messages of the handler queue waiting on the private Redis, not yet taken by a worker."""
        assert self.broker.private is not None, "only on Redis"
        with Connection(self.broker.url, connect_timeout=3) as conn:
            channel = conn.default_channel
            keys = {channel._q_for_pri(self.config.queue, pri) for pri in channel.priority_steps}
            return sum(int(channel.client.llen(key)) for key in keys)

    def takes(self) -> dict[str, int]:
        """How the private Redis's clients took messages since it (re)started: commands by name.

        ``brpop`` (kombu's transport), ``eval`` and ``evalsha`` (eventbus's script).
        """
        assert self.broker.private is not None, "only on Redis"
        with contextlib.closing(self.broker.private.client()) as client:
            stats = client.info("commandstats")
        return {
            name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
            for name in ("brpop", "eval", "evalsha")
        }

    def failed_calls(self, command: str) -> int:
        """Calls of ``command`` the private Redis refused (out of memory) or failed since its start.

        eventbus's Redis dead-letter store writes with ``eval``; its transport takes
        with ``evalsha`` (``eval`` once).
        """
        assert self.broker.private is not None, "only on Redis"
        with contextlib.closing(self.broker.private.client()) as client:
            stats = client.info("commandstats").get(f"cmdstat_{command}", {})
        return int(stats.get("rejected_calls", 0)) + int(stats.get("failed_calls", 0))

    def dead_letters(self) -> int:
        """Messages in the DLQ, copies included (cheap: not a browse on RabbitMQ)."""
        return self.bus.dead_letter_store.count()

    def logs(self) -> str:
        parts = [worker.log() for worker in self.workers]
        if self.broker.private is not None:
            parts.append(f"--- private redis-server:\n{self.broker.private.log()}")
        if self.broker.rabbitmq is not None:
            parts.append(f"--- private RabbitMQ node:\n{self.broker.rabbitmq.log()}")
        if self.broker.cluster is not None:
            parts.append(f"--- private RabbitMQ cluster:\n{self.broker.cluster.log()}")
        return "\n".join(parts)

    def close(self) -> None:
        try:
            for publisher in self.publishers:
                publisher.stop()
            for worker in self.workers:
                worker.kill()
        finally:
            self.effects.close()
            if self.broker.private is None:
                delete_queues(self.app, *self.config.queues, self.config.dead_letter_queue)
            delete_state(self.app)  # the state and the effects share its prefix
            self.app.close()


def _envs(
    broker: FaultBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., FaultEnv]]:
    envs: list[FaultEnv] = []

    def make(handlers: HandlerSet, *, gated: bool = False) -> FaultEnv:
        env = FaultEnv(broker, handlers, tmp_path, gated=gated)
        envs.append(env)
        request.node.stash[_ENVS] = env
        return env

    try:
        yield make
    finally:
        for env in envs:
            env.close()


@pytest.fixture
def fault_env(
    fault_broker: FaultBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., FaultEnv]]:
    """Build the test's :class:`FaultEnv` for a handler set; everything is cleaned up after."""
    yield from _envs(fault_broker, tmp_path, request)


@pytest.fixture
def cluster_env(
    cluster_broker: FaultBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., FaultEnv]]:
    """:func:`fault_env` on the three-node cluster, with quorum queues."""
    yield from _envs(cluster_broker, tmp_path, request)


@pytest.fixture
def figure() -> Callable[[str], str]:
    """Record a figure line: printed now, listed again at the end of the run."""

    def record(line: str) -> str:
        print(line)
        FIGURES.append(line)
        return line

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    env = item.stash.get(_ENVS, None)
    if env is not None and report.failed:
        report.sections.append(("fault test workers' logs", env.logs()))
    return report


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("delivery under faults")
        for line in FIGURES:
            terminalreporter.write_line(line)
