"""The eventbus error family: catch :class:`EventBusError` to catch them all.

::

    EventBusError
    ├── EventError                  an event type or event data is wrong
    │   ├── EventValidationError    invalid event data or envelope field (also pydantic's
    │   │                           ValidationError: construction, create_event, publish)
    │   ├── UnknownEventType        no event class is registered under that name
    │   ├── DuplicateEventType      two classes claim the same type name
    │   ├── PayloadTooLarge         the envelope is over eventbus_max_payload_bytes
    │   └── EventVersionError       data at a schema version the code cannot upcast
    ├── ConfigurationError          a setting is missing or wrong
    │   ├── IncompatibleDependency  the installed Celery/kombu/py-amqp lacks what a guarantee needs
    │   └── MissingDependency   an optional dependency is not installed (also an ImportError)
    ├── StateStoreError             the state store (Redis: idempotency, ordering, sequence
    │                               numbers) could not be used: its URL, its server
    ├── SubscriptionError           a handler cannot be subscribed
    ├── PublishError                the broker did not take the message(s)
    ├── EnvelopeDecodeError         a message body is not a valid envelope (worker side)
    ├── PermanentHandlerError       raise it from a handler: no retry, straight to the DLQ
    │   └── OrderingError           an ordered handler cannot take this event in order
    │       ├── SequenceGap         an earlier event of the aggregate never came
    │       └── LateEvent           it came after later events were handled
    └── DeadLetterError             a dead-letter operation failed
        ├── DeadLetterNotFound      no record with that id
        ├── DeadLetterQueueUnavailable  the queue could not be read or changed (not: it is empty)
        └── ReplayError             a record could not be replayed
            └── ReplayConflict      another replay holds the record
    └── EventStoreError             an event store operation failed
        └── ConcurrencyError        the aggregate is not at the expected version
    └── OutboxError                 an outbox operation failed
        └── OutboxRowError          an outbox row cannot be published (never retried)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Self

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_core.core_schema import ErrorType

InputType = Literal["python", "json"]

__all__ = [
    "ConcurrencyError",
    "ConfigurationError",
    "DeadLetterError",
    "DeadLetterNotFound",
    "DeadLetterQueueUnavailable",
    "DuplicateEventType",
    "EnvelopeDecodeError",
    "EventBusError",
    "EventError",
    "EventStoreError",
    "EventValidationError",
    "EventVersionError",
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
    "SubscriptionError",
    "UnknownEventType",
]


class EventBusError(Exception):
    """Root of every error eventbus raises on purpose."""


class EventError(EventBusError):
    """An event type or an event's data is wrong."""


class EventValidationError(EventError, ValidationError):
    """Event data, or a field of its envelope, failed validation.

    Raised wherever eventbus finds invalid data, before anything is sent:
    constructing an event (``TodoCreated(...)``, ``TodoCreated.model_validate``
    and ``model_validate_json``), :func:`~eventbus.create_event`, ``publish``,
    building an envelope. Readers of messages and stored events (the worker,
    the store, replay) see it as the cause of their own errors.

    It is also pydantic's ``ValidationError`` (so a ``ValueError``):
    ``except ValidationError`` keeps catching it, and ``errors()`` returns
    pydantic's structured list. Its message is one line naming the event type
    and every failing field, without the values given.
    """

    def __new__(cls, event_type: str, errors: Sequence[Any], *pydantic_args: Any) -> Self:
        if pydantic_args:
            # pydantic's own construction (from_exception_data, unpickling):
            # its line errors, the input type and whether to hide the input.
            return super().__new__(cls, event_type, errors, *pydantic_args)
        # Error dicts, such as pydantic's errors() list.
        return cls.from_exception_data(event_type, [_line_error(err) for err in errors])

    def __init__(self, *args: Any) -> None:
        pass  # complete already (BaseException.__init__ would replace pydantic's args)

    @classmethod
    def from_pydantic(
        cls, event_type: str, error: ValidationError, *, input_type: InputType = "python"
    ) -> Self:
        """pydantic's ``error`` as an :class:`EventValidationError` of ``event_type``.

        ``input_type`` is ``"json"`` for an error of ``model_validate_json``.
        """
        if isinstance(error, cls) and error.event_type == event_type:
            return error
        return cls.from_exception_data(event_type, error.errors(), input_type=input_type)  # type: ignore[arg-type]

    @property
    def event_type(self) -> str:
        return self.title

    def __str__(self) -> str:
        details = "; ".join(
            _describe(err) for err in self.errors(include_url=False, include_input=False)
        )
        return f"invalid data for event {self.event_type!r}: {details}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


