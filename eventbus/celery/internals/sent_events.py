"""The ``task-sent`` events of one event's messages, sent as one message.

With ``task_send_sent_event`` on (Flower needs it), Celery follows every task
message with a ``task-sent`` event: a second publish per message, on the same
producer. An event published to K handlers is K task messages and K
``task-sent`` publishes. :class:`SentEvents` stands in for Celery's event
dispatcher in those ``apply_async`` calls (their ``event_dispatcher``
option, :meth:`SentEvents.options`): it keeps the events, built exactly as
Celery builds them, and :meth:`SentEvents.send` publishes them as one
``task.multi`` message, the list form a worker uses for its own task events,
which Flower and every event receiver read as the events it holds. The
message goes on the same producer, after the task messages, so it shares
their Redis pipeline and their RabbitMQ confirm wait, and it is published as
Celery publishes its events: a failure is buffered by Celery's dispatcher,
not raised. In a ``bus.batch()`` one collector serves the batch's events:
their task-sent events go out :data:`BATCH_MAX` at a time, and the rest when
the batch ends.

It uses Celery's private dispatcher of sent events (``AMQP._event_dispatcher``,
its ``_publish``) and the undocumented ``event_dispatcher`` option: checked
once (:mod:`.compat`, feature ``sent_events``, an optimisation). Without them,
or with ``eventbus_optimizations = False``, :meth:`SentEvents.options` is empty
and Celery sends each task message's event itself; events kept for a message
eventbus writes itself (a Redis dead letter) go out through Celery's public
``app.events.Dispatcher``, one publish each.
"""

from __future__ import annotations

from typing import Any

from celery.events.event import Event
from celery.utils.time import utcoffset

from eventbus.celery.internals.compat import optimising

__all__ = ["BATCH_MAX", "SentEvents"]

#: The routing key of a list of task events (Celery: ``f"{group}.multi"``).
ROUTING_KEY = "task.multi"
#: Task-sent events a batch keeps before it sends them (a worker's own lists:
#: Celery's buffer_limit; eventbus's eventbus_task_events_buffer, 100 too).
BATCH_MAX = 100


class SentEvents:
    """Collects ``task-sent`` events (Celery's ``event_dispatcher`` option) for one send."""

    __slots__ = ("_app", "_dispatcher", "_events", "_plain", "_publish_options")

    def __init__(self, app: Any) -> None:
        self._app = app
        # Celery's own dispatcher for sent events (disabled: used only to publish).
        self._dispatcher: Any = None
        if optimising(app.conf, "sent_events"):
            self._dispatcher = app.amqp._event_dispatcher
        self._events: list[dict[str, Any]] = []
        self._plain: list[tuple[str, dict[str, Any]]] = []  # kept without the optimisation
        self._publish_options: dict[str, Any] = {}

    @property
    def kept(self) -> int:
        """How many events are kept, not sent yet.

        (Not ``__len__``: Celery tests its ``event_dispatcher`` option for truth.)
        """
        return len(self._events) + len(self._plain)

    def options(self) -> dict[str, Any]:
        """``apply_async`` options: Celery hands its task-sent event here ({}: it sends it)."""
        return {} if self._dispatcher is None else {"event_dispatcher": self}

    def publish(
        self, type: str, fields: dict[str, Any], producer: Any, blind: bool = False, **kwargs: Any
    ) -> None:
        """What Celery calls after each task message: keep the event (as ``Dispatcher.publish``)."""
        dispatcher = self._dispatcher
        if dispatcher is None:
            self._plain.append((type, fields))
            return
        self._events.append(
            Event(
                type,
                hostname=dispatcher.hostname,
                utcoffset=utcoffset(),
                pid=dispatcher.pid,
                clock=None if blind else dispatcher.clock.forward(),
                **fields,
            )
        )
        self._publish_options = kwargs  # retry, retry_policy: the same for every message

    def send(self, producer: Any) -> None:
        """Publish the kept events as one message on ``producer``, and forget them."""
        if self._plain:
            self._send_plain(producer)
        events, self._events = self._events, []
        if not events:
            return
        dispatcher = self._dispatcher
        if len(events) == 1:
            # One event: the message Celery itself would have sent.
            routing_key = events[0]["type"].replace("-", ".")
            body: Any = events[0]
        else:
            routing_key, body = ROUTING_KEY, events
        with dispatcher.mutex:
            # Celery's own publish path for events (its worker sends its lists with it).
            dispatcher._publish(body, producer, routing_key, **self._publish_options)

    def _send_plain(self, producer: Any) -> None:
        """Celery's public way: a dispatcher on the producer's channel, one publish per event."""
        kept, self._plain = self._plain, []
        dispatcher = self._app.events.Dispatcher(channel=producer.channel, enabled=True)
        for type, fields in kept:
            dispatcher.send(type, **fields)
