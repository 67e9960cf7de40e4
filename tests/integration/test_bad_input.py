"""Bad input: invalid data never leaves the publisher; bad messages are dead-lettered, not fatal."""

from __future__ import annotations

import json
import uuid

import pytest
from kombu import Queue

from eventbus import EventValidationError, create_event

from .conftest import Env
from .helpers import UNPICKLED, OrderPlaced, Recorder, Tripwire, wait_for


def _worker_still_handles_events(env: Env, recorder: Recorder, name: str) -> None:
    """Publish a good event and see the handler run it."""
    envelope = env.bus.publish(OrderPlaced(order_id="after-the-bad-one", quantity=1))
    wait_for(
        lambda: str(envelope.event_id) in {c.event_id for c in recorder.calls(name)},
        message="the worker to handle the good event published after the bad message",
    )


def test_invalid_event_data_is_refused_before_sending(env: Env) -> None:
    # Given a subscribed handler and its queue, with no worker draining it
    recorder = Recorder()
    name = env.name("orders")
    env.bus.subscribe(OrderPlaced, name=name, handler=recorder.handler(name))
    env.declare_handler_queue()

    # When data with a wrong field is published
    with pytest.raises(EventValidationError) as raised:
        env.bus.publish(create_event(OrderPlaced, {"order_id": "o-1", "quantity": 0}))

    # Then the error names the event type and the field, and nothing was sent
    assert raised.value.event_type == "it.order.placed"
    assert "quantity" in str(raised.value)
    assert [err["loc"] for err in raised.value.errors()] == [("quantity",)]
    assert env.queue_length() == 0
    assert env.bus.published[OrderPlaced.event_type] == 0
    # (and the queue length check does see a message that is sent)
    env.bus.publish(create_event(OrderPlaced, {"order_id": "o-1", "quantity": 1}))
    wait_for(lambda: env.queue_length() == 1, message="the valid event to wait in the queue")


def test_message_that_is_not_an_envelope_is_dead_lettered(env: Env) -> None:
    # Given a handler and a running worker
    recorder = Recorder()
    name = env.name("orders")
    env.bus.subscribe(OrderPlaced, name=name, handler=recorder.handler(name))
    env.start_worker()

    # When a task message for the handler carries something that is not an envelope
    env.app.send_task(name, args=({"nope": 1},), queue=env.queue)

    # Then it is dead-lettered as undecodable, after one attempt, without running the handler
    wait_for(lambda: len(env.bus.dead_letters) >= 1, message="a dead letter")
    [record] = env.bus.dead_letters.list()
    assert record.reason == "undecodable"
    assert record.handler == name
    assert record.attempts == 1
    assert record.exception_type == "eventbus.errors.EnvelopeDecodeError"
    assert "event_type" in record.exception_message
    assert record.envelope == {"nope": 1}
    assert recorder.count(name) == 0
    # And the worker goes on with the next good event
    _worker_still_handles_events(env, recorder, name)
    assert len(env.bus.dead_letters) == 1


def test_non_json_body_is_dead_lettered_and_worker_keeps_running(env: Env) -> None:
    # Given a handler and a running worker
    recorder = Recorder()
    name = env.name("orders")
    env.bus.subscribe(OrderPlaced, name=name, handler=recorder.handler(name))
    env.start_worker()

    # When a message claiming to be JSON but holding garbage lands on the handler queue
    env.publish_raw(
        b"{not json at all",
        headers={"task": name, "id": "x"},
        content_type="application/json",
        content_encoding="utf-8",
    )

    # Then it is dead-lettered with its raw body, and the handler never ran for it
    wait_for(lambda: len(env.bus.dead_letters) >= 1, message="a dead letter")
    [record] = env.bus.dead_letters.list()
    assert record.reason == "undecodable"
    assert record.handler == name
    assert record.task_id == "x"
    assert record.raw_body == "{not json at all"
    assert record.queue == env.queue
    assert not record.replayable
    assert recorder.count(name) == 0
    # And the worker goes on with the next good event
    _worker_still_handles_events(env, recorder, name)
    assert len(env.bus.dead_letters) == 1


def test_pickled_message_is_never_unpickled_and_is_dead_lettered(env: Env) -> None:
    # Given a handler and a worker that accepts JSON only
    recorder = Recorder()
    name = env.name("orders")
    env.bus.subscribe(OrderPlaced, name=name, handler=recorder.handler(name))
    env.start_worker()
    token = uuid.uuid4().hex

    # When a pickle-serialized task message (that would run code when unpickled) arrives
    task_id = str(uuid.uuid4())
    env.publish_raw(
        ((Tripwire(token),), {}, {"callbacks": None, "errbacks": None, "chain": None}),
        serializer="pickle",
        headers={
            "lang": "py",
            "task": name,
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "argsrepr": "(...)",
            "kwargsrepr": "{}",
            "origin": "attacker@host",
        },
    )

    # Then it is dead-lettered, never deserialized, and the handler never ran
    wait_for(lambda: len(env.bus.dead_letters) >= 1, message="a dead letter")
    [record] = env.bus.dead_letters.list()
    assert record.reason == "rejected"
    assert record.handler == name
    assert record.task_id == task_id
    assert "pickle" in record.exception_message or "python-serialize" in record.exception_message
    assert record.raw_size and record.raw_size > 0
    assert token not in UNPICKLED
    assert recorder.count(name) == 0
    # And the worker goes on with the next good event
    _worker_still_handles_events(env, recorder, name)
    assert len(env.bus.dead_letters) == 1
    assert token not in UNPICKLED


def test_wire_payload_is_plain_json(env: Env) -> None:
    # Given a handler and its queue, with no worker draining it
    name = env.name("orders")
    env.bus.subscribe(OrderPlaced, name=name, handler=Recorder().handler(name))
    env.declare_handler_queue()

    # When an event is published
    envelope = env.bus.publish(OrderPlaced(order_id="o-9", quantity=2))

    # Then the message waiting on the queue is JSON holding the envelope as its one argument
    wait_for(lambda: env.queue_length() == 1, message="the message to wait in the queue")
    with env.connection() as conn:
        message = Queue(env.queue)(conn.default_channel).get(no_ack=True)
    assert message is not None
    assert message.content_type == "application/json"
    assert message.headers["task"] == name
    args, kwargs, _ = json.loads(message.body)
    assert kwargs == {}
    assert args == [json.loads(json.dumps(envelope.to_wire()))]


def test_message_for_an_unknown_task_is_dead_lettered(env: Env) -> None:
    # Given a handler and a running worker
    recorder = Recorder()
    name = env.name("orders")
    env.bus.subscribe(OrderPlaced, name=name, handler=recorder.handler(name))
    env.start_worker()

    # When a task message for a handler this worker does not have lands on its queue
    unknown = env.name("removed_handler")
    env.app.send_task(unknown, args=({"event_type": "it.order.placed"},), queue=env.queue)

    # Then it is dead-lettered as rejected, with its body kept for inspection
    wait_for(lambda: len(env.bus.dead_letters) >= 1, message="a dead letter")
    [record] = env.bus.dead_letters.list()
    assert record.reason == "rejected"
    assert record.handler is None
    assert unknown in record.exception_message
    assert record.raw_body and "it.order.placed" in record.raw_body
    assert not record.replayable
    # And the worker goes on with the next good event
    _worker_still_handles_events(env, recorder, name)
    assert len(env.bus.dead_letters) == 1
