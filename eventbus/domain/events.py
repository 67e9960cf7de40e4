"""Event types: the pydantic ``Event`` base class and the registry of type names.

An event type is a pydantic model with a stable string name and a schema
version::

    class TodoCreated(Event):
        event_type = "todo.created"
        event_version = 1

        title: str
        priority: Literal["low", "normal", "high"] = "normal"

Defining the class registers it in :data:`registry` under its name, so a
publisher or a worker can turn ``"todo.created"`` back into the class. A class
keyword picks another registry (an old version of a class, kept for a test,
must not replace the current one)::

    class TodoCreatedV1(Event, registry=EventRegistry()):
        event_type = "todo.created"
        title: str

Older versions of an event's data are brought to the current one by
upcasters (:func:`upcaster`, :mod:`eventbus.domain.upcasting`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from eventbus.domain.upcasting import Upcaster, Upcasters
from eventbus.errors import (
    DuplicateEventType,
    EventValidationError,
    EventVersionError,
    SubscriptionError,
    UnknownEventType,
)

__all__ = [
    "Event",
    "EventRegistry",
    "EventTypeRef",
    "registry",
    "resolve_event_type",
    "upcaster",
]


class Event(BaseModel):
    """Base class of every event payload.

    Subclasses set two class attributes:

    ``event_type``
        the stable name on the wire (``"todo.created"``); renaming the class
        does not change it.
    ``event_version``
        the schema version (default 1), carried in the envelope. Bump it
        when the data changes shape, and register an :func:`upcaster` from
        the previous version.

    Unknown fields are rejected, so a typo in a field name fails at publish
    time instead of silently dropping data. Instances are immutable.

    Invalid data raises :class:`~eventbus.errors.EventValidationError`, which
    is also pydantic's ``ValidationError``: from the constructor,
    ``model_validate``, ``model_validate_json`` and ``model_validate_strings``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_type: ClassVar[str]
    event_version: ClassVar[int] = 1

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise EventValidationError.from_pydantic(_name_of(type(self)), exc) from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise EventValidationError.from_pydantic(_name_of(cls), exc) from None

    @classmethod
    def model_validate_json(cls, json_data: Any, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate_json(json_data, *args, **kwargs)
        except ValidationError as exc:
            raise EventValidationError.from_pydantic(
                _name_of(cls), exc, input_type="json"
            ) from None

    @classmethod
    def model_validate_strings(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate_strings(obj, *args, **kwargs)
        except ValidationError as exc:
            raise EventValidationError.from_pydantic(_name_of(cls), exc) from None

    def __init_subclass__(cls, *, registry: EventRegistry | None = None, **kwargs: Any) -> None:
        # ``registry`` is for __pydantic_init_subclass__, which runs once the
        # model is complete; object.__init_subclass__ would reject it.
        super().__init_subclass__(**kwargs)

    @classmethod
    def __pydantic_init_subclass__(
        cls, *, registry: EventRegistry | None = None, **kwargs: Any
    ) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        # Only classes that name themselves are events; an intermediate
        # base class without ``event_type`` is not registered.
        if "event_type" in cls.__dict__:
            (registry if registry is not None else _process_registry()).register(cls)

    @classmethod
    def parse_data(cls, data: Mapping[str, Any]) -> Event:
        """Validate ``data`` into an instance, raising :class:`EventValidationError`."""
        return cls.model_validate(data)


#: What callers may pass wherever an event type is expected: the class, its
#: type name, or a string enum member whose value is the type name.
EventTypeRef = type[Event] | str | Enum


class EventRegistry:
    """Maps event type names to their :class:`Event` classes.

    Thread-safe. Re-registering the same class (same module and qualified
    name, as happens when a module is reloaded) replaces the old entry;
    a *different* class claiming a taken name raises :class:`DuplicateEventType`.
    Its :attr:`upcasters` bring older data of its types to their current version.
    """

    def __init__(self) -> None:
        self._types: dict[str, type[Event]] = {}
        self._lock = threading.Lock()
        self.upcasters = Upcasters()

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

    def get(self, name: str, *, version: int | None = None) -> type[Event]:
        """The class of ``name``; ``version`` (of data being read) goes into the error."""
        try:
            return self._types[name]
        except KeyError:
            raise UnknownEventType(name, list(self._types), version=version) from None

    def upcaster(
        self, event_type: EventTypeRef, *, from_version: int
    ) -> Callable[[Upcaster], Upcaster]:
        """Register the decorated function as the upcaster of ``event_type`` data
        from ``from_version`` to ``from_version + 1`` (see :func:`upcaster`)."""
        name = _type_name(event_type)

        def register(func: Upcaster) -> Upcaster:
            current = self._types.get(name)
            if (
                current is not None
                and isinstance(from_version, int)
                and from_version >= current.event_version
            ):
                # Caught at import time: this step leads past the class.
                raise EventVersionError(
                    f"upcaster of {name!r} from v{from_version} leads past "
                    f"{current.__qualname__}, which is v{current.event_version}",
                    event_type=name,
                    version=from_version,
                    current=current.event_version,
                )
            self.upcasters.register(name, from_version, func)
            return func

        return register

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


def _name_of(cls: type[Event]) -> str:
    """The type name errors give: an intermediate base class has none, its name does."""
    return getattr(cls, "event_type", None) or cls.__qualname__


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


#: The process-wide registry every :class:`Event` subclass joins on definition.
registry = EventRegistry()


def _process_registry() -> EventRegistry:
    return registry


def _type_name(ref: EventTypeRef) -> str:
    # The class of an old version may be gone: a name is enough.
    if isinstance(ref, type) and issubclass(ref, Event):
        return ref.event_type
    value = ref.value if isinstance(ref, Enum) else ref
    if not isinstance(value, str) or not value:
        raise TypeError(f"expected an event type name or class, got {ref!r}")
    return value


def upcaster(
    event_type: EventTypeRef, *, from_version: int, registry: EventRegistry | None = None
) -> Callable[[Upcaster], Upcaster]:
    """Register the decorated function as an upcaster of ``event_type`` data.

    It takes the ``data`` dict of version ``from_version`` and returns that of
    ``from_version + 1``; readers chain the steps up to the class's
    ``event_version``::

        @upcaster("todo.created", from_version=1)
        def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
            return {**data, "priority": "normal"}

    ``registry`` is the process-wide one unless given. A step that leads past
    the registered class, or that another function already covers, raises
    :class:`~eventbus.errors.EventVersionError`.
    """
    return (registry if registry is not None else _process_registry()).upcaster(
        event_type, from_version=from_version
    )


def resolve_event_type(ref: object, event_registry: EventRegistry | None = None) -> type[Event]:
    """Turn a class, a type name or a string enum member into its Event class."""
    reg = event_registry if event_registry is not None else registry
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
