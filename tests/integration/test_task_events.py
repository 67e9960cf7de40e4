"""Celery's task events, sent in batches by eventbus: receivers still see every one.

What Flower reads is Celery's event stream: a receiver on the app's event
exchange, listening before the worker starts, must see ``task-sent`` for
every handler message (one message per published event carries them), and
``task-received``, ``task-started`` and ``task-succeeded`` for every handler
run, from ``task.multi`` messages that each carry many events (a batch's
task-sent events too, up to 100 a message).
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from celery.events.receiver import EventReceiver

from .conftest import Env
from .helpers import OrderPlaced, wait_for

#: What this module tests is an optimisation: the stock-path stage skips it.
pytestmark = pytest.mark.optimization

TASK_EVENTS = ("task-received", "task-started", "task-succeeded")


class EventRecorder(EventReceiver):  # type: ignore[misc]
    """Celery's event receiver (Flower's), counting the messages as well as the events."""

    def __init__(self, app: Any, connection: Any) -> None:
        super().__init__(
            connection, handlers={"*": self._record}, app=app, node_id=f"rec-{uuid.uuid4().hex}"
        )
        self.events: Counter[tuple[str, str]] = Counter()  # (type, task name)
        self.probes = 0
        self.task_messages = 0  # messages carrying a worker's task events
        self.sent_messages = 0  # messages carrying task-sent events
        self.sent: list[dict[str, Any]] = []  # the task-sent events
        self._names: dict[str, str] = {}  # task id -> task name (from task-received)
        self._lock = threading.Lock()

    def _receive(self, body: Any, message: Any, *args: Any, **kwargs: Any) -> None:
        types = {event.get("type") for event in (body if isinstance(body, list) else [body])}
        with self._lock:
            if types & set(TASK_EVENTS):
                self.task_messages += 1
            if "task-sent" in types:
                self.sent_messages += 1
        super()._receive(body, message, *args, **kwargs)

    def _record(self, event: dict[str, Any]) -> None:
        with self._lock:
            kind = event["type"]
            if kind == "eventbus-probe":
                self.probes += 1
                return
            if kind == "task-sent":
                self.sent.append(event)
            if kind in ("task-sent", "task-received"):
                self._names[event["uuid"]] = event["name"]
            name = self._names.get(event.get("uuid", ""), "?")
            self.events[(kind, name)] += 1

    def count(self, kind: str, names: list[str]) -> int:
        with self._lock:
            return sum(self.events[(kind, name)] for name in names)


@pytest.fixture
def recorder(env: Env) -> Iterator[EventRecorder]:
    """A receiver on the test's own event exchange, shown to be listening."""
    exchange = f"{env.queue}.ev"
    env.extra_queues.append(exchange)  # deleted at teardown (its Redis keys too)
    env.app.conf.update(worker_send_task_events=True, event_exchange=exchange)
    with env.connection() as conn:
        rec = EventRecorder(env.app, conn)
        thread = threading.Thread(target=rec.capture, kwargs={"limit": None}, daemon=True)
        thread.start()
        try:
            # Redis fanout keeps nothing for a late listener: probe until heard.
            with env.app.connection_for_write() as probe_conn:
                dispatcher = env.app.events.Dispatcher(probe_conn, enabled=True)
                wait_for(
                    lambda: dispatcher.send("eventbus-probe") or rec.probes,
                    timeout=20,
                    interval=0.1,
                    message="the event receiver hears a probe",
                )
                dispatcher.close()
            yield rec
        finally:
            rec.should_stop = True
            thread.join(timeout=10)


