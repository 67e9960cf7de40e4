"""The ``task-sent`` events of one event's messages, sent as one message.

With ``task_send_sent_event`` on (Flower needs it), Celery follows every task
message with a ``task-sent`` event: a second publish per message, on the same
producer. An event published to K handlers is K task messages and K
``task-sent`` publishes. :class:`SentEvents` stands in for Celery's event
dispatcher in those ``apply_async`` calls (their ``event_dispatcher``
option): it keeps the events, built exactly as Celery builds them, and
:meth:`SentEvents.send` publishes them as one ``task.multi`` message, the
list form a worker uses for its own task events, which Flower and every
event receiver read as the events it holds. The message goes on the same
producer, after the task messages, so it shares their Redis pipeline and
their RabbitMQ confirm wait, and it is published as Celery publishes its
events: a failure is buffered by Celery's dispatcher, not raised.
"""

from __future__ import annotations

from typing import Any

from celery.events.event import Event
from celery.utils.time import utcoffset

__all__ = ["SentEvents"]

#: The routing key of a list of task events (Celery: ``f"{group}.multi"``).
ROUTING_KEY = "task.multi"


class SentEvents:
    """Collects ``task-sent`` events (Celery's ``event_dispatcher`` option) for one send."""

    __slots__ = ("_dispatcher", "_events", "_publish_options")

    def __init__(self, app: Any) -> None:
        # Celery's own dispatcher for sent events (disabled: used only to publish).
        self._dispatcher = app.amqp._event_dispatcher
        self._events: list[dict[str, Any]] = []
        self._publish_options: dict[str, Any] = {}

    def publish(
        self, type: str, fields: dict[str, Any], producer: Any, blind: bool = False, **kwargs: Any
    ) -> None:
        """What Celery calls after each task message: keep the event (as ``Dispatcher.publish``)."""
        dispatcher = self._dispatcher
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
