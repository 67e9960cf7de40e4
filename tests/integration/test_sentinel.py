"""eventbus on Redis Sentinel: the atomic transport, the state and the dead letters (issue 13).

A :class:`~tests.sentinels.SentinelGroup` of this module's own (a master,
its replica, three sentinels) is the broker, given to the app as kombu's
``sentinel://...;sentinel://...`` with the ``master_name`` transport option
and nothing else: the worker picks eventbus's transport for it, the
idempotency and ordering state lives behind the same sentinels, and the
dead-letter queue is a list on the master. The fail-overs are in
``tests/faults/test_sentinel_failover.py``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from eventbus import EventBus, PublishError, StateStoreError, create_event
from eventbus.celery.internals.sentinel_transport import SentinelTransport
from tests.brokers import PrivateRedis
from tests.sentinels import SentinelGroup
from tests.support import assert_stays, make_app, running_worker, wait_for

from .helpers import OrderPlaced, Recorder

pytestmark = [pytest.mark.sentinel, pytest.mark.redis]


@pytest.fixture(scope="module")
def sentinel_group() -> Iterator[SentinelGroup]:
    group = SentinelGroup(persistent=False)
    try:
        yield group.start()
    finally:
        group.close()


def waits(group: SentinelGroup) -> int:
    """WAIT commands the master ran since it started."""
    with contextlib.closing(group.master_client()) as client:
        return int(client.info("commandstats").get("cmdstat_wait", {}).get("calls", 0))


def sentinel_app(group: SentinelGroup, **settings: Any) -> Any:
    """An app on the group with no transport and no state URL of its own: all from the URL."""
    app = make_app(group.url, broker_transport=None, eventbus_redis_transport=None, **settings)
    app.conf.eventbus_redis_url = None  # the state: behind the broker's sentinels
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        **group.transport_options,
    }
    return app


@pytest.mark.parametrize("wait_replicas", [0, 1], ids=["no-wait", "wait-1"])
def test_a_worker_on_sentinel_keeps_every_guarantee(
    sentinel_group: SentinelGroup, wait_replicas: int
) -> None:
    # Given an app whose broker is the sentinels, with a plain, an idempotent, an
    # ordered and a failing handler (publishes and dead letters waiting for the
    # replica, or not)
    uid = uuid.uuid4().hex[:10]
    app = sentinel_app(sentinel_group, eventbus_redis_wait_replicas=wait_replicas)
    queue = f"it.sentinel.{uid}"
    bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")
    recorder = Recorder()
    failing = {"on": True}

    def fail(call: Any) -> BaseException | None:
        return ValueError("broken") if failing["on"] else None

    names = {short: f"it.{uid}.{short}" for short in ("plain", "idem", "ordered", "failing")}
    bus.subscribe(OrderPlaced, handler=recorder.handler(names["plain"]), name=names["plain"])
    bus.subscribe(
        OrderPlaced, handler=recorder.handler(names["idem"]), name=names["idem"], idempotent=True
    )
    bus.subscribe(
        OrderPlaced, handler=recorder.handler(names["ordered"]), name=names["ordered"], ordered=True
    )
    bus.subscribe(
        OrderPlaced,
        handler=recorder.handler(names["failing"], fail),
        name=names["failing"],
        max_retries=0,
    )
    waits_before = waits(sentinel_group)
    try:
        with running_worker(app, bus.queues, concurrency=2) as worker:
            # When events of one aggregate are published, one of them twice
            envelopes = [
                create_event(
                    OrderPlaced, {"order_id": "o-1", "quantity": n}, aggregate_id="order-1"
                )
                for n in (1, 2, 3)
            ]
            published = [bus.publish(envelope) for envelope in envelopes]
            bus.publish(published[0])  # the same envelope again: run once by idem and ordered

            # Then the worker consumes with eventbus's transport, found through the sentinels
            assert isinstance(worker.consumer.connection.transport, SentinelTransport)
            wait_for(
                lambda: (
                    recorder.count(names["plain"]) == 4
                    and recorder.count(names["idem"]) == recorder.count(names["ordered"]) == 3
                    and len(bus.dead_letters.list()) == 4
                ),
                message=lambda: (
                    f"runs {recorder.pairs()}, dead letters {len(bus.dead_letters.list())}"
                ),
            )
            # And the idempotent handler ran each event once, the ordered one in sequence
            assert recorder.count(names["idem"]) == 3
            ordered = [c.envelope.sequence for c in recorder.calls(names["ordered"])]
            assert ordered == [1, 2, 3]
            # And the failures are dead letters on the master; a replay after the fix runs
            records = bus.dead_letters.list()
            assert {r.handler for r in records} == {names["failing"]}
            failing["on"] = False
            assert bus.dead_letters.replay_all(handler=names["failing"]) == 4
            wait_for(
                lambda: recorder.count(names["failing"]) == 8,
                message=lambda: f"{recorder.count(names['failing'])}/8 failing runs",
            )
            assert bus.dead_letters.list() == []
            assert recorder.count(names["idem"]) == recorder.count(names["ordered"]) == 3
        # (the state: on the master, under the app's prefix; the takes: the script, no BRPOP)
        with contextlib.closing(sentinel_group.master_client()) as client:
            assert list(client.scan_iter(match=f"{app.conf.eventbus_redis_prefix}*"))
            stats = client.info("commandstats")
        assert "cmdstat_brpop" not in stats and "cmdstat_evalsha" in stats
        # (with wait_replicas: a WAIT after each publish and each dead letter, 4 + 4)
        waited = waits(sentinel_group) - waits_before
        assert waited >= 8 if wait_replicas else waited == 0, waited
    finally:
        app.close()


def test_a_publish_that_waits_for_a_replica_returns_once_the_replica_has_it(
    sentinel_group: SentinelGroup,
) -> None:
    # Given a bus that waits for one replica (the group has one, in sync)
    uid = uuid.uuid4().hex[:10]
    app = sentinel_app(sentinel_group, eventbus_redis_wait_replicas=1)
    bus = EventBus(app, default_queue=f"it.sentinel.{uid}")
    bus.subscribe(OrderPlaced, handler=lambda envelope: None, name=f"it.{uid}.h")
    try:
        # When it publishes an event, and a batch of them
        bus.publish(OrderPlaced(order_id="o-1", quantity=1))
        with bus.batch():
            for n in range(5):
                bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))
        # Then the replica has all six when publish returns
        with contextlib.closing(sentinel_group.replica().client()) as replica:
            assert replica.llen(f"it.sentinel.{uid}") == 6
    finally:
        app.close()


@pytest.fixture
def lone_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis(persistent=False)
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_a_publish_asking_for_a_replica_redis_has_not_is_refused(lone_redis: PrivateRedis) -> None:
    # Given a bus that waits for one replica, on a Redis without any
    uid = uuid.uuid4().hex[:10]
    app = make_app(
        lone_redis.url,
        eventbus_redis_url=lone_redis.url,
        eventbus_redis_wait_replicas=1,
        eventbus_redis_wait_timeout=0.1,
    )
    bus = EventBus(app, default_queue=f"it.lone.{uid}")
    bus.subscribe(OrderPlaced, handler=lambda envelope: None, name=f"it.{uid}.h")
    try:
        # When it publishes, Then publish raises, naming the setting, after its retries
        with pytest.raises(PublishError, match="eventbus_redis_wait_replicas") as err:
            bus.publish(OrderPlaced(order_id="o-1", quantity=1))
        assert "0 of 1 Redis replica" in str(err.value)
        # (the message went out all the same, once per try: it may be delivered)
        attempts = 1 + app.conf.task_publish_retry_policy["max_retries"]
        with contextlib.closing(lone_redis.client()) as client:
            assert client.llen(f"it.lone.{uid}") == attempts
    finally:
        app.close()


def test_a_sequence_number_waits_for_a_replica_too(lone_redis: PrivateRedis) -> None:
    # Given a bus with an ordered handler that waits for one replica, on a Redis without any
    uid = uuid.uuid4().hex[:10]
    app = make_app(
        lone_redis.url,
        eventbus_redis_url=lone_redis.url,
        eventbus_redis_wait_replicas=1,
        eventbus_redis_wait_timeout=0.1,
    )
    bus = EventBus(app, default_queue=f"it.lone.{uid}")
    bus.subscribe(OrderPlaced, handler=lambda envelope: None, name=f"it.{uid}.h", ordered=True)
    try:
        # When it publishes an event of an aggregate, Then the sequence number it would
        # get is refused (a fail-over could give it again), naming the setting
        with pytest.raises(StateStoreError, match="eventbus_redis_wait_replicas") as err:
            bus.publish(OrderPlaced(order_id="o-1", quantity=1), aggregate_id="order-1")
        assert "0 of 1" in str(err.value)
        # and nothing was sent
        with contextlib.closing(lone_redis.client()) as client:
            assert client.llen(f"it.lone.{uid}") == 0
    finally:
        app.close()


def test_an_idle_worker_on_sentinel_waits_for_redis_to_tell_it(
    sentinel_group: SentinelGroup,
) -> None:
    """The idle wake-up (CLIENT TRACKING) works through the sentinels' master too."""
    from .test_redis_transport_idle import settled

    # The master also serves its replica and three sentinels (PING, INFO,
    # PUBLISH of their hello messages, REPLCONF): those are not the worker's.
    chatter = ("ping", "publish", "replconf", "info", "config", "role", "subscribe")

    def calls(client: Any, *names: str) -> int:
        stats = client.info("commandstats")
        return sum(
            int(value["calls"])
            for key, value in stats.items()
            if (key.removeprefix("cmdstat_") in names)
            or (not names and key.removeprefix("cmdstat_") not in chatter)
        )

    # Given a worker idle on the group's master, found through the sentinels
    uid = uuid.uuid4().hex[:10]
    app = sentinel_app(sentinel_group)
    queue = f"it.sentinel-idle.{uid}"
    bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")
    recorder = Recorder()
    bus.subscribe(OrderPlaced, handler=recorder.handler("idle"), name=f"it.{uid}.idle")
    try:
        with (
            contextlib.closing(sentinel_group.master_client()) as client,
            running_worker(app, bus.queues, pool="solo", concurrency=1),
        ):
            bus.publish(OrderPlaced(order_id="s-0", quantity=1))
            wait_for(lambda: recorder.count() == 1, message="the first event handled")
            settled(client, "lindex", "brpop")

            # When it stays idle for 6 s
            takes = lambda: calls(client, "lindex", "brpop")  # noqa: E731
            before, taken, started = calls(client), takes(), time.monotonic()
            assert_stays(lambda: recorder.count() == 1, duration=6.0, message="no handler runs")
            sent = calls(client) - before
            elapsed = time.monotonic() - started

            # Then the master ran at most 2 commands a second for it, none a take
            assert sent / elapsed <= 2.0, f"{sent} commands in {elapsed:.1f} s"
            assert takes() == taken
            # And a new event wakes it
            bus.publish(OrderPlaced(order_id="s-1", quantity=1))
            wait_for(lambda: recorder.count() == 2, message="the second event handled")
    finally:
        app.close()
