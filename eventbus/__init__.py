"""eventbus: typed domain events fanned out to Celery tasks, with retries and a DLQ.

::

    from eventbus import Envelope, Event, EventBus

    class TodoCreated(Event):
        event_type = "todo.created"
        title: str

    bus = EventBus(celery_app)

    @bus.subscribe(TodoCreated)
    def notify(envelope: Envelope[TodoCreated]) -> None: ...

    bus.publish(TodoCreated(title="Buy milk"), aggregate_id=42, aggregate_type="Todo")
"""

from eventbus.bus import BaseEventBus, Subscription
from eventbus.celery_bus import EventBus, bus_for_app
from eventbus.deadletter import DeadLetter, DeadLetterQueue
from eventbus.envelope import Envelope, create_event
from eventbus.errors import (
    DeadLetterError,
    DeadLetterNotFound,
    DuplicateEventType,
    EnvelopeDecodeError,
    EventBusError,
    EventError,
    EventValidationError,
    PermanentHandlerError,
    PublishError,
    ReplayError,
    SubscriptionError,
    UnknownEventType,
)
from eventbus.events import Event, EventRegistry, registry
from eventbus.memory import InMemoryEventBus
from eventbus.options import HandlerOptions

__version__ = "0.1.0"

__all__ = [
    "BaseEventBus",
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterNotFound",
    "DeadLetterQueue",
    "DuplicateEventType",
    "Envelope",
    "EnvelopeDecodeError",
    "Event",
    "EventBus",
    "EventBusError",
    "EventError",
    "EventRegistry",
    "EventValidationError",
    "HandlerOptions",
    "InMemoryEventBus",
    "PermanentHandlerError",
    "PublishError",
    "ReplayError",
    "Subscription",
    "SubscriptionError",
    "UnknownEventType",
    "bus_for_app",
    "create_event",
    "registry",
]