def _line_error(error: Mapping[str, Any]) -> InitErrorDetails:
    """One of pydantic's error dicts as pydantic takes it back; any other type as its own."""
    kind = error.get("type")
    line: dict[str, Any] = {"loc": tuple(error.get("loc", ())), "input": error.get("input")}
    if isinstance(kind, str) and kind in _PYDANTIC_ERROR_TYPES:
        line["type"] = kind
        if "ctx" in error:
            line["ctx"] = error["ctx"]
    else:
        # (With no context, pydantic leaves the message's braces alone.)
        line["type"] = PydanticCustomError(str(kind or "invalid"), str(error.get("msg") or kind))
    return line  # type: ignore[return-value]


def _describe(error: Mapping[str, Any]) -> str:
    loc = error.get("loc", ())
    where = ".".join(str(part) for part in loc) if isinstance(loc, (tuple, list)) else str(loc)
    return f"{where or '<root>'}: {error.get('msg')}"


class UnknownEventType(EventError, LookupError):
    """No event class is registered under this type name.

    ``version`` is the schema version of the data being read, when there is
    data (a message, a stored event): the message names both.
    """

    def __init__(
        self, event_type: str, known: list[str] | None = None, *, version: int | None = None
    ) -> None:
        self.event_type = event_type
        self.version = version
        at = f" v{version}" if version is not None else ""
        hint = f" (registered: {', '.join(sorted(known))})" if known else ""
        super().__init__(f"unknown event type {event_type!r}{at}{hint}")


class DuplicateEventType(EventError):
    """Two different event classes declare the same type name and version."""


class PayloadTooLarge(EventError, ValueError):
    """An envelope is larger on the wire than ``eventbus_max_payload_bytes``.

    Raised by ``publish`` before anything is sent; a worker dead-letters such
    a message instead of running its handler.
    """

    def __init__(self, event_type: str, size: int, limit: int) -> None:
        self.event_type = event_type
        self.size = size
        self.limit = limit
        super().__init__(
            f"event {event_type!r} is {size} bytes on the wire, over the limit of {limit} "
            "(eventbus_max_payload_bytes): send a reference to the data instead"
        )


class EventVersionError(EventError):
    """Event data cannot be brought to its class's current schema version.

    The data is newer than the class (deploy the new code first), a step of
    the upcaster chain is missing or failed, or two upcasters claim one step.
    ``version`` is the data's version, ``current`` the class's (if known).
    """

    def __init__(
        self, message: str, *, event_type: str, version: int, current: int | None = None
    ) -> None:
        self.event_type = event_type
        self.version = version
        self.current = current
        super().__init__(message)


class ConfigurationError(EventBusError):
    """A setting eventbus needs is missing or has a wrong value."""


class IncompatibleDependency(ConfigurationError):
    """The installed Celery, kombu or py-amqp lacks a private name a guarantee depends on.

    Raised at worker start (and by ``publish`` for the broker transport), never
    half-way through a delivery: the message names what was not found, the
    installed versions and the supported range, and the setting that turns the
    dependent piece off where one exists (``eventbus_redis_transport = "kombu"``
    for eventbus's Redis transport). See :mod:`eventbus.celery.internals`.
    """


class MissingDependency(ConfigurationError, ImportError):
    """An optional dependency of the feature being used is not installed.

    The message says what to install (``pip install "eventbus[kafka]"``). It is
    also an ``ImportError``, which the import of a module that needs the
    dependency raises.
    """


