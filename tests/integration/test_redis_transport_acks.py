"""eventbus's Redis transport sends a worker's acks together, on a real Redis.

In a worker the acked messages' records (the unacked hash and index) are
removed in one pipeline per ``eventbus_ack_interval``, not one round trip per
message; the rest of the time, and when the worker stops, nothing waits.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from eventbus import EventBus
from eventbus.celery.internals.redis_transport import Transport
from tests.brokers import PrivateRedis
from tests.support import delete_queues, delete_state, make_app, require_broker, running_worker

from .helpers import OrderPlaced, Recorder, wait_for
from .redis_box import TRANSPORT, Box, drain_one

pytestmark = pytest.mark.redis


class HandlerApp:
    """An app on eventbus's transport with one recorded handler, and its Redis keys."""

    def __init__(self, url: str, **transport_options: Any) -> None:
        uid = uuid.uuid4().hex[:10]
        self.queue = f"it.transport-acks.{uid}"
        self.unacked_key = f"{self.queue}.unacked"
        self.app = make_app(
            url,
            broker_transport=TRANSPORT,
            broker_transport_options={
                "unacked_key": self.unacked_key,
                "unacked_index_key": f"{self.queue}.unacked_index",
                "unacked_mutex_key": f"{self.queue}.unacked_mutex",
                **transport_options,
            },
        )
        self.bus = EventBus(
            self.app, default_queue=self.queue, dead_letter_queue=f"{self.queue}.dlq"
        )
        self.recorder = Recorder()
        name = f"it.{uid}.handler"
        self.bus.subscribe(OrderPlaced, handler=self.recorder.handler(name), name=name)
        self.client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)

    def unacked(self) -> int:
        return int(self.client.hlen(self.unacked_key))

    def publish(self, n: int) -> None:
        for i in range(n):
            self.bus.publish(OrderPlaced(order_id=f"o-{i}", quantity=1))

    def handled(self, n: int) -> None:
        wait_for(
            lambda: self.recorder.count() >= n,
            message=lambda: f"{self.recorder.count()}/{n} handler runs",
        )

    def close(self) -> None:
        try:
            delete_queues(self.app, self.queue)
            delete_state(self.app)
        finally:
            self.app.close()
            self.client.close()


@contextmanager
def handler_app(url: str, **transport_options: Any) -> Iterator[HandlerApp]:
    handlers = HandlerApp(url, **transport_options)
    try:
        yield handlers
    finally:
        handlers.close()


def commands(server: PrivateRedis, name: str) -> int:
    with server.client() as client:
        return int(client.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))


def test_a_workers_acks_reach_redis_together(private_redis: PrivateRedis) -> None:
    # Given a worker on eventbus's transport, sending its acks every half second
    with (
        handler_app(private_redis.url, eventbus_ack_interval=0.5) as handlers,
        running_worker(handlers.app, handlers.bus.queues, pool="threads", concurrency=2),
    ):
        before = commands(private_redis, "zrem")
        # When 40 events are handled
        handlers.publish(40)
        handlers.handled(40)
        # Then every message is acked in Redis soon after
        wait_for(lambda: handlers.unacked() == 0, message=lambda: f"{handlers.unacked()} unacked")
        # And the 40 acks took a few pipelines, not one round trip each
        pipelines = commands(private_redis, "zrem") - before
        assert 1 <= pipelines <= 10, pipelines


def test_a_stopping_worker_sends_its_waiting_acks() -> None:
    # Given a worker whose acks would wait an hour
    url = require_broker("redis")
    with handler_app(url, eventbus_ack_interval=3600) as handlers:
        with running_worker(handlers.app, handlers.bus.queues, pool="threads", concurrency=2):
            handlers.publish(5)
            handlers.handled(5)
            # (the 5 records wait for the worker's next send)
            assert handlers.unacked() == 5
        # When the worker stops, Then it sent them: nothing will run again
        assert handlers.unacked() == 0
        assert handlers.recorder.count() == 5


def test_without_an_event_loop_each_ack_is_sent_at_once(make_box: Callable[..., Box]) -> None:
    # Given a plain kombu consumer on eventbus's transport (no worker, no event loop)
    box = make_box()
    box.publish({"n": 1})
    with box.connection() as conn:
        message = drain_one(conn, box)
        assert len(box.unacked()) == 1
        # When it acks, Then the record is gone at once
        message.ack()
        assert box.unacked() == {}


def test_acks_that_could_not_be_sent_are_sent_next_time(
    make_box: Callable[..., Box], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a consumer whose acks are kept for a send (as in a worker)
    box = make_box()
    box.publish({"n": 1})
    with box.connection() as conn:
        transport = conn.transport
        assert isinstance(transport, Transport)
        monkeypatch.setattr(transport, "eventbus_ack_timer", object(), raising=False)
        message = drain_one(conn, box)
        message.ack()
        assert len(box.unacked()) == 1  # waiting
        # When the first send fails (Redis unreachable)
        channel = message.channel
        acquire = channel.conn_or_acquire
        monkeypatch.setattr(channel, "conn_or_acquire", _raises(redis.ConnectionError("down")))
        transport.eventbus_send_acks()
        assert len(box.unacked()) == 1
        # Then the next one sends the ack
        monkeypatch.setattr(channel, "conn_or_acquire", acquire)
        transport.eventbus_send_acks()
        assert box.unacked() == {}


def test_an_ack_after_its_channel_closed_is_sent_without_stopping_the_worker(
    make_box: Callable[..., Box], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a consumer whose acks are kept for a send (as in a worker), holding a message
    box = make_box()
    box.publish({"n": 1})
    with box.connection() as conn:
        transport = conn.transport
        assert isinstance(transport, Transport)
        monkeypatch.setattr(transport, "eventbus_ack_timer", object(), raising=False)
        message = drain_one(conn, box)
        # When its channel closes (the worker lost its connection and made a
        # new one; kombu puts the message back), and the message is acked late
        # (the dead letter of its run was written meanwhile)
        message.channel.close()
        assert message.channel.connection is None
        message.ack()
    # Then the ack raised nothing (an error there stops the worker), and the
    # message waits on its queue, to run again
    assert box.waiting() == 1
    assert box.unacked() == {}


def _raises(exc: BaseException) -> Callable[..., Any]:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise exc

    return fail