def test_every_task_event_reaches_receivers_in_batches(env: Env, recorder: EventRecorder) -> None:
    # Given three handlers, and task events sent every 0.5 s by the worker
    env.app.conf.eventbus_task_events_interval = 0.5
    names = [env.name(f"h{i}") for i in range(3)]
    for name in names:
        env.bus.subscribe(OrderPlaced, name=name, handler=lambda envelope: None)
    env.start_worker(pool="threads", concurrency=2)

    # When 30 events are published (90 handler runs)
    for i in range(30):
        env.bus.publish(OrderPlaced(order_id=f"o-{i}", quantity=1))

    # Then the receiver sees each run received, started and succeeded
    for kind in TASK_EVENTS:
        wait_for(
            lambda kind=kind: recorder.count(kind, names) == 90,
            message=lambda kind=kind: f"{recorder.count(kind, names)}/90 {kind}",
        )
    assert all(recorder.events[(kind, name)] == 30 for kind in TASK_EVENTS for name in names)
    # And its 270 events came in a few messages, not one or more per run
    assert recorder.task_messages <= 270 // 5, recorder.task_messages


def test_the_buffer_limit_sends_without_waiting_for_the_timer(
    env: Env, recorder: EventRecorder
) -> None:
    # Given a timer that never fires during the test, and a buffer of 3 events
    env.app.conf.update(eventbus_task_events_interval=3600, eventbus_task_events_buffer=3)
    name = env.name("h")
    env.bus.subscribe(OrderPlaced, name=name, handler=lambda envelope: None)
    env.start_worker(pool="solo")  # one thread: every send fills the buffer in turn

    # When 4 events are handled (12 task events)
    for i in range(4):
        env.bus.publish(OrderPlaced(order_id=f"o-{i}", quantity=1))

    # Then all 12 arrive, in 4 full buffers of 3
    wait_for(
        lambda: recorder.count("task-succeeded", [name]) == 4,
        message=lambda: f"{recorder.count('task-succeeded', [name])}/4 task-succeeded",
    )
    assert sum(recorder.count(kind, [name]) for kind in TASK_EVENTS) == 12
    assert recorder.task_messages == 4


def test_each_handler_message_is_announced_once_per_event(
    env: Env, recorder: EventRecorder
) -> None:
    # Given three handlers (no worker: only the publisher's events)
    names = [env.name(f"h{i}") for i in range(3)]
    for name in names:
        env.bus.subscribe(OrderPlaced, name=name, handler=lambda envelope: None)

    # When 10 events are published, 4 of them in a batch
    for i in range(6):
        env.bus.publish(OrderPlaced(order_id=f"o-{i}", quantity=1))
    with env.bus.batch():
        for i in range(6, 10):
            env.bus.publish(OrderPlaced(order_id=f"o-{i}", quantity=1))

    # Then the receiver sees a task-sent event for each of the 30 messages,
    # naming its handler and its queue, with the message's task id
    wait_for(
        lambda: recorder.count("task-sent", names) == 30,
        message=lambda: f"{recorder.count('task-sent', names)}/30 task-sent",
    )
    assert all(recorder.events[("task-sent", name)] == 10 for name in names)
    assert {event["queue"] for event in recorder.sent} == {env.queue}
    assert len({event["uuid"] for event in recorder.sent}) == 30
    assert all(event["args"].startswith("(") for event in recorder.sent)
    # And they came in one message per event published alone, and one for the
    # batch, not one per handler message
    assert recorder.sent_messages == 6 + 1


def test_a_large_batch_announces_its_messages_in_messages_of_bounded_size(
    env: Env, recorder: EventRecorder
) -> None:
    # Given three handlers (no worker: only the publisher's events)
    names = [env.name(f"h{i}") for i in range(3)]
    for name in names:
        env.bus.subscribe(OrderPlaced, name=name, handler=lambda envelope: None)

    # When 40 events (120 handler messages) are published in one batch
    with env.bus.batch():
        for i in range(40):
            env.bus.publish(OrderPlaced(order_id=f"o-{i}", quantity=1))

    # Then each message has its task-sent event, in two messages: the first
    # sent once 100 were kept (34 events: 102), the rest when the batch ended
    wait_for(
        lambda: recorder.count("task-sent", names) == 120,
        message=lambda: f"{recorder.count('task-sent', names)}/120 task-sent",
    )
    assert len({event["uuid"] for event in recorder.sent}) == 120
    assert recorder.sent_messages == 2