class StateStoreError(EventBusError):
    """The state store could not be used: idempotency claims, ordering, sequence numbers.

    Its URL (``eventbus_redis_url``, else the broker's or result backend's,
    see :mod:`eventbus.guarantees.state`) cannot be parsed, or its server refused the
    login, did not answer, or answered an error. The message names the store
    (password masked), the setting its URL came from, what was being done
    and the problem. A ``publish`` that needed a sequence number sent
    nothing; a delivery to an idempotent or ordered handler did not run the
    handler, and is retried like a failure of it (whatever its ``retry_on``),
    then dead-lettered when its retries are spent.
    """


class SubscriptionError(EventBusError):
    """A handler cannot be subscribed: not callable, name clash, bad option."""


class PublishError(EventBusError):
    """The broker did not accept a message after the publish retry policy.

    Some handlers of the event may have received their message already
    (``sent`` names them); the event as a whole was not delivered.
    """

    def __init__(self, message: str, *, sent: tuple[str, ...] = ()) -> None:
        self.sent = sent
        super().__init__(message)


class EnvelopeDecodeError(EventBusError):
    """A message on a handler queue is not a valid eventbus envelope.

    It is never retried: the message goes to the dead-letter queue.
    """


class PermanentHandlerError(EventBusError):
    """Raise from a handler when retrying cannot help (bad input, business rule).

    The failure skips the remaining retries and is dead-lettered at once.
    """


class OrderingError(PermanentHandlerError):
    """An ordered handler cannot take this event in its aggregate's order.

    Dead-lettered at once: replay it (after its predecessors) when the gap is
    resolved.
    """


class SequenceGap(OrderingError):
    """An earlier event of the aggregate did not arrive within the gap timeout."""


class LateEvent(OrderingError):
    """The event arrived after the handler had moved past its sequence number."""


class DeadLetterError(EventBusError):
    """A dead-letter queue operation failed."""


class DeadLetterNotFound(DeadLetterError, LookupError):
    """No dead-letter record has this id."""

    def __init__(self, record_id: str, *, hint: str = "") -> None:
        self.record_id = record_id
        super().__init__(f"no dead letter with id {record_id!r}" + (f" ({hint})" if hint else ""))


class DeadLetterQueueUnavailable(DeadLetterError):
    """The dead-letter queue could not be read or changed: nothing is known about its records.

    The broker refused the login or the vhost, could not be reached, or its
    URL is wrong (unknown scheme, malformed). Never raised for a queue that
    does not exist yet: that one is empty. The message names the problem and
    the broker (its password masked).
    """


class ReplayError(DeadLetterError):
    """A dead letter could not be replayed; the record is kept."""


class ReplayConflict(ReplayError):
    """Another replay holds this record right now; that replay publishes it."""


class EventStoreError(EventBusError):
    """An event store operation failed (the database's own error is the cause)."""


class ConcurrencyError(EventStoreError):
    """The aggregate is not at the version the append expected: nothing was written.

    Another writer appended first. Load the aggregate again, re-decide, and
    append with its new version. ``expected`` and ``actual`` are versions
    (the sequence number of the aggregate's last event; 0: no events).
    """

    def __init__(
        self,
        *,
        aggregate_type: str | None,
        aggregate_id: str,
        expected: int | None,
        actual: int,
        detail: str = "",
    ) -> None:
        self.aggregate_type = aggregate_type
        self.aggregate_id = aggregate_id
        self.expected = expected
        self.actual = actual
        name = f"{aggregate_type} {aggregate_id!r}" if aggregate_type else repr(aggregate_id)
        wanted = f", not at the expected version {expected}" if expected is not None else ""
        super().__init__(
            f"aggregate {name} is at version {actual}{wanted}"
            f"{': ' + detail if detail else ''}; nothing was written"
        )


class OutboxError(EventBusError):
    """A transactional outbox operation failed (the database's own error is the cause)."""


class OutboxRowError(OutboxError):
    """An outbox row cannot be published: its payload is not a valid envelope for this code.

    Not JSON, not an envelope, an unknown event type, data that fails its
    schema or is too large to send. The relay marks the row failed
    (``failed_at``, ``last_error``), logs it and goes on; it is never retried.
    """


_PYDANTIC_ERROR_TYPES: frozenset[str] = frozenset(ErrorType.__args__)  # type: ignore[attr-defined]
