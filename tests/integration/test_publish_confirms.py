"""Publisher confirms: on RabbitMQ an event's messages are confirmed by the broker, once per event.

A confirmed publish has returned only after the broker took every message;
a message the broker refuses (here: a queue that rejects every publish) is
a ``PublishError``. On Redis nothing changes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import amqp
import pytest
from amqp import spec
from kombu import Exchange, Queue

from eventbus import DeadLetter, EventBus, PublishError
from eventbus.confirms import PublishNotConfirmed
from tests.support import delete_queues, make_app, require_broker

from .conftest import Env
from .helpers import OrderPlaced, OrderShipped, Recorder, wait_for


@pytest.fixture
def rabbitmq_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """The test's app and bus on RabbitMQ (skips on a laptop without it, fails in CI)."""
    url = require_broker("rabbitmq")
    with ExitStack() as stack:
        yield Env(url, stack, request.node.originalname.removeprefix("test_")[:24])


def trace_wire(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What py-amqp channels do from now on, in order: "publish" and "wait" (for confirms)."""
    trace: list[str] = []
    publish, wait = amqp.Channel._basic_publish, amqp.Channel.wait

    def traced_publish(self: Any, *args: Any, **kwargs: Any) -> Any:
        trace.append("publish")
        return publish(self, *args, **kwargs)

    def traced_wait(self: Any, method: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(method, list) and spec.Basic.Ack in method:
            trace.append("wait")
        return wait(self, method, *args, **kwargs)

    monkeypatch.setattr(amqp.Channel, "_basic_publish", traced_publish)
    monkeypatch.setattr(amqp.Channel, "basic_publish", traced_publish)  # without confirms
    monkeypatch.setattr(amqp.Channel, "wait", traced_wait)
    return trace


@pytest.mark.rabbitmq
def test_an_event_is_confirmed_once_after_all_its_messages(
    rabbitmq_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = rabbitmq_env
    # Given three handlers of one event type, and a bus that has published
    # before (a new connection's first event is confirmed message by message,
    # its second learns the broker's count from its first message)
    for short in ("audit", "mailer", "stats"):
        env.bus.subscribe(OrderPlaced, name=env.name(short), handler=Recorder().handler(short))
    for n in range(2):
        env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))
    assert env.app.conf.broker_transport_options["confirm_publish"] is True

    # When an event is published
    trace = trace_wire(monkeypatch)
    env.bus.publish(OrderPlaced(order_id="o-2", quantity=1))

    # Then its 3 task messages and 3 task-sent events went out first, then
    # the publisher waited for the broker's confirms: once for all of them,
    # not per message (the Acks may come in a few frames, one read each)
    assert trace[:6] == ["publish"] * 6
    assert trace[6:] and set(trace[6:]) == {"wait"}
    # And the 9 handler messages of the three events are on the handler queue
    wait_for(lambda: env.queue_length() == 9, message=lambda: f"{env.queue_length()} queued")


@pytest.mark.rabbitmq
@pytest.mark.parametrize("connected", [False, True], ids=["new-connection", "connected"])
def test_a_message_the_broker_nacks_is_a_publish_error(
    connected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a handler whose queue RabbitMQ refuses every message for (its own
    # declaration: no dead-letter exchange), and a second handler's queue
    url = require_broker("rabbitmq")
    full, other = (f"it.nack.{uuid.uuid4().hex[:12]}{suffix}" for suffix in ("", ".ok"))
    refusing = Queue(
        full,
        Exchange(full, type="direct"),
        routing_key=full,
        queue_arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
    )
    app = make_app(url, eventbus_broker_dead_lettering=False, task_queues=[refusing])
    try:
        bus = EventBus(app, default_queue=other, dead_letter_queue=f"{other}.dlq")
        bus.subscribe(OrderPlaced, name=f"{full}.h", handler=lambda e: None, queue=full)
        bus.subscribe(OrderShipped, name=f"{other}.h", handler=lambda e: None)
        if connected:  # the publisher's connection is up and knows the broker's count
            for n in range(2):
                bus.publish(OrderShipped(order_id=f"o-{n}", carrier="ups"))
        else:  # kombu pools producers per broker URL: close the one the publish will take
            with app.producer_or_acquire() as producer:
                producer.connection.close()

        # When an event for the refusing queue is published
        trace = trace_wire(monkeypatch)
        with pytest.raises(PublishError) as raised:
            bus.publish(OrderPlaced(order_id="o-1", quantity=1))

        # Then the publisher gets a PublishError, caused by the broker's nack
        assert isinstance(raised.value.__cause__, PublishNotConfirmed)
        assert "nacked" in str(raised.value)
        assert bus.published[OrderPlaced.event_type] == 0
        # (confirmed one by one on a new connection, else the task message and
        # its task-sent event first, then the wait that hears the nack)
        first = ["publish", "publish", "wait"] if connected else ["publish", "wait"]
        assert trace[: len(first)] == first, trace
    finally:
        app.close()
        delete_queues(app, full, other, f"{other}.dlq")


@pytest.mark.rabbitmq
def test_a_dead_letter_write_is_confirmed(
    rabbitmq_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = rabbitmq_env
    # Given a bus that has published before, and a dead letter to keep
    name = env.name("h")
    env.bus.subscribe(OrderPlaced, name=name, handler=lambda e: None)
    for n in range(2):
        env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))
    record = DeadLetter(
        handler=name,
        reason="retries_exhausted",
        attempts=3,
        exception_type="ValueError",
        exception_message="boom",
    )

    # When the record is written to the dead-letter store
    trace = trace_wire(monkeypatch)
    env.bus.dead_letter_store.append(record)

    # Then the record and its task-sent event went out, then the broker's confirm was awaited
    assert trace[:2] == ["publish"] * 2
    assert trace[2:] and set(trace[2:]) == {"wait"}
    # And the record is in the dead-letter queue
    assert [r.id for r in env.bus.dead_letters] == [record.id]


@pytest.mark.rabbitmq
def test_confirms_turned_off_are_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a bus on RabbitMQ whose app opts out of publisher confirms
    url = require_broker("rabbitmq")
    queue = f"it.noconfirm.{uuid.uuid4().hex[:12]}"
    app = make_app(url, broker_transport_options={"confirm_publish": False})
    try:
        bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")
        for short in ("audit", "mailer"):
            bus.subscribe(OrderPlaced, name=f"{queue}.{short}", handler=lambda e: None)

        # When events are published
        trace = trace_wire(monkeypatch)
        for n in range(2):
            bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))

        # Then the choice was kept, and nothing waited for the broker
        assert app.conf.broker_transport_options == {"confirm_publish": False}
        assert trace == ["publish"] * 8
    finally:
        app.close()
        delete_queues(app, queue, f"{queue}.dlq")


@pytest.mark.redis
@pytest.mark.parametrize("configured", [False, True], ids=["default", "confirm_publish"])
def test_redis_publishing_is_unchanged(configured: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a bus on Redis with three handlers; confirm_publish set (as
    # celeryconfig does) or not: Redis ignores it, eventbus does not add it
    with ExitStack() as stack:
        env = Env(require_broker("redis"), stack, "confirms.redis")
        assert "confirm_publish" not in env.app.conf.broker_transport_options
        if configured:
            env.app.conf.broker_transport_options = {"confirm_publish": True}
        for short in ("audit", "mailer", "stats"):
            env.bus.subscribe(OrderPlaced, name=env.name(short), handler=Recorder().handler(short))

        # When an event is published
        trace = trace_wire(monkeypatch)
        env.bus.publish(OrderPlaced(order_id="o-1", quantity=1))

        # Then its three messages are on the queue, and no AMQP channel was involved
        wait_for(lambda: env.queue_length() == 3, message=lambda: f"{env.queue_length()} queued")
        assert trace == []
