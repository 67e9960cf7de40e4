"""``bus.batch()``: many events published together, all sent (and confirmed) when it ends.

On Redis a batch's messages go out in pipelined round trips; on RabbitMQ the
broker's confirms are waited for once, at the end. What a user sees: every
event's handlers run once; a batch that could not be sent raises
``PublishError``; a block that raises sends nothing it had not sent yet.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from eventbus import EventBus, InMemoryEventBus, PublishError

from .conftest import Env, make_app
from .helpers import OrderPlaced, Recorder, wait_for
from .test_publish_confirms import close_pooled_connection, trace_wire

HANDLERS = ("audit", "mailer", "stats")


def subscribe(env: Env, recorder: Recorder) -> None:
    for short in HANDLERS:
        env.bus.subscribe(OrderPlaced, name=env.name(short), handler=recorder.handler(short))


def test_every_event_of_a_batch_is_handled_once(env: Env) -> None:
    # Given three handlers of one event type and a running worker
    recorder = Recorder()
    subscribe(env, recorder)
    env.start_worker()

    # When 40 events are published in one batch (and one nested batch)
    with env.bus.batch():
        envelopes = [env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1)) for n in range(30)]
        with env.bus.batch():
            envelopes += [
                env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1)) for n in range(30, 40)
            ]

    # Then every handler ran every event exactly once
    wait_for(lambda: recorder.count() == 120, message=lambda: f"{recorder.count()}/120 runs")
    expected = {(h, str(e.event_id)) for h in HANDLERS for e in envelopes}
    assert set(recorder.pairs()) == expected
    assert set(recorder.pairs().values()) == {1}
    assert env.bus.published["it.order.placed"] == 40


def test_an_exception_in_the_block_sends_nothing_unsent(env: Env) -> None:
    # Given three handlers (no worker: the queue keeps what arrives)
    subscribe(env, Recorder())
    env.declare_handler_queue()

    # When the block raises after publishing 5 events
    with pytest.raises(ValueError, match="changed my mind"), env.bus.batch():
        for n in range(5):
            env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))
        raise ValueError("changed my mind")

    # Then on Redis nothing was sent (the pipeline was discarded); RabbitMQ
    # sends each message as it is published, so its 15 are there
    expected = 0 if env.kind == "redis" else 15
    assert env.queue_length() == expected


@pytest.mark.optimization
@pytest.mark.rabbitmq
def test_a_rabbitmq_batch_waits_for_confirms_once(
    rabbitmq_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = rabbitmq_env
    subscribe(env, Recorder())
    close_pooled_connection(env.app)
    trace = trace_wire(monkeypatch)

    with env.bus.batch():
        for n in range(20):
            env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))
        # Nothing waited for a confirm inside the block
        assert "wait" not in trace

    # 60 task messages and their 60 task-sent events in one message (the
    # batch's, up to 100 in a message), then the wait for all confirms
    assert trace[:61] == ["publish"] * 61
    assert trace[61:] and set(trace[61:]) == {"wait"}
    wait_for(lambda: env.queue_length() == 60, message=lambda: f"{env.queue_length()} queued")


def test_a_batch_the_broker_does_not_take_is_a_publish_error(closed_broker_url: str) -> None:
    # Given a bus whose broker is not there
    queue = f"it.batch-down.{uuid.uuid4().hex[:12]}"
    app = make_app(
        closed_broker_url,
        default_queue=queue,
        broker_connection_timeout=1,
        task_publish_retry_policy={"max_retries": 0},
    )
    try:
        bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")
        bus.subscribe(OrderPlaced, name=f"{queue}.h", handler=Recorder().handler("h"))

        # When events are published in a batch
        with pytest.raises(PublishError, match="batch") as raised, bus.batch():
            for n in range(3):
                bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))

        # Then the error says the batch was not sent, and why
        assert "publish them again" in str(raised.value) or "in a batch" in str(raised.value)
        # And nothing counts as published (the metric eventbus_events_published_total)
        assert bus.published[OrderPlaced.event_type] == 0
    finally:
        app.close()


def test_a_failed_batch_refuses_further_publishes(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a batch whose second publish fails on the wire
    subscribe(env, Recorder())
    calls = {"n": 0}
    task = env.bus.subscription(env.name("audit")).task
    original = task.apply_async

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionResetError("broker went away")
        return original(*args, **kwargs)

    monkeypatch.setattr(task, "apply_async", flaky)
    raised: list[str] = []
    with pytest.raises(PublishError), env.bus.batch():
        for n in range(3):
            try:
                env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))
            except PublishError as exc:  # a caller that carries on
                raised.append(str(exc))

    # Then the failing publish and every later one raised, and so did the block
    assert len(raised) == 2
    assert "broker went away" in raised[0]
    assert "already failed" in raised[1]
    # And no event of the failed batch counts as published (eventbus_events_published_total)
    assert env.bus.published[OrderPlaced.event_type] == 0


def test_the_in_memory_bus_runs_handlers_inside_a_batch() -> None:
    bus = InMemoryEventBus()
    recorder = Recorder()
    bus.subscribe(OrderPlaced, name="batch.mem.h", handler=recorder.handler("h"))
    with bus.batch():
        bus.publish(OrderPlaced(order_id="o-1", quantity=1))
        assert recorder.count() == 1
