"""The task-events step's wiring, on stand-ins for Celery's consumer, hub and dispatcher."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

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
    assert c.event_dispatcher.on_send_buffered is None
    assert c.event_dispatcher.buffer_limit == DEFAULT_BUFFER
    [(interval, send, args)] = c.hub.timers
    assert interval == DEFAULT_INTERVAL
    send(*args)
    assert c.event_dispatcher.flushes == 1


def test_stopping_sends_what_is_buffered_and_stops_the_timer() -> None:
    c = consumer(eventbus_task_events_interval=0.2, eventbus_task_events_buffer=7)
    step = BatchedTaskEvents(c)
    step.start(c)
    assert c.hub.timers[0][0] == 0.2 and c.event_dispatcher.buffer_limit == 7
    step.stop(c)
    assert c.hub.timers == [] and c.event_dispatcher.flushes == 1
    step.shutdown(c)  # (after stop: nothing more to send)
    assert c.event_dispatcher.flushes == 1


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
