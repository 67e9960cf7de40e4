"""eventbus on a three-node RabbitMQ cluster, on quorum queues (issue 13, item 2).

The cluster is this pytest run's own (:class:`~tests.faults.cluster.PrivateRabbitMQCluster`);
publishers and workers reach it as Celery's failover list (the three nodes'
URLs joined by ``;``), and the bus declares its handler queues and its DLQ
as quorum queues (``eventbus_queue_type = "quorum"``), replicated on the three
nodes. Real ``celery worker`` subprocesses (prefork) run the handlers of
:mod:`tests.faults.fault_app`.

* Fan-out, retries and dead letters work on the cluster as on one node.
* The node that leads the queues goes down in the middle of a run of 2,000
  events x 3 handlers: its application stopped (``rabbitmqctl stop_app``: it
  closes its connections and leaves the cluster cleanly), or its Erlang VM
  SIGKILLed. It stays down until the cluster has elected a new leader and
  the publisher and both workers carried on through the other nodes, then
  comes back. Every event whose ``publish`` returned must be handled by
  every handler (``lost=0``); a publish that raised may or may not have
  arrived; duplicates are counted.

Each test records its figure lines (see ``conftest.py``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest

from eventbus import PublishError, create_event
from tests.brokers import free_port
from tests.faults.brokers import hold_down
from tests.faults.cluster import PrivateRabbitMQCluster, QueueInfo
from tests.faults.conftest import FaultEnv
from tests.faults.fault_app import ATOMIC, FAILING, FAILING_RETRIES, IDEM, PLAIN, RECOVERING, Flaky
from tests.faults.outcomes import outcome, probes, wait_until_settled
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.rabbitmq]

Figure = Callable[[str], str]

EVENTS = 2000  #: events of the fault test, each to 3 handlers
FEW = 20  #: events of the fan-out, retry and dead-letter tests
FAN_OUT = {"plain": PLAIN, "idem": IDEM, "atomic": ATOMIC}
#: Runs that must complete after the leader went down before it may come back:
#: more than the workers had taken before it did (prefetch: 2 x 2 x 4 messages).
RUNS_THROUGH_OTHERS = 100
#: Seconds the leader may be held down waiting for the others to carry on: a
#: reconnected worker idles about 17 s in Celery's delayed-delivery setup first
#: (it retries the node that is down; see the README's cluster figures).
FAILOVER_TIMEOUT = 90.0


def cluster_of(env: FaultEnv) -> PrivateRabbitMQCluster:
    assert env.broker.cluster is not None, "not a cluster test"
    return env.broker.cluster


def quorum_queues(env: FaultEnv) -> dict[str, QueueInfo]:
    """The bus's handler queue and DLQ, checked to be quorum queues on every node.

    The workers declare both when they start; this waits for that.
    """
    cluster = cluster_of(env)
    names = [env.config.queue, env.config.dead_letter_queue]
    wait_for(
        lambda: all(cluster.queue(name) is not None for name in names),
        timeout=60,
        interval=0.5,
        message=lambda: f"the workers to declare {names}\n{env.logs()}",
    )
    found = {}
    for name in names:
        info = cluster.queue(name)
        assert info is not None
        assert info.type == "quorum", (
            f"{name} is a {info.type} queue: eventbus_queue_type='quorum' did not make it a "
            "quorum queue"
        )
        found[name] = cluster.wait_queue_whole(name)
    return found


def short(node: str) -> str:
    """``eventbus-cluster-1a2b3c-0-4d5e6f7a@localhost`` -> ``node0``."""
    return f"node{node.split('@')[0].split('-')[-2]}"


def test_fan_out_on_quorum_queues_of_the_cluster(
    cluster_env: Callable[..., FaultEnv], figure: Figure
) -> None:
    # Given a worker running three handlers of Probe, on the cluster's quorum queues
    env = cluster_env("cluster")
    env.start_workers(1, concurrency=2)
    queues = quorum_queues(env)

    # When events are published through the failover list
    envelopes = probes(FEW)
    for envelope in envelopes:
        env.bus.publish(envelope)
    event_ids = [str(envelope.event_id) for envelope in envelopes]

    # Then each event runs once in each handler
    wait_until_settled(env, list(FAN_OUT.values()), event_ids, timeout=60)
    results = {label: outcome(env, handler, event_ids) for label, handler in FAN_OUT.items()}
    handler_queue = queues[env.config.queue]
    figure(
        f"cluster-fanout[{env.label}]: events={FEW} handlers={len(FAN_OUT)} "
        f"handled={'/'.join(str(r.handled) for r in results.values())} "
        f"duplicate_effects={sum(r.duplicate_effects for r in results.values())} "
        f"(handler queue and DLQ: quorum, {len(handler_queue.members)} replicas online, "
        f"leader {short(handler_queue.leader)})"
    )
    assert all(r.handled == FEW and r.duplicate_effects == 0 for r in results.values()), results
    assert env.dead_letters() == 0


def test_retries_and_dead_letters_on_quorum_queues_of_the_cluster(
    cluster_env: Callable[..., FaultEnv], figure: Figure
) -> None:
    # Given a worker running two handlers of Flaky on the cluster's quorum queues:
    # one fails its first two attempts, the other every attempt
    env = cluster_env("cluster")
    env.start_workers(1, concurrency=2)
    quorum_queues(env)

    # When events are published
    envelopes = [create_event(Flaky, {"n": n}) for n in range(FEW)]
    for envelope in envelopes:
        env.bus.publish(envelope)
    event_ids = [str(envelope.event_id) for envelope in envelopes]
    attempts = FAILING_RETRIES + 1

    # Then the first runs every event again after its backoff and succeeds on
    # its third attempt; the second is dead-lettered after its third, once per event
    def done() -> bool:
        recovered = env.effects.runs(RECOVERING)
        return (
            len(recovered) == FEW
            and min(recovered.values()) >= attempts
            and env.dead_letters() >= FEW
        )

    wait_for(
        done,
        timeout=90,
        interval=0.5,
        message=lambda: (
            f"{FEW} events run {attempts} times by {RECOVERING} "
            f"({Counter(env.effects.runs(RECOVERING).values())}) and {FEW} dead letters "
            f"({env.dead_letters()})\n{env.logs()}"
        ),
    )
    wait_for(
        lambda: env.remaining() == 0,
        timeout=30,
        interval=0.5,
        message=lambda: f"the handler queue empty ({env.remaining()} left)",
    )
    recovered = env.effects.runs(RECOVERING)
    failed = env.effects.runs(FAILING)
    records = list(env.bus.dead_letter_store)
    per_event = Counter(record.event_id for record in records)
    reasons = Counter(record.reason for record in records)
    lost = [e for e in event_ids if recovered.get(e) != attempts or per_event.get(e) != 1]
    # (The retries waited in Celery's delay queues, quorum queues of the cluster too.)
    delay_queue = cluster_of(env).queue("celery_delayed_0")
    figure(
        f"cluster-retries[{env.label}]: events={FEW} retried={sum(recovered.values()) - FEW} "
        f"handled={sum(1 for runs in recovered.values() if runs == attempts)} "
        f"dead_lettered={len(per_event)} lost={len(lost)} "
        f"(dead letters by reason {dict(reasons)}, {FAILING} runs {sum(failed.values())}; "
        f"delay queues: {delay_queue and delay_queue.type}, "
        f"{delay_queue and len(delay_queue.members)} replicas)"
    )
    assert delay_queue is not None and delay_queue.type == "quorum", delay_queue
    assert set(recovered) == set(event_ids) and set(recovered.values()) == {attempts}, recovered
    assert set(per_event) == set(event_ids) and set(per_event.values()) == {1}, per_event
    assert reasons == {"retries_exhausted": FEW}, reasons
    assert {record.handler for record in records} == {FAILING}
    assert {record.attempts for record in records} == {attempts}
    assert set(failed.values()) == {attempts}, failed


def test_publish_fails_over_to_the_next_url(
    cluster_env: Callable[..., FaultEnv], figure: Figure
) -> None:
    # Given a bus whose failover list starts with a broker that is down (no
    # one listens on its port), then the cluster's nodes
    env = cluster_env("count")
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    app = env.bus.app
    app.conf.broker_url = f"{down};{cluster_of(env).url()}"
    env.bus.dead_letter_store.declare()  # (the handler queue's dead-letter exchange)

    # When events are published
    envelopes = probes(FEW)
    refused = []
    for envelope in envelopes:
        try:
            env.bus.publish(envelope)
        except PublishError as exc:
            refused.append(exc)

    # Then each publish returned, sent through the next URL: the events are on the queue
    wait_for(
        lambda: env.remaining() >= FEW - len(refused),
        timeout=30,
        interval=0.5,
        message=lambda: f"{FEW - len(refused)} messages on the handler queue ({env.remaining()})",
    )
    figure(
        f"cluster-failover[{env.label}]: published={FEW} acknowledged={FEW - len(refused)} "
        f"publish_errors={len(refused)} on_queue={env.remaining()} (first URL down)"
    )
    assert not refused, f"{len(refused)} publishes refused; the first: {refused[0]}"
    assert env.remaining() == FEW


@pytest.mark.faults
@pytest.mark.timeout(360)  # the node held down, brought back, 6,000 runs on a loaded machine
@pytest.mark.parametrize("fault", ["stop_app", "sigkill"])
def test_the_queues_leader_going_down_loses_no_acknowledged_event(
    cluster_env: Callable[..., FaultEnv], figure: Figure, fault: str
) -> None:
    # Given two prefork workers running three handlers of Probe, and a
    # publisher, all connected through the failover list (the first node first),
    # on quorum queues the first node leads
    env = cluster_env("kill")
    cluster = cluster_of(env)
    workers = env.start_workers(2, concurrency=2)
    queue = quorum_queues(env)[env.config.queue]
    leader = cluster.node(queue.leader)
    assert leader is cluster.nodes[0], (
        f"the first node of the failover list (where clients connect) should lead the queue "
        f"its workers declared: {queue}"
    )
    envelopes = probes(EVENTS)
    event_ids = [str(envelope.event_id) for envelope in envelopes]

    def runs_done() -> int:
        return sum(env.effects.handled(handler) for handler in FAN_OUT.values())

    # When 2,000 events are published, and a third of the way, with both
    # workers running, the leader's application is stopped, or its VM killed
    publisher = env.publisher(envelopes).start()
    wait_for(
        lambda: publisher.attempted >= EVENTS // 3 and len(env.effects.by_worker()) == 2,
        timeout=120,
        interval=0.01,
        message=lambda: (
            f"a third published and both workers running: {publisher.attempted} published, "
            f"runs by worker {env.effects.by_worker()}\n{env.logs()}"
        ),
    )
    down_at = time.monotonic()
    if fault == "stop_app":
        cluster.stop(leader)  # returns once the node closed its connections
    else:
        cluster.crash(leader)
    # From here on, what is acknowledged and run went through the other nodes.
    published_at, runs_at, acked_at = publisher.attempted, runs_done(), len(publisher.acknowledged)
    seen: dict[str, float] = {}  # seconds after the fault each party carried on

    def failed_over() -> bool:
        # A new leader; the workers saw the outage and ran more through other
        # nodes; the publisher published through another node (or was done).
        def leader_moved() -> bool:
            info = cluster.queue(env.config.queue)
            return info is not None and info.leader not in ("", leader.node)

        milestones: dict[str, Callable[[], bool]] = {
            "new leader": leader_moved,
            "workers saw it": lambda: all(worker.broker_errors() for worker in workers),
            f"{RUNS_THROUGH_OTHERS} runs": lambda: runs_done() >= runs_at + RUNS_THROUGH_OTHERS,
            "publishing": lambda: (
                len(publisher.acknowledged) > acked_at or publisher.attempted == EVENTS
            ),
        }
        for name, reached in milestones.items():
            if name not in seen and reached():
                seen[name] = time.monotonic() - down_at
        return len(seen) == len(milestones)

    # and it stays down until the cluster and its clients carried on without it
    hold_down(
        failed_over,
        lambda: (
            f"the cluster and its clients to carry on (so far: {seen}): a new leader, "
            f"workers that saw the outage ({[w.broker_errors() for w in workers]} broker "
            f"errors logged) and ran {RUNS_THROUGH_OTHERS} more runs ({runs_done() - runs_at} "
            f"since), the publisher publishing ({len(publisher.acknowledged) - acked_at} "
            f"acknowledged since, {publisher.attempted}/{EVENTS} attempted, first error: "
            f"{publisher.first_error or '-'})"
        ),
        timeout=FAILOVER_TIMEOUT,
    )
    down_for = time.monotonic() - down_at
    back_in = cluster.revive(leader)
    cluster.wait_queue_whole(env.config.queue)

    # Then every event whose publish returned is handled by every handler
    publisher.join(timeout=120)
    acknowledged, refused = publisher.acknowledged, publisher.refused
    attempted = event_ids[: publisher.attempted]
    wait_until_settled(env, list(FAN_OUT.values()), acknowledged, timeout=120)
    assert all(worker.alive() for worker in workers), env.logs()
    results = {label: outcome(env, handler, attempted) for label, handler in FAN_OUT.items()}
    returned = set(acknowledged)
    lost = sorted({e for r in results.values() for e in r.lost if e in returned})
    handled_by_all = set(attempted).difference(*(r.lost for r in results.values()))
    duplicates = {label: r.duplicate_effects for label, r in results.items()}
    dead_letters = env.dead_letters()
    figure(
        f"cluster-kill[{env.label}] {fault}: published={len(attempted)} "
        f"acknowledged={len(acknowledged)} handled={len(handled_by_all)} lost={len(lost)} "
        f"duplicate_effects={sum(duplicates.values())} (plain/idem/atomic "
        f"{'/'.join(map(str, duplicates.values()))}; publish_errors={len(refused)}, "
        f"refused but delivered={len(set(refused) & handled_by_all)}"
        f"{f' (the first: ...{publisher.first_error[-60:]})' if refused else ''}; leader "
        f"{short(leader.node)} down at {published_at} published, {runs_at}/{3 * EVENTS} runs, "
        f"{', '.join(f'{name} {at:.1f}s' for name, at in seen.items())} after; "
        f"down {down_for:.1f}s, whole again {back_in:.1f}s later; "
        f"slowest publish {publisher.slowest:.1f}s, "
        f"dead_letters={dead_letters})"
    )
    assert not lost, f"publish returned, and never handled: {lost[:5]}"
    assert len(attempted) == EVENTS and len(acknowledged) + len(refused) == EVENTS
    # An idempotent handler whose effect commits with its done mark repeats nothing.
    assert duplicates["atomic"] == 0, duplicates
    assert dead_letters == 0
