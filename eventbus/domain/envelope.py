"""The envelope: one published event with its identity, time and lineage.

The wire format is JSON only. One handler's task message carries the envelope
as its single positional argument, as this object::

    {
      "event_id": "6f1c…",                 # UUID, stable across retries and replays
      "event_type": "todo.created",
      "version": 1,                        # schema version of "data"
      "occurred_at": "2026-11-26T15:00:00.123456Z",
      "aggregate_id": "42", "aggregate_type": "Todo",
      "sequence": null,                    # per-aggregate position, when known
      "correlation_id": "…", "causation_id": null,
      "metadata": {},
      "data": {"title": "Buy milk", "priority": "high"}
    }

A reader decodes it with :meth:`Envelope.from_wire`, which upcasts data of
an older ``version`` to the event class's current one first.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Generic, Self, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from eventbus.domain.events import Event, EventRegistry, EventTypeRef, registry, resolve_event_type
from eventbus.domain.ids import new_event_id
from eventbus.domain.upcasting import UPCAST_FROM_KEY
from eventbus.errors import EnvelopeDecodeError, EventBusError, EventValidationError

__all__ = ["MAX_ID_LENGTH", "Envelope", "check_ids", "create_event", "decode_envelope"]

EventT = TypeVar("EventT", bound=Event)

#: The longest aggregate id, aggregate type, correlation id and causation id
#: published, in characters: the event store and the outbox keep them in
#: columns of this size, and ordering keeps the aggregate in Redis keys.
MAX_ID_LENGTH = 255
_ID_FIELDS = ("aggregate_id", "aggregate_type", "correlation_id", "causation_id")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel, Generic[EventT]):
    """An event as it travels: ``data`` is the typed :class:`Event` payload.

    Handlers receive an ``Envelope``; annotate them as ``Envelope[TodoCreated]``
    for typed access to ``envelope.data``.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    event_id: UUID = Field(default_factory=new_event_id)
    event_type: str
    version: int
    occurred_at: datetime = Field(default_factory=_utcnow)
    aggregate_id: str | None = None
    aggregate_type: str | None = None
    sequence: int | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    data: EventT

    # Invalid fields raise EventValidationError (also pydantic's ValidationError),
    # as an event's invalid data does.
    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise EventValidationError.from_pydantic(_type_name(data), exc) from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Self:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise EventValidationError.from_pydantic(_type_name(obj), exc) from None

    @field_validator("occurred_at")
    @classmethod
    def _as_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("occurred_at must be timezone-aware")
        return value.astimezone(UTC)

    @field_validator("aggregate_id", "correlation_id", "causation_id", mode="before")
    @classmethod
    def _ids_as_str(cls, value: object) -> object:
        # UUIDs and ints are common ids; the wire keeps them as strings.
        return (
            str(value) if isinstance(value, (UUID, int)) and not isinstance(value, bool) else value
        )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict sent to handlers (see the module docstring)."""
        return {
            "event_id": str(self.event_id),
            "event_type": self.event_type,
            "version": self.version,
            "occurred_at": self.occurred_at.isoformat().replace("+00:00", "Z"),
            "aggregate_id": self.aggregate_id,
            "aggregate_type": self.aggregate_type,
            "sequence": self.sequence,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "metadata": self.metadata,
            "data": self.data.model_dump(mode="json"),
        }

    @classmethod
    def from_wire(
        cls, payload: object, event_registry: EventRegistry | None = None
    ) -> Envelope[Any]:
        """Rebuild an envelope from its wire dict, or raise :class:`EnvelopeDecodeError`.

        Data of an older schema version is upcast to the event class's
        current one first (:mod:`eventbus.domain.upcasting`): the envelope's
        ``version`` is then the current version, and
        ``metadata["eventbus_upcast_from"]`` the version on the wire. The
        error's ``__cause__`` is the eventbus error behind it, when there is
        one (see :func:`decode_envelope`).
        """
        if not isinstance(payload, Mapping):
            raise EnvelopeDecodeError(
                f"envelope must be a JSON object, got {type(payload).__name__}"
            )
        event_type = payload.get("event_type")
        if not isinstance(event_type, str):
            raise EnvelopeDecodeError("envelope has no 'event_type' string")
        try:
            return decode_envelope(payload, event_registry)
        except EventBusError as exc:
            raise EnvelopeDecodeError(f"invalid envelope for {event_type!r}: {exc}") from exc

    def with_metadata(self, **items: Any) -> Envelope[EventT]:
        """A copy with ``items`` merged into ``metadata`` (the event id is kept)."""
        return self.model_copy(update={"metadata": {**self.metadata, **items}})


def _type_name(fields: object) -> str:
    """The event type named in envelope fields being validated, for the error message."""
    name = fields.get("event_type") if isinstance(fields, Mapping) else None
    return name if isinstance(name, str) else "<unknown>"


def decode_envelope(
    payload: Mapping[str, Any], event_registry: EventRegistry | None = None
) -> Envelope[Any]:
    """:meth:`Envelope.from_wire`'s work, raising the error that says what is wrong.

    For readers that tell the cases apart (the event store): an unknown type
    is :class:`~eventbus.errors.UnknownEventType` (naming type and version),
    data that cannot be upcast :class:`~eventbus.errors.EventVersionError`,
    data that fails its schema :class:`~eventbus.errors.EventValidationError`,
    any other bad field :class:`~eventbus.errors.EnvelopeDecodeError`.
    """
    event_type = str(payload.get("event_type"))
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        version = None
    reg = event_registry if event_registry is not None else registry
    event_class = reg.get(event_type, version=version)
    if version is None:
        # Upcasting picks its steps by version: a guess would be wrong data.
        raise EnvelopeDecodeError("'version' is not an integer")
    fields = {k: v for k, v in payload.items() if k != "data"}
    raw = payload.get("data") or {}
    current = event_class.event_version
    if version != current and isinstance(raw, Mapping):
        raw = reg.upcasters.upcast(event_type, version, dict(raw), current)
        fields["version"] = current
        metadata = fields.get("metadata")
        if metadata is None or isinstance(metadata, Mapping):
            fields["metadata"] = {**(metadata or {}), UPCAST_FROM_KEY: version}
    data = event_class.parse_data(raw)
    try:
        return Envelope.model_validate({**fields, "data": data})
    except ValidationError as exc:
        raise EnvelopeDecodeError(str(exc)) from exc


def create_event(
    event_type: EventTypeRef,
    data: Mapping[str, Any] | Event,
    *,
    aggregate_id: object = None,
    aggregate_type: str | None = None,
    correlation_id: object = None,
    causation_id: object = None,
    metadata: Mapping[str, Any] | None = None,
    event_registry: EventRegistry | None = None,
) -> Envelope[Any]:
    """Validate ``data`` against the event type and wrap it in a new envelope.

    ``event_type`` is the class, its name or a string enum member::

        event = create_event(EventTypes.TODO_CREATED, {"title": "Buy milk"},
                             aggregate_id=todo_id, aggregate_type="Todo")
        bus.publish(event)

    Raises :class:`~eventbus.errors.EventValidationError` naming each bad field
    (of the data, or an id over :data:`MAX_ID_LENGTH` characters),
    :class:`~eventbus.errors.UnknownEventType` for a name nobody registered.
    """
    event_class = resolve_event_type(event_type, event_registry)
    if isinstance(data, Event):
        if not isinstance(data, event_class):
            raise TypeError(
                f"data is a {type(data).__qualname__}, not a {event_class.__qualname__}"
            )
        event = data
    else:
        event = event_class.parse_data(data)
    return wrap(
        event,
        aggregate_id=aggregate_id,
        aggregate_type=aggregate_type,
        correlation_id=correlation_id,
        causation_id=causation_id,
        metadata=metadata,
    )


def check_ids(envelope: Envelope[Any]) -> None:
    """Refuse an envelope whose ids are over :data:`MAX_ID_LENGTH` characters.

    Checked where envelopes are made (:func:`create_event`) and published,
    not where they are read: a message already sent is still handled.
    """
    errors = [
        {
            "type": "string_too_long",
            "loc": (name,),
            # Not the whole value in the error: it may be a megabyte.
            "input": f"{value[:40]}... ({len(value)} characters)",
            "ctx": {"max_length": MAX_ID_LENGTH},
        }
        for name in _ID_FIELDS
        if (value := getattr(envelope, name)) is not None and len(value) > MAX_ID_LENGTH
    ]
    if errors:
        raise EventValidationError(envelope.event_type, errors)


def wrap(
    event: Event,
    *,
    aggregate_id: object = None,
    aggregate_type: str | None = None,
    correlation_id: object = None,
    causation_id: object = None,
    metadata: Mapping[str, Any] | None = None,
) -> Envelope[Any]:
    """Wrap an already validated event in a fresh envelope (its ids checked: :func:`check_ids`)."""
    event_id = new_event_id()
    if correlation_id is None:
        # A new event with no correlation starts its own conversation.
        correlation_id = str(event_id)
    if metadata is None:
        metadata = {}
    elif isinstance(metadata, Mapping):
        metadata = dict(metadata)
    else:  # (not a mapping: the envelope refuses it, naming the field)
        metadata = metadata or {}
    fields = {
        "event_id": event_id,
        "event_type": event.event_type,
        "version": event.event_version,
        "occurred_at": _utcnow(),
        "aggregate_id": aggregate_id,
        "aggregate_type": aggregate_type,
        "correlation_id": correlation_id,
        "causation_id": causation_id,
        "metadata": metadata,
        "data": event,
    }
    if _as_validated(fields):
        # Every field is already what validation would leave (see _as_validated):
        # a copy of a valid envelope with them is the envelope, at half the cost.
        return _VALID.model_copy(update=fields)
    envelope: Envelope[Any] = Envelope(**fields)
    check_ids(envelope)
    return envelope


def _as_validated(fields: dict[str, Any]) -> bool:
    """Whether ``fields`` (of :func:`wrap`) are values the envelope's validation keeps as they are.

    An Event, a type name and an int version, ids that are None or ``str``
    (not a subclass, not an int or UUID to convert) within
    :data:`MAX_ID_LENGTH`, metadata a ``dict`` with ``str`` keys. Anything
    else goes through validation, which converts it or raises.
    """
    for name in _ID_FIELDS:
        value = fields[name]
        if value is not None and (type(value) is not str or len(value) > MAX_ID_LENGTH):
            return False
    metadata = fields["metadata"]
    return (
        isinstance(fields["data"], Event)
        and type(fields["event_type"]) is str
        and type(fields["version"]) is int
        and type(metadata) is dict
        and all(type(key) is str for key in metadata)
    )


class _Valid(Event, registry=EventRegistry()):
    event_type = "eventbus.valid"


#: An envelope :func:`wrap` copies with new fields that need no validation.
_VALID: Envelope[Any] = Envelope(
    event_id=new_event_id(),
    event_type=_Valid.event_type,
    version=_Valid.event_version,
    occurred_at=_utcnow(),
    aggregate_id=None,
    aggregate_type=None,
    correlation_id=None,
    causation_id=None,
    metadata={},
    data=_Valid(),
)
