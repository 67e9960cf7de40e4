"""What each handler message goes through on publish, with eventbus's shortcuts in place.

eventbus passes each handler task's queue to ``apply_async`` bound to the
producer's channel, once per channel: kombu then skips copying the queue to
bind it for every message. The messages are still routed to the handler's
queue, declared (once per connection), announced by Celery's signals and its
task-sent events, one per message, on Redis and on RabbitMQ.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery.events.dispatcher import EventDispatcher
from celery.signals import after_task_publish, before_task_publish
from kombu import Queue

from eventbus import EventBus
from eventbus.celery.internals import compat
from eventbus.celery.internals.sent_events import SentEvents
from tests.support import delete_queues, make_app, wait_for

from .conftest import Env
from .helpers import OrderPlaced

HANDLERS = ("audit", "mailer", "stats")


class Sent:
    """What Celery did for each message: its signals and its task-sent events."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.before: list[dict[str, Any]] = []
        self.after: list[str] = []
        self.events: list[str] = []
        self.binds: list[str] = []  # names of the queues bound to a channel
        publish, bind = EventDispatcher.publish, Queue.bind

        def record_event(dispatcher: Any, type: str, *args: Any, **kwargs: Any) -> Any:
            self.events.append(type)
            return publish(dispatcher, type, *args, **kwargs)

        def record_bind(queue: Queue, channel: Any) -> Any:
            self.binds.append(queue.name)
            return bind(queue, channel)

        monkeypatch.setattr(EventDispatcher, "publish", record_event)
        # (eventbus's stand-in for the dispatcher: the events of one event go out together)
        collect = SentEvents.publish

        def record_collected(collector: Any, type: str, *args: Any, **kwargs: Any) -> Any:
            self.events.append(type)
            return collect(collector, type, *args, **kwargs)

        monkeypatch.setattr(SentEvents, "publish", record_collected)
        monkeypatch.setattr(Queue, "bind", record_bind)

    def on_before(self, sender: Any = None, **kwargs: Any) -> None:
        self.before.append({"task": sender, **kwargs})

    def on_after(self, sender: Any = None, **kwargs: Any) -> None:
        self.after.append(sender)

    def clear(self) -> None:
        for seen in (self.before, self.after, self.events, self.binds):
            seen.clear()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sent]:
    recorder = Sent(monkeypatch)
    before_task_publish.connect(recorder.on_before, weak=False)
    after_task_publish.connect(recorder.on_after, weak=False)
    try:
        yield recorder
    finally:
        before_task_publish.disconnect(recorder.on_before)
        after_task_publish.disconnect(recorder.on_after)


def subscribe(bus: EventBus, prefix: str) -> list[str]:
    names = [f"{prefix}.{short}" for short in HANDLERS]
    for name in names:
        bus.subscribe(OrderPlaced, name=name, handler=lambda envelope: None)
    return names


def assert_announced(sent: Sent, names: list[str], queue: str, events: int) -> None:
    """Each message of ``events`` events: both signals, routed to ``queue``, a task-sent event."""
    assert sorted(sent.after) == sorted(names * events)
    assert sorted(b["task"] for b in sent.before) == sorted(names * events)
    for before in sent.before:
        assert before["routing_key"] == queue, before
        (declared,) = before["declare"]
        assert declared.name == queue, before
    assert sent.events == ["task-sent"] * len(names) * events


def test_each_message_is_routed_declared_signalled_and_announced(env: Env, sent: Sent) -> None:
    # Given three handlers of one event type
    names = subscribe(env.bus, env.name("h"))

    # When four events are published
    for n in range(4):
        if n == 2:
            binds_of_first_two, sent.binds[:] = list(sent.binds), []
        env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))

    # Then each of the 12 messages fired Celery's signals and its task-sent
    # event, routed to the handlers' queue with the queue to declare
    assert_announced(sent, names, env.queue, events=4)
    # And they are all on the handlers' queue
    wait_for(lambda: env.queue_length() == 12, message=lambda: f"{env.queue_length()} queued")
    # And (eventbus's shortcut, unless optimisations are off) the queue was
    # bound to the channel once per handler at most (the first event on Redis
    # goes through Celery's own routing, which creates the queue's entry), not
    # once per message: the last two events bound nothing
    if compat.optimizations_on(env.app.conf):
        assert 0 < len(binds_of_first_two) <= 2 * len(names), binds_of_first_two
        assert sent.binds == []


@pytest.mark.rabbitmq
def test_a_handler_on_the_apps_default_queue_is_routed_as_celery_does(sent: Sent) -> None:
    # Given a bus whose handlers use the app's default queue (declared by
    # name, as the app's other tasks do), on RabbitMQ
    from tests.support import require_broker

    url = require_broker("rabbitmq")
    queue = f"it.defaultq.{uuid.uuid4().hex[:12]}"
    app = make_app(url, default_queue=queue)
    try:
        bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")
        assert bus.handler_queue(queue) == queue
        names = subscribe(bus, queue)

        # When three events are published
        for n in range(3):
            bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))

        # Then every message went to the default queue, signalled and announced
        assert_announced(sent, names, queue, events=3)
        assert all(b["declare"][0] == app.amqp.queues[queue] for b in sent.before)
        with app.connection_for_write() as conn:
            _, count, _ = conn.default_channel.queue_declare(queue=queue, passive=True)
        assert count == 9
    finally:
        app.close()
        delete_queues(app, queue, f"{queue}.dlq")


@pytest.mark.optimization
def test_a_new_connection_gets_the_queues_bound_to_its_channel(env: Env, sent: Sent) -> None:
    # Given a bus that has published, whose pooled connection is then closed
    names = subscribe(env.bus, env.name("h"))
    env.bus.publish(OrderPlaced(order_id="o-1", quantity=1))
    env.bus.publish(OrderPlaced(order_id="o-2", quantity=1))
    with env.app.producer_or_acquire() as producer:
        old = producer.channel
        producer.connection.close()
    sent.clear()

    # When events are published again (on a new connection and channel)
    env.bus.publish(OrderPlaced(order_id="o-3", quantity=1))
    env.bus.publish(OrderPlaced(order_id="o-4", quantity=1))

    # Then their messages declared queues bound to the new channel, not the closed one
    assert_announced(sent, names, env.queue, events=2)
    channels = {id(b["declare"][0].channel) for b in sent.before if b["declare"][0].is_bound}
    assert channels and id(old) not in channels
    # And all the messages are on the handlers' queue
    wait_for(lambda: env.queue_length() == 12, message=lambda: f"{env.queue_length()} queued")
