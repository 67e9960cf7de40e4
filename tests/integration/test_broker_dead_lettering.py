"""RabbitMQ's own dead-lettering as a safety net: what the broker drops lands in the DLQ."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from kombu import Queue

from .conftest import Env
from .helpers import OrderPlaced, Recorder, wait_for


def test_a_message_the_broker_dead_letters_is_a_replayable_record(env: Env) -> None:
    if env.kind != "rabbitmq":
        pytest.skip("a dead-letter exchange is RabbitMQ's; Redis has no broker-side rejection")
    # Given a handler whose event waits in its queue (no worker yet), and the DLQ declared
    recorder = Recorder()
    name = env.name("ledger")
    env.bus.subscribe(OrderPlaced, handler=recorder.handler(name), name=name)
    env.bus.dead_letter_store.declare()
    envelope = env.bus.publish(OrderPlaced(order_id="poison-1", quantity=1))
    wait_for(lambda: env.queue_length() == 1, message="the message to wait in the queue")

    # When some consumer rejects it without requeueing (a poison-message guard, a
    # delivery limit...), outside eventbus's worker hooks
    with env.connection() as conn:
        message = Queue(env.queue)(conn.default_channel).get(no_ack=False)
        assert message is not None
        rejected_at = datetime.now(UTC)
        message.reject(requeue=False)

    # Then the broker routed it to the DLQ, where it reads as a record of that handler
    [record] = wait_for(lambda: env.bus.dead_letters.list(), message="the broker's dead letter")
    assert record.reason == "broker"
    # that failed when the broker dead-lettered it (x-death's time, whole
    # seconds), every time it is read
    assert abs((record.failed_at - rejected_at).total_seconds()) < 2
    assert [r.failed_at for r in env.bus.dead_letters.list()] == [record.failed_at]
    assert record.handler == name
    assert record.event_id == str(envelope.event_id)
    assert "rejected" in record.exception_message
    assert record.replayable
    # And once a worker runs, replaying it delivers the same event to the handler
    env.start_worker()
    env.bus.dead_letters.replay(record.id)
    wait_for(lambda: recorder.count(name) == 1, message="the replayed event")
    assert recorder.calls(name)[0].event_id == str(envelope.event_id)
    assert len(env.bus.dead_letters) == 0


def test_worker_rejections_are_recorded_once_not_twice(env: Env) -> None:
    # Given a running worker and a message for a task it does not know
    recorder = Recorder()
    name = env.name("orders")
    env.bus.subscribe(OrderPlaced, handler=recorder.handler(name), name=name)
    env.start_worker()
    env.app.send_task(env.name("gone"), args=({"event_type": "x"},), queue=env.queue)
    # Then exactly one record, eventbus's own (the message was acked, not
    # rejected to the broker's dead-letter exchange as well)
    wait_for(lambda: len(env.bus.dead_letters) >= 1, message="a dead letter")
    good = env.bus.publish(OrderPlaced(order_id="after", quantity=1))
    wait_for(lambda: recorder.count(name) == 1, message="the next good event")
    assert recorder.calls(name)[0].event_id == str(good.event_id)
    assert [r.reason for r in env.bus.dead_letters] == ["rejected"]
