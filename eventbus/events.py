"""Event types: the pydantic ``Event`` base class and the registry of type names.

An event type is a pydantic model with a stable string name and a schema
version::

    class TodoCreated(Event):
        event_type = "todo.created"
        event_version = 1

        title: str
        priority: Literal["low", "normal", "high"] = "normal"

Defining the class registers it in :data:`registry` under its name, so a
publisher or a worker can turn ``"todo.created"`` back into the class.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from eventbus.errors import (
    DuplicateEventType,
    EventValidationError,
    SubscriptionError,
    UnknownEventType,
)

__all__ = ["Event", "EventRegistry", "EventTypeRef", "registry", "resolve_event_type"]


class Event(BaseModel):
    """Base class of every event payload.

    Subclasses set two class attributes:

    ``event_type``
        the stable name on the wire (``"todo.created"``); renaming the class
        does not change it.
    ``event_version``
        the schema version (default 1), carried in the envelope.

    Unknown fields are rejected, so a typo in a field name fails at publish
    time instead of silently dropping data. Instances are immutable.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_type: ClassVar[str]
    event_version: ClassVar[int] = 1

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # Only classes that name themselves are events; an intermediate
        # base class without ``event_type`` is not registered.
        if "event_type" in cls.__dict__:
            registry.register(cls)

    @classmethod
    def parse_data(cls, data: Mapping[str, Any]) -> Event:
        """Validate ``data`` into an instance, raising :class:`EventValidationError`."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise EventValidationError(cls.event_type, exc.errors(include_url=False)) from None  # type: ignore[arg-type]


#: What callers may pass wherever an event type is expected: the class, its
#: type name, or a string enum member whose value is the type name.
EventTypeRef = type[Event] | str | Enum


class EventRegistry:
    """Maps event type names to their :class:`Event` classes.

    Thread-safe. Re-registering the same class (same module and qualified
    name, as happens when a module is reloaded) replaces the old entry;
    a *different* class claiming a taken name raises :class:`DuplicateEventType`.
    """

    def __init__(self) -> None:
        self._types: dict[str, type[Event]] = {}
        self._lock = threading.Lock()

    def register(self, event_class: type[Event]) -> type[Event]:
        name = getattr(event_class, "event_type", None)
        if not isinstance(name, str) or not name:
            raise DuplicateEventType(f"{event_class.__qualname__} has no event_type string")
        version = event_class.event_version
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise DuplicateEventType(
                f"{event_class.__qualname__}.event_version must be a positive int, got {version!r}"
            )
        with self._lock:
            current = self._types.get(name)
            if current is not None and _origin(current) != _origin(event_class):
                raise DuplicateEventType(
                    f"event type {name!r} is already defined by {_origin(current)}; "
                    f"{_origin(event_class)} cannot claim it too"
                )
            self._types[name] = event_class
        return event_class

    def unregister(self, name: str) -> None:
        with self._lock:
            self._types.pop(name, None)

    def get(self, name: str) -> type[Event]:
        try:
            return self._types[name]
        except KeyError:
            raise UnknownEventType(name, list(self._types)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __iter__(self) -> Iterator[type[Event]]:
        return iter(sorted(self._types.values(), key=lambda cls: cls.event_type))

    def __len__(self) -> int:
        return len(self._types)

    def names(self) -> list[str]:
        return sorted(self._types)

    def json_schemas(self) -> dict[str, dict[str, Any]]:
        """JSON Schema of every registered event's ``data``, keyed by type name."""
        schemas: dict[str, dict[str, Any]] = {}
        for cls in self:
            schema = cls.model_json_schema()
            schema["x-event-type"] = cls.event_type
            schema["x-event-version"] = cls.event_version
            schemas[cls.event_type] = schema
        return schemas


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


#: The process-wide registry every :class:`Event` subclass joins on definition.
registry = EventRegistry()


def resolve_event_type(ref: object, event_registry: EventRegistry | None = None) -> type[Event]:
    """Turn a class, a type name or a string enum member into its Event class."""
    reg = event_registry or registry
    if isinstance(ref, type) and issubclass(ref, Event):
        if "event_type" not in ref.__dict__:
            raise SubscriptionError(
                f"{ref.__qualname__} declares no event_type; it is not an event"
            )
        return ref
    if isinstance(ref, Enum):
        ref = ref.value
    if isinstance(ref, str):
        return reg.get(ref)
    raise SubscriptionError(
        f"expected an Event subclass or an event type name, got {type(ref).__name__}: {ref!r}"
    )
