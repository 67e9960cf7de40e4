"""Celery's task events sent in batches, on a timer, by a worker that runs an EventBus.

A Celery worker already buffers its task events (``task-received``,
``task-started``, ``task-succeeded``...) and sends the buffer as one
``task.multi`` message, which Flower and every other event receiver read
as the events it holds. But it sends it after every turn of its event loop,
and a pool thread that buffers an event wakes the loop to do so: under load
that is about one publish per handled message, each a Redis round trip or an
AMQP frame and its Python path. In a worker of no-op handlers on Redis those
publishes were a quarter of the worker's time (py-spy).

A worker whose app has an :class:`~eventbus.EventBus` sends the buffer
every ``eventbus_task_events_interval`` seconds instead (default
:data:`DEFAULT_INTERVAL`), and when it holds ``eventbus_task_events_buffer``
events (default :data:`DEFAULT_BUFFER`): at once in the event loop's thread,
on the loop's next turn when a pool thread (``--pool threads``) filled it.
Only the loop's thread sends (see :meth:`BatchedTaskEvents.start`).
Receivers see every event, in order, up to that interval later; the events'
timestamps are still taken when they happen. The buffer is sent before the
consumer stops (shutdown, lost connection). ``eventbus_task_events_interval
= 0`` keeps Celery's own behaviour. Worker events (heartbeats, online,
offline) are never buffered, by Celery or here.

It sets the dispatcher's ``on_send_buffered`` and ``buffer_limit`` after
Celery built it (undocumented): checked once (:mod:`.compat`, feature
``task_events``, an optimisation); without them, or with
``eventbus_optimizations = False``, Celery's own sending runs.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from celery import bootsteps

from eventbus.celery.internals.compat import optimising

__all__ = ["DEFAULT_BUFFER", "DEFAULT_INTERVAL", "BatchedTaskEvents"]

logger = logging.getLogger(__name__)

#: Seconds between two sends of the worker's buffered task events.
DEFAULT_INTERVAL = 0.05
#: Buffered task events that are sent at once, without waiting for the timer
#: (Celery's own limit is 24; one event is about 300 bytes of JSON).
DEFAULT_BUFFER = 100


class BatchedTaskEvents(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step: the event dispatcher's task events go out on a timer."""

    name = "eventbus.BatchedTaskEvents"
    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self._timer: Any = None
        #: Task events buffered since the last send (the dispatcher's own count is private).
        self._buffered = 0

    def start(self, consumer: Any) -> None:
        dispatcher = consumer.event_dispatcher
        hub = consumer.hub
        # No event loop (Celery buffers nothing then), or task events off.
        if dispatcher is None or hub is None or not dispatcher.buffer_group:
            return
        conf = consumer.app.conf
        interval = float(conf.get("eventbus_task_events_interval", DEFAULT_INTERVAL) or 0)
        if interval <= 0 or not optimising(conf, "task_events"):
            return
        limit = max(1, int(conf.get("eventbus_task_events_buffer") or DEFAULT_BUFFER))
        # Celery's dispatcher calls on_send_buffered for each buffered event: the
        # worker's callback schedules a send for the next turn of the loop (and
        # wakes it up from a pool thread). Here the buffer waits for the timer,
        # or for the limit. The dispatcher's own limit is never reached: it
        # would send in the thread that buffered the event, and a --pool
        # threads worker buffers in its pool threads. The loop reads the
        # dispatcher's connection (for the broker's heartbeats), so a reply a
        # pool thread waits for there (the exchange's declare, on a first
        # send) can be read by the loop instead: the thread waits forever
        # holding the dispatcher's lock, and the loop waits for the lock.
        # Only the loop's thread sends; a full buffer in another thread asks
        # the loop to send it on its next turn.
        loop_thread = threading.get_ident()  # steps start in the thread that runs the loop

        def on_buffered() -> None:
            self._buffered += 1  # (a count lost between threads only delays a send to the timer)
            if self._buffered < limit:
                return
            self._buffered = 0
            if threading.get_ident() == loop_thread:
                self._send(consumer)
            else:
                hub.call_soon(self._send, consumer)

        dispatcher.on_send_buffered = on_buffered
        dispatcher.buffer_limit = sys.maxsize
        self._timer = hub.call_repeatedly(interval, self._send, consumer)

    def stop(self, consumer: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._send(consumer)

    shutdown = stop

    def _send(self, consumer: Any) -> None:
        self._buffered = 0  # (the timer's send counts too: the limit is of what waits)
        dispatcher = consumer.event_dispatcher
        if dispatcher is None:
            return
        try:
            dispatcher.flush()
        except Exception:  # the connection is lost: the consumer restarts, the buffer waits
            logger.debug("eventbus: sending buffered task events failed", exc_info=True)
