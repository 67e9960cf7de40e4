"""Bad input: invalid data never leaves the publisher; bad messages are dead-lettered, not fatal."""

from __future__ import annotations

import base64
import json
import logging
import pickle
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
import redis
from kombu import Queue

from eventbus import EventValidationError, create_event
from eventbus.deadletter.record import MAX_RAW_BODY
from tests.support import REDIS_TRANSPORT, require_broker

from .conftest import Env
from .deep_headers import publish_deep_headers
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

    # Then it is dead-lettered as undecodable, never deserialized, and the handler never ran
    wait_for(lambda: len(env.bus.dead_letters) >= 1, message="a dead letter")
    [record] = env.bus.dead_letters.list()
    assert record.reason == "undecodable"
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


@pytest.mark.parametrize(
    "accept",
    [["json", "pickle"], ["application/json", "application/x-python-serialize", "yaml"]],
    ids=["by-name", "by-content-type"],
)
@pytest.mark.parametrize("task_header", [True, False], ids=["task-message", "no-task-header"])
def test_pickle_is_never_unpickled_even_when_the_app_accepts_it(
    env: Env, accept: list[str], task_header: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an app that accepts pickle, a handler, and a running worker
    env.app.conf.accept_content = accept
    recorder = Recorder()
    name = env.name("orders")
    env.bus.subscribe(OrderPlaced, name=name, handler=recorder.handler(name))
    with caplog.at_level(logging.WARNING, logger="eventbus.celery.worker"):
        env.start_worker()
    token = uuid.uuid4().hex

    # When a pickle that runs code when unpickled lands on the handler queue
    task_id = str(uuid.uuid4())
    env.publish_raw(
        ((Tripwire(token),), {}, {"callbacks": None, "errbacks": None, "chain": None}),
        serializer="pickle",
        headers={"task": name, "id": task_id} if task_header else {},
    )

    # Then it is one dead letter, never unpickled, undecodable
    wait_for(lambda: len(env.bus.dead_letters) >= 1, message="a dead letter")
    assert token not in UNPICKLED, "the pickle was unpickled"
    [record] = env.bus.dead_letters.list()
    assert record.reason == "undecodable"
    assert "application/x-python-serialize" in record.exception_message
    assert record.queue == env.queue
    assert record.task_id == (task_id if task_header else None)
    # And the worker goes on with the next good event
    _worker_still_handles_events(env, recorder, name)
    assert len(env.bus.dead_letters) == 1
    assert recorder.count(name) == 1
    assert token not in UNPICKLED
    # And the worker said at start that the app accepts pickle
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("accepts pickle" in w and "JSON only" in w for w in warnings), warnings


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


# -- raw elements on a Redis handler queue ------------------------------------------------


@pytest.fixture
def redis_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """The test's app and bus on Redis (its transport: EVENTBUS_TEST_REDIS_TRANSPORT)."""
    url = require_broker("redis")
    with ExitStack() as stack:
        yield Env(url, stack, request.node.originalname.removeprefix("test_")[:24])


def kombu_element(queue: str, *, headers: str = "{}", body: bytes = b"[[], {}, {}]") -> bytes:
    """A list element as kombu's Redis transport writes one, ``headers`` as JSON text."""
    element = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": "HEADERS",
        "properties": {
            "body_encoding": "base64",
            "delivery_info": {"exchange": queue, "routing_key": queue},
            "delivery_mode": 2,
            "delivery_tag": str(uuid.uuid4()),
            "priority": 0,
        },
    }
    return json.dumps(element).replace('"HEADERS"', headers, 1).encode()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


#: Elements no producer writes, each a function of the queue's name.
RAW_ELEMENTS = [
    pytest.param(lambda q: b"not json at all", id="not-json"),
    pytest.param(
        lambda q: kombu_element(q, headers=f'{{"task": "x", "deep": {_nested(100_000)}}}'),
        id="headers-nested-100k-deep",
    ),
    pytest.param(lambda q: b"", id="empty"),
    pytest.param(lambda q: b'\xff\xfe{"body": \x80', id="invalid-utf8"),
    pytest.param(lambda q: b"[1, 2, 3]", id="json-array"),
    pytest.param(lambda q: b'{"hello": "world"}', id="json-object-not-a-message"),
    pytest.param(lambda q: kombu_element(q, headers="[1, 2]"), id="headers-a-list"),
    pytest.param(
        lambda q: kombu_element(q).replace(b'"body": "', b'"body": "a', 1), id="body-not-base64"
    ),
]


