"""eventbus's Redis transport (:mod:`eventbus.celery.internals.redis_transport`) on a real Redis.

A consumer takes a message off its queue and records it as unacked in one
script: the message is in the unacked hash and index, under its delivery tag,
as soon as it left the queue, whatever happens to the consumer afterwards.
Acks, restores after the visibility timeout, priorities and
``global_keyprefix`` work as on kombu's transport; a real worker runs
handlers on it (an idle one: ``test_redis_transport_idle.py``).

Each test uses queue names, and unacked keys or a key prefix, of its own on
the shared Redis, and deletes them; the tests that crash or count commands
use a private ``redis-server`` (the ``private_redis`` fixture, ``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import kombu.transport.redis as kombu_redis
import pytest
import redis
from kombu.message import Message

from eventbus import EventBus
from eventbus.celery.internals.redis_transport import Channel, Transport
from eventbus.celery.refused import CONTENT_TYPE, KEPT_BYTES, read_stand_in
from tests.brokers import PrivateRedis
from tests.support import delete_queues, delete_state, make_app, require_broker, running_worker

from .helpers import OrderPlaced, Recorder, assert_stays, wait_for
from .redis_box import TRANSPORT, Box, counting, drain_one

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("prefixed", [False, True], ids=["no-prefix", "global_keyprefix"])
def test_a_taken_message_is_recorded_as_unacked_until_acked(
    make_box: Callable[..., Box], prefixed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a message on a queue, and kombu's own record of a message spied on
    box = make_box(prefixed=prefixed)
    box.publish({"n": 1})
    assert box.waiting() == 1
    kombu_records: list[str] = []
    kombu_append = kombu_redis.QoS.append

    def spy(qos: Any, message: Any, delivery_tag: str) -> None:
        kombu_records.append(delivery_tag)
        kombu_append(qos, message, delivery_tag)

    monkeypatch.setattr(kombu_redis.QoS, "append", spy)

    # When a consumer on eventbus's transport takes it
    with box.connection() as conn:
        assert isinstance(conn.transport, Transport)
        message = drain_one(conn, box)

        # Then it left the queue and is in the unacked hash and index under its
        # tag, stored as kombu stores it: [message, exchange, routing_key]
        tag = message.delivery_tag
        assert box.waiting() == 0
        assert box.unacked() == {tag: [message._raw, box.name, box.name]}
        assert abs(box.unacked_index()[tag] - time.time()) < 60
        # And QoS recorded nothing a second time, but knows the message is in flight
        assert kombu_records == []
        assert conn.default_channel.qos._delivered.keys() >= {tag}
        assert not conn.transport.eventbus_recorded

        # When it is acked, Then the record is gone
        message.ack()
        assert box.unacked() == {}
        assert box.unacked_index() == {}


@pytest.mark.parametrize("prefixed", [False, True], ids=["no-prefix", "global_keyprefix"])
def test_priorities_are_taken_in_kombus_order(make_box: Callable[..., Box], prefixed: bool) -> None:
    # Given the same messages of mixed priorities on two queues
    priorities = [0, 9, 3, 6, 9, 0, 5]
    ours, kombus = make_box(prefixed=prefixed), make_box(prefixed=prefixed)
    for box in (ours, kombus):
        for n, priority in enumerate(priorities):
            box.publish({"n": n}, priority=priority)

    # When one queue is consumed on eventbus's transport, the other on kombu's
    def consume(box: Box, transport: str | None) -> list[int]:
        order = []
        with box.connection(transport) as conn:
            for _ in priorities:
                message = drain_one(conn, box)
                if transport == TRANSPORT:
                    assert message.delivery_tag in box.unacked()
                order.append(message.payload["n"])
                message.ack()
        return order

    # Then both take them in the same order, and leave nothing behind
    assert consume(ours, TRANSPORT) == consume(kombus, None)
    for box in (ours, kombus):
        assert box.waiting() == 0
        assert box.unacked() == {}


def test_a_consumer_without_acks_leaves_no_record(make_box: Callable[..., Box]) -> None:
    # Given a message, When a no_ack consumer takes it
    box = make_box()
    box.publish({"n": 1})
    with box.connection() as conn:
        message = drain_one(conn, box, no_ack=True)

    # Then nothing waits for an ack that never comes
    assert message.payload == {"n": 1}
    assert box.waiting() == 0
    assert box.unacked() == {}
    assert box.unacked_index() == {}


@pytest.mark.parametrize("prefixed", [False, True], ids=["no-prefix", "global_keyprefix"])
def test_a_message_taken_by_a_consumer_that_died_comes_back(
    make_box: Callable[..., Box], prefixed: bool
) -> None:
    # Given a message taken by the script alone, as by a consumer killed right
    # after (no Python ran after the take)
    box = make_box(prefixed=prefixed, visibility_timeout=1, unacked_restore_throttle=1)
    box.publish({"n": 7})
    taken = box.take()
    assert taken is not None
    position, item, tag, stand_in = taken
    assert stand_in == 0
    assert position == 1
    assert box.waiting() == 0
    assert box.unacked() == {tag.decode(): [json.loads(item), box.name, box.name]}

    # When another consumer runs past the visibility timeout
    with box.connection() as conn:
        message = drain_one(conn, box, timeout=15)

        # Then it got the message again, marked redelivered, under the same tag
        assert message.payload == {"n": 7}
        assert message.delivery_tag == tag.decode()
        assert message.delivery_info.get("redelivered") or message.headers.get("redelivered")
        message.ack()
    assert box.unacked() == {}
    assert box.waiting() == 0


@pytest.mark.parametrize(
    "element",
    [b"not json at all", b"", b'{"hello": "world"}', b"[1, 2]", bytes(range(256)) * 400],
    ids=["not-json", "empty", "not-a-kombu-message", "json-array", "100-KiB-of-bytes"],
)
@pytest.mark.parametrize("prefixed", [False, True], ids=["no-prefix", "global_keyprefix"])
def test_an_element_that_is_not_a_message_is_recorded_as_a_stand_in_and_comes_back(
    make_box: Callable[..., Box], element: bytes, prefixed: bool
) -> None:
    # Given an element no producer writes, taken by the script alone, as by a
    # consumer killed right after
    box = make_box(prefixed=prefixed, visibility_timeout=1, unacked_restore_throttle=1)
    box.client.lpush(box.key(box.name), element)
    taken = box.take(tag="fresh-1")

    # Then it left the queue, and is recorded as unacked under the fresh tag as
    # a stand-in: its first bytes, its size, its queue
    assert taken is not None
    position, item, tag, stand_in = taken
    assert (position, tag, stand_in) == (1, b"fresh-1", 1)
    assert box.waiting() == 0
    # (the stand-in's body is a JSON string: bytes that are not UTF-8 read as U+FFFD)
    kept = element[:KEPT_BYTES].decode("utf-8", "replace").encode()[:KEPT_BYTES]
    expected = ("undecodable", kept, len(element))
    [(recorded_tag, [message, exchange, routing_key])] = box.unacked().items()
    assert (recorded_tag, exchange, routing_key) == ("fresh-1", "", box.name)
    assert message == json.loads(item.decode("utf-8", "replace"))
    stood_in = read_stand_in(message["content-type"], message["headers"], message["body"])
    assert stood_in is not None and stood_in[:3] == expected

    # When a consumer runs past the visibility timeout
    with box.connection() as conn:
        got = drain_one(conn, box, timeout=15)

        # Then the stand-in came back to its queue and to the consumer, under the same tag
        assert got.delivery_tag == "fresh-1"
        assert got.content_type == CONTENT_TYPE
        assert read_stand_in(got.content_type, got.headers, got.body)[:3] == expected
        got.ack()
    assert box.unacked() == {}
    assert box.waiting() == 0


def test_an_element_over_its_queues_limit_is_taken_unread(make_box: Callable[..., Box]) -> None:
    # Given a 10 KB task message on a queue
    box = make_box()
    with box.connection() as conn:
        conn.Producer().publish(
            {"n": "x" * 10_000},
            exchange=box.queue.exchange,
            routing_key=box.name,
            declare=[box.queue],
            headers={"task": "it.some.handler", "id": "task-1"},
        )
    [element] = box.client.lrange(box.key(box.name), 0, -1)

    # When a consumer whose limit for that queue is 1000 bytes takes it
    with box.connection() as conn:
        conn.transport.eventbus_limit([box.name], 1000)
        message = drain_one(conn, box)

        # Then it gets a stand-in: the element's first bytes and size, its task
        # name and id (read past the body), recorded under the stand-in's tag
        assert message.content_type == CONTENT_TYPE
        assert read_stand_in(message.content_type, message.headers, message.body)[:3] == (
            "oversized",
            element[:KEPT_BYTES],
            len(element),
        )
        assert (message.headers["task"], message.headers["id"]) == ("it.some.handler", "task-1")
        assert list(box.unacked()) == [message.delivery_tag]
        message.ack()
    assert box.unacked() == {}
    assert box.waiting() == 0


def test_an_element_redis_reads_and_python_cannot_is_delivered_as_a_stand_in(
    make_box: Callable[..., Box],
) -> None:
    # Given a kombu message whose headers nest 990 deep: Redis's JSON decoder
    # takes 1000 levels, Python's recursion limit stops json sooner in a consumer
    box = make_box()
    box.publish({"n": 1})
    [element] = box.client.lrange(box.key(box.name), 0, -1)
    deep = element.replace(b'"headers": {}', b'"headers": {"x": ' + b"[" * 990 + b"]" * 990 + b"}")
    assert deep != element
    box.client.delete(box.key(box.name))
    box.client.lpush(box.key(box.name), deep)

    # When a consumer takes it
    with box.connection() as conn:
        message = drain_one(conn, box)

        # Then it is a stand-in, under the tag Redis recorded the element with
        assert message.content_type == CONTENT_TYPE
        assert read_stand_in(message.content_type, message.headers, message.body)[:3] == (
            "undecodable",
            deep[:KEPT_BYTES],
            len(deep),
        )
        [(tag, record)] = box.client.hgetall(box.unacked_key).items()
        assert tag.decode() == message.delivery_tag
        assert record.startswith(b"[" + deep + b",")
        message.ack()
    assert box.client.hlen(box.unacked_key) == 0


def test_drain_events_gets_a_message_published_while_idle(
    make_box: Callable[..., Box], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a consumer waiting on an empty queue
    box = make_box()
    box.publish({"n": 0})
    found_empty = counting(monkeypatch, Channel, "_eventbus_idle")
    with box.connection() as conn:
        drain_one(conn, box).ack()
        published_at: list[float] = []

        def publish_later() -> None:
            seen = len(found_empty)
            wait_for(lambda: len(found_empty) >= seen + 3, message="the queue found empty 3 times")
            published_at.append(time.monotonic())
            box.publish({"n": 1})

        # When a message is published once the consumer found the queue empty a few times
        thread = threading.Thread(target=publish_later)
        thread.start()
        try:
            message = drain_one(conn, box, timeout=10)
            received_at = time.monotonic()
        finally:
            thread.join()

        # Then the consumer gets it soon after, recorded
        assert message.payload == {"n": 1}
        assert received_at - published_at[0] < 1.0
        assert message.delivery_tag in box.unacked()
        message.ack()

        # And with nothing to take, drain_events times out when asked to
        started = time.monotonic()
        with conn.Consumer([box.queue], callbacks=[lambda *_: None]), pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.3)
        assert time.monotonic() - started < 1.5


def test_a_taken_message_survives_a_redis_crash_right_after(private_redis: PrivateRedis) -> None:
    # Given a Redis with an AOF fsynced on every write, and a message on a queue
    box = Box(private_redis.url, prefixed=False)
    try:
        box.publish({"n": 1})

        # When a consumer takes it and Redis is SIGKILLed right away
        with box.connection() as conn:
            message = drain_one(conn, box)
            private_redis.crash()
        private_redis.start()

        # Then the restarted Redis still has it, recorded as unacked
        assert box.waiting() == 0
        assert list(box.unacked()) == [message.delivery_tag]
        assert list(box.unacked_index()) == [message.delivery_tag]
    finally:
        box.client.close()


def test_a_flushed_script_cache_is_refilled(private_redis: PrivateRedis) -> None:
    # Given a consumer that took a message (its script is cached by then)
    box = Box(private_redis.url, prefixed=False)
    try:
        box.publish({"n": 1})
        box.publish({"n": 2})
        with box.connection() as conn:
            drain_one(conn, box).ack()

            # When Redis forgets its scripts (as after a restart)
            box.client.script_flush()

            # Then the consumer takes the next message all the same, recorded
            message = drain_one(conn, box)
            assert message.payload == {"n": 2}
            assert list(box.unacked()) == [message.delivery_tag]
            message.ack()
        stats = box.client.info("commandstats")
        assert "cmdstat_brpop" not in stats
        assert stats["cmdstat_evalsha"]["failed_calls"] >= 1  # the NOSCRIPT
    finally:
        box.client.close()


REFUSED = "refused eventbus's take script"
TAKES_AGAIN = "takes eventbus's take script again"


def test_a_full_redis_is_logged_once_when_it_refuses_and_once_when_it_takes_again(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a message waiting on a queue, and a Redis that is full (maxmemory 1,
    # noeviction: the take script's first write is refused)
    box = Box(private_redis.url, prefixed=False)
    box.publish({"n": 1})
    box.client.config_set("maxmemory-policy", "noeviction")
    box.client.config_set("maxmemory", 1)
    got: list[Message] = []
    try:
        # When a consumer on eventbus's transport polls it, four times
        with (
            caplog.at_level(logging.DEBUG, logger="eventbus.celery.internals.redis_transport"),
            box.connection() as conn,
            # (declared by the publish: a full Redis refuses the MULTI of a declare)
            conn.Consumer(
                [box.queue], callbacks=[lambda _body, m: got.append(m)], auto_declare=False
            ),
        ):

            def drain() -> None:
                with contextlib.suppress(TimeoutError):
                    conn.drain_events(timeout=0.2)

            def refused() -> int:
                stats = box.client.info("commandstats")
                return sum(
                    int(stats.get(f"cmdstat_{c}", {}).get(kind, 0))
                    for c in ("eval", "evalsha")
                    for kind in ("failed_calls", "rejected_calls")
                )

            try:
                wait_for(
                    lambda: drain() or refused() >= 4,
                    timeout=20,
                    message=lambda: f"four refused takes: {refused()}",
                )
                assert not got
            finally:
                # and then Redis takes writes again
                box.client.config_set("maxmemory", 0)
            wait_for(lambda: drain() or got, timeout=10, message="the message taken")
            got[0].ack()

        # Then the log said once that Redis refused it (why, with no traceback per
        # poll), once that it takes it again, and the tries between at DEBUG only
        records = [
            r for r in caplog.records if r.name == "eventbus.celery.internals.redis_transport"
        ]
        refusals = [r for r in records if REFUSED in r.getMessage()]
        loud = [r for r in refusals if r.levelno >= logging.INFO]
        assert len(loud) == 1, [r.getMessage() for r in loud]
        assert loud[0].levelno == logging.WARNING
        assert "OOM" in loud[0].getMessage() or "maxmemory" in loud[0].getMessage()
        assert len(refusals) >= 4
        assert all(r.levelno == logging.DEBUG and not r.exc_info for r in refusals[1:])
        recovered = [r for r in records if TAKES_AGAIN in r.getMessage()]
        assert [r.levelno for r in recovered] == [logging.WARNING]
        assert records.index(recovered[0]) > records.index(refusals[-1])
        # (and kombu's restore of unacked messages, which a full Redis refuses too,
        # is never raised out of drain_events, and adds no warning)
        warnings = [r for r in records if r.levelno >= logging.INFO]
        assert warnings == [loud[0], recovered[0]], [r.getMessage() for r in warnings]
    finally:
        box.close()


def run_handlers(url: str, *, events: int, **options: Any) -> tuple[float, int]:
    """A real worker on eventbus's transport runs a handler of ``events`` published events.

    Returns how long a worker idle for half a second took to run a new event,
    and how many messages were dead-lettered.
    """
    uid = uuid.uuid4().hex[:10]
    queue = f"it.transport-worker.{uid}"
    app = make_app(
        url,
        broker_transport=TRANSPORT,
        broker_transport_options={
            "unacked_key": f"{queue}.unacked",
            "unacked_index_key": f"{queue}.unacked_index",
            "unacked_mutex_key": f"{queue}.unacked_mutex",
            **options,
        },
    )
    bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")
    recorder = Recorder()
    name = f"it.{uid}.handler"
    bus.subscribe(OrderPlaced, handler=recorder.handler(name), name=name)
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
    try:
        with running_worker(app, bus.queues, pool="threads", concurrency=2) as worker:
            assert isinstance(worker.consumer.connection.transport, Transport)
            envelopes = [
                bus.publish(OrderPlaced(order_id=f"o-{i}", quantity=1)) for i in range(events)
            ]
            wait_for(
                lambda: recorder.count() >= events,
                message=lambda: f"{recorder.count()}/{events} handler runs",
            )
            assert sorted(c.event_id for c in recorder.calls()) == sorted(
                str(e.event_id) for e in envelopes
            )
            wait_for(
                lambda: client.hlen(f"{queue}.unacked") == 0,
                message=lambda: f"every message acked ({client.hlen(f'{queue}.unacked')} unacked)",
            )

            # An idle worker: a message published now is handled soon after
            assert_stays(lambda: recorder.count() == events, duration=0.5)
            published = time.monotonic()
            bus.publish(OrderPlaced(order_id="late", quantity=1))
            wait_for(lambda: recorder.count() > events, message="the late event handled")
            latency = recorder.calls()[-1].at - published
            return latency, len(bus.dead_letters)
    finally:
        delete_queues(app, queue)
        delete_state(app)
        app.close()
        client.close()


def test_a_worker_runs_every_event_on_eventbus_transport() -> None:
    # Given a worker on eventbus's transport, When 20 events are published
    # Then it runs each once, acks every message, and an idle worker wakes up for a new one
    url = require_broker("redis")
    latency, dead_letters = run_handlers(url, events=20)
    assert latency < 2.0
    assert dead_letters == 0
