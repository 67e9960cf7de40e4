"""The task-events step's wiring, on stand-ins for Celery's consumer, hub and dispatcher."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from celery import Celery

from eventbus.celery.internals.task_events import (
    DEFAULT_BUFFER,
    DEFAULT_INTERVAL,
    BatchedTaskEvents,
)


class Hub:
    def __init__(self) -> None:
        self.timers: list[tuple[float, Any, tuple[Any, ...]]] = []

    def call_repeatedly(self, interval: float, fn: Any, *args: Any) -> Any:
        self.timers.append((interval, fn, args))
        return SimpleNamespace(cancel=lambda: self.timers.clear())


class Dispatcher:
    def __init__(self) -> None:
        self.buffer_group = ["task"]
        self.buffer_limit = 24
        self.on_send_buffered: Any = "celery's callback"
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def consumer(**conf: Any) -> Any:
    return SimpleNamespace(app=SimpleNamespace(conf=conf), hub=Hub(), event_dispatcher=Dispatcher())


def test_the_buffer_is_sent_on_a_timer_and_when_full() -> None:
    c = consumer()
    step = BatchedTaskEvents(c)
    step.start(c)
    [(interval, send, args)] = c.hub.timers
    assert interval == DEFAULT_INTERVAL
    send(*args)
    assert c.event_dispatcher.flushes == 1
    for _ in range(DEFAULT_BUFFER - 1):  # Celery's dispatcher calls it for each buffered event
        c.event_dispatcher.on_send_buffered()
    assert c.event_dispatcher.flushes == 1
    c.event_dispatcher.on_send_buffered()
    assert c.event_dispatcher.flushes == 2


def test_stopping_sends_what_is_buffered_and_stops_the_timer() -> None:
    c = consumer(eventbus_task_events_interval=0.2, eventbus_task_events_buffer=7)
    step = BatchedTaskEvents(c)
    step.start(c)
    assert c.hub.timers[0][0] == 0.2
    for _ in range(7):
        c.event_dispatcher.on_send_buffered()
    assert c.event_dispatcher.flushes == 1
    step.stop(c)
    assert c.hub.timers == [] and c.event_dispatcher.flushes == 2
    step.shutdown(c)  # (after stop: nothing more to send)
    assert c.event_dispatcher.flushes == 2


def test_interval_zero_keeps_celerys_way() -> None:
    c = consumer(eventbus_task_events_interval=0)
    BatchedTaskEvents(c).start(c)
    assert c.event_dispatcher.on_send_buffered == "celery's callback"
    assert c.event_dispatcher.buffer_limit == 24 and c.hub.timers == []


def test_without_an_event_loop_or_task_events_nothing_changes() -> None:
    no_loop = consumer()
    no_loop.hub = None
    BatchedTaskEvents(no_loop).start(no_loop)
    assert no_loop.event_dispatcher.on_send_buffered == "celery's callback"
    no_task_events = consumer()
    no_task_events.event_dispatcher.buffer_group = None
    BatchedTaskEvents(no_task_events).start(no_task_events)
    assert no_task_events.hub.timers == []


class LoopHub(Hub):
    """A hub whose ``call_soon`` callbacks run when the test turns the loop."""

    def __init__(self) -> None:
        super().__init__()
        self.soon: list[Any] = []

    def call_soon(self, fn: Any, *args: Any) -> None:
        self.soon.append((fn, args))

    def turn(self) -> None:
        soon, self.soon = self.soon, []
        for fn, args in soon:
            fn(*args)


def celery_dispatcher(published_in: list[tuple[int, int]]) -> Any:
    """Celery's own event dispatcher, as a worker with an event loop builds it; it records sends."""
    app = Celery(broker="memory://", set_as_current=False)
    dispatcher = app.events.Dispatcher(
        app.connection_for_write(),
        hostname="w@test",
        enabled=True,
        buffer_group=["task"],
        on_send_buffered=lambda: None,
    )

    def publish(event: Any, producer: Any, routing_key: str, **kwargs: Any) -> None:
        published_in.append((threading.get_ident(), len(event)))

    dispatcher._publish = publish
    return dispatcher


def test_a_pool_thread_that_fills_the_buffer_leaves_the_send_to_the_loop() -> None:
    # Given a worker's consumer with Celery's event dispatcher; the step
    # starts in the consumer's thread, the one that runs the event loop
    published_in: list[tuple[int, int]] = []
    c = SimpleNamespace(app=SimpleNamespace(conf={}), hub=LoopHub())
    c.event_dispatcher = celery_dispatcher(published_in)
    BatchedTaskEvents(c).start(c)

    # When a pool thread (a --pool threads worker runs Celery's task
    # callbacks there) buffers as many task events as the limit
    def pool_thread() -> None:
        for n in range(DEFAULT_BUFFER):
            c.event_dispatcher.send("task-succeeded", uuid=f"t-{n}")

    thread = threading.Thread(target=pool_thread)
    thread.start()
    thread.join()

    # Then that thread sent nothing: the loop reads the dispatcher's connection
    # too, and a reply the thread waited for there (the first send declares
    # the exchange) could be read by the loop: both hung (seen in CI)
    assert published_in == []
    # And the loop's next turn sends the whole buffer, in the loop's thread
    c.hub.turn()
    assert published_in == [(threading.get_ident(), DEFAULT_BUFFER)]


def test_the_loop_thread_that_fills_the_buffer_sends_it_at_once() -> None:
    # Given the same consumer
    published_in: list[tuple[int, int]] = []
    c = SimpleNamespace(app=SimpleNamespace(conf={}), hub=LoopHub())
    c.event_dispatcher = celery_dispatcher(published_in)
    BatchedTaskEvents(c).start(c)

    # When the loop's own thread (prefork and solo workers) fills the buffer
    for n in range(DEFAULT_BUFFER):
        c.event_dispatcher.send("task-received", uuid=f"t-{n}")

    # Then it is sent at once, without waiting for a turn of the loop
    assert published_in == [(threading.get_ident(), DEFAULT_BUFFER)]
    assert c.hub.soon == []


def test_after_the_timer_sent_the_buffer_the_limit_counts_from_zero() -> None:
    # Given a consumer whose timer sent the buffer while 60 events waited
    c = consumer()
    BatchedTaskEvents(c).start(c)
    for _ in range(60):
        c.event_dispatcher.on_send_buffered()
    [(_, send, args)] = c.hub.timers
    send(*args)
    assert c.event_dispatcher.flushes == 1

    # When 40 more are buffered: not a full buffer, no send
    for _ in range(40):
        c.event_dispatcher.on_send_buffered()
    assert c.event_dispatcher.flushes == 1
    # Then the limit's worth is sent at once
    for _ in range(DEFAULT_BUFFER - 40):
        c.event_dispatcher.on_send_buffered()
    assert c.event_dispatcher.flushes == 2