@pytest.mark.redis
@pytest.mark.parametrize("element", RAW_ELEMENTS)
def test_raw_list_element_is_dead_lettered_and_the_worker_goes_on(
    redis_env: Env, element: Callable[[str], bytes]
) -> None:
    if REDIS_TRANSPORT != "eventbus":
        pytest.skip("kombu's transport stops the worker on such an element (README: Limits)")
    # Given a handler and a running worker on Redis
    env = redis_env
    recorder = Recorder()
    name = env.name("orders")
    env.bus.subscribe(OrderPlaced, name=name, handler=recorder.handler(name))
    env.start_worker()

    # When an element no producer writes lands on its queue's list, then a good event
    raw = element(env.queue)
    with redis.Redis.from_url(env.broker_url) as client:
        client.lpush(env.queue, raw)
    envelope = env.bus.publish(OrderPlaced(order_id="after-the-bad-one", quantity=1))

    # Then the worker handles the good event
    wait_for(
        lambda: [c.event_id for c in recorder.calls(name)] == [str(envelope.event_id)],
        message="the worker to handle the good event pushed after the bad element",
    )
    # And the element is one dead letter, undecodable, its bytes kept, its queue named
    wait_for(lambda: len(env.bus.dead_letters) >= 1, message="a dead letter")
    [record] = env.bus.dead_letters.list()
    assert record.reason == "undecodable"
    assert record.queue == env.queue
    assert record.raw_size == len(raw)
    assert record.raw_body == raw[:MAX_RAW_BODY].decode("utf-8", "replace")
    assert not record.replayable
    # And nothing of it is left unacked, nothing waits on the queue
    wait_for(lambda: not _unacked_on(env), message=lambda: f"unacked: {_unacked_on(env)}")
    assert env.queue_length() == 0
    assert len(env.bus.dead_letters) == 1


@pytest.mark.redis
@pytest.mark.parametrize("task_header", [False, True], ids=["no-task-header", "another-task"])
def test_an_element_forging_another_routing_key_is_screened_by_the_queue_it_was_taken_from(
    redis_env: Env, task_header: bool
) -> None:
    if REDIS_TRANSPORT != "eventbus":
        pytest.skip("kombu's transport does not say which list it popped (README: Limits)")
    # Given a handler, and a worker whose app accepts pickle
    env = redis_env
    env.app.conf.accept_content = ["json", "pickle"]
    recorder = Recorder()
    name = env.name("orders")
    env.bus.subscribe(OrderPlaced, name=name, handler=recorder.handler(name))
    env.start_worker()
    token = uuid.uuid4().hex

    # When an element on the handler queue's list claims another routing key
    # (one no worker screens) and names no handler task, and holds a pickle
    # that runs code when unpickled
    body = pickle.dumps(((Tripwire(token),), {}, {"callbacks": None, "errbacks": None}))
    headers = json.dumps({"task": "it.not.a.handler", "id": token} if task_header else {})
    forged = "celery.forged"
    element = json.loads(kombu_element(forged, headers=headers, body=body))
    element["content-type"] = "application/x-python-serialize"
    element["content-encoding"] = "binary"
    with redis.Redis.from_url(env.broker_url) as client:
        client.lpush(env.queue, json.dumps(element))

    # Then it is one dead letter of the queue it was on, never unpickled
    wait_for(
        lambda: len(env.bus.dead_letters) >= 1 or token in UNPICKLED,
        message="a dead letter (or the pickle unpickled)",
    )
    assert token not in UNPICKLED, "the pickle was unpickled"
    [record] = env.bus.dead_letters.list()
    assert record.reason == "undecodable"
    assert record.queue == env.queue
    assert "application/x-python-serialize" in record.exception_message
    # And the worker goes on with the next good event
    _worker_still_handles_events(env, recorder, name)
    assert token not in UNPICKLED
    assert len(env.bus.dead_letters) == 1


def _unacked_on(env: Env) -> list[str]:
    """Delivery tags in the (shared) unacked hash of messages from the env's queue."""
    tags = []
    with redis.Redis.from_url(env.broker_url) as client:
        for tag, value in client.hscan_iter("unacked"):
            if env.queue.encode() in value[-len(env.queue) - 200 :]:
                tags.append(tag.decode())
    return tags


# -- headers nested deeper than py-amqp decodes (RabbitMQ) ------------------------------


def test_headers_nested_deeper_than_amqp_decodes_are_dead_lettered(rabbitmq_env: Env) -> None:
    # Given a handler and a running worker on RabbitMQ
    env = rabbitmq_env
    recorder = Recorder()
    name = env.name("orders")
    env.bus.subscribe(OrderPlaced, name=name, handler=recorder.handler(name))
    env.start_worker()

    # When a message whose headers nest 5,000 deep lands on its queue (py-amqp
    # decodes header tables recursively: a RecursionError in the connection)
    publish_deep_headers(env.broker_url, env.queue, "[[], {}, {}]", depth=5000)

    # Then the worker goes on with the next good event
    _worker_still_handles_events(env, recorder, name)
    # And the message is one dead letter, undecodable, its queue named
    wait_for(lambda: len(env.bus.dead_letters) >= 1, message="a dead letter")
    [record] = env.bus.dead_letters.list()
    assert record.reason == "undecodable"
    assert record.queue == env.queue
    assert "headers" in record.exception_message
    assert record.raw_body == "[[], {}, {}]"
    assert env.queue_length() == 0
