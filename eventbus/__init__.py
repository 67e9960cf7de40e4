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

import importlib
from typing import TYPE_CHECKING, Any

from eventbus import errors as _errors  # cheap: no third-party imports

if TYPE_CHECKING:
    from eventbus.bus.base import BaseEventBus, Subscription
    from eventbus.bus.memory import InMemoryEventBus
    from eventbus.celery.bus import EventBus, bus_for_app
    from eventbus.deadletter import DeadLetter, DeadLetterQueue
    from eventbus.domain.envelope import Envelope, create_event
    from eventbus.domain.events import Event, EventRegistry, registry, upcaster
    from eventbus.domain.options import HandlerOptions
    from eventbus.errors import (
        ConcurrencyError,
        ConfigurationError,
        DeadLetterError,
        DeadLetterNotFound,
        DeadLetterQueueUnavailable,
        DuplicateEventType,
        EnvelopeDecodeError,
        EventBusError,
        EventError,
        EventStoreError,
        EventValidationError,
        EventVersionError,
        IncompatibleDependency,
        LateEvent,
        MissingDependency,
        OrderingError,
        OutboxError,
        OutboxRowError,
        PayloadTooLarge,
        PermanentHandlerError,
        PublishError,
        ReplayConflict,
        ReplayError,
        SequenceGap,
        StateStoreError,
        SubscriptionError,
        UnknownEventType,
    )
    from eventbus.guarantees.idempotency import Delivery, current_delivery
    from eventbus.store import EventStore

# Submodules load on first use (PEP 562): `celery` imports this package for
# its `celery eventbus` sub-command in every worker of the environment, and
# those that never touch an event should not pay for pydantic.
_EXPORTS = {
    "BaseEventBus": "eventbus.bus.base",
    "Subscription": "eventbus.bus.base",
    "EventBus": "eventbus.celery.bus",
    "bus_for_app": "eventbus.celery.bus",
    "DeadLetter": "eventbus.deadletter",
    "DeadLetterQueue": "eventbus.deadletter",
    "Envelope": "eventbus.domain.envelope",
    "create_event": "eventbus.domain.envelope",
    "Event": "eventbus.domain.events",
    "EventRegistry": "eventbus.domain.events",
    "registry": "eventbus.domain.events",
    "upcaster": "eventbus.domain.events",
    "Delivery": "eventbus.guarantees.idempotency",
    "current_delivery": "eventbus.guarantees.idempotency",
    "InMemoryEventBus": "eventbus.bus.memory",
    "HandlerOptions": "eventbus.domain.options",
    "EventStore": "eventbus.store",
    **dict.fromkeys(_errors.__all__, "eventbus.errors"),
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'eventbus' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # next lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "BaseEventBus",
    "ConcurrencyError",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterNotFound",
    "DeadLetterQueue",
    "DeadLetterQueueUnavailable",
    "Delivery",
    "DuplicateEventType",
    "Envelope",
    "EnvelopeDecodeError",
    "Event",
    "EventBus",
    "EventBusError",
    "EventError",
    "EventRegistry",
    "EventStore",
    "EventStoreError",
    "EventValidationError",
    "EventVersionError",
    "HandlerOptions",
    "InMemoryEventBus",
    "IncompatibleDependency",
    "LateEvent",
    "MissingDependency",
    "OrderingError",
    "OutboxError",
    "OutboxRowError",
    "PayloadTooLarge",
    "PermanentHandlerError",
    "PublishError",
    "ReplayConflict",
    "ReplayError",
    "SequenceGap",
    "StateStoreError",
    "Subscription",
    "SubscriptionError",
    "UnknownEventType",
    "bus_for_app",
    "create_event",
    "current_delivery",
    "registry",
    "upcaster",
]
