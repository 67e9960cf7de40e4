"""An envelope as a Kafka record, and back: the codec both directions use.

A published event becomes one record::

    topic    TopicNaming.topic_for(envelope)   (default: the event type)
    key      the aggregate id, UTF-8 (None when the event has none)
    value    the JSON envelope, UTF-8: Envelope.to_wire(), compact
             (the same object a handler task carries; README "The wire format")
    headers  eventbus-event-type      "todo.created"
             eventbus-event-version   "1"
             eventbus-event-id        "6f1c0c9e-..."
             eventbus-correlation-id  "6f1c0c9e-..."   (when the envelope has one)

The headers let a consumer route or filter without parsing the value; the
value alone is the event (a reader that ignores headers loses nothing).

Reading: :func:`decode_record` turns a record's value (and headers) back into
an envelope, upcasting older data as every reader does, or raises
:class:`~eventbus.errors.EnvelopeDecodeError` saying what is wrong (not JSON,
not an envelope, headers that contradict the value); as with
:meth:`Envelope.from_wire <eventbus.domain.envelope.Envelope.from_wire>`, its
``__cause__`` is :class:`~eventbus.errors.UnknownEventType`,
:class:`~eventbus.errors.EventVersionError` or
:class:`~eventbus.errors.EventValidationError` when that is the reason.
:func:`decode_plain_record` reads a record of a producer that is not eventbus
(plain JSON data, no envelope) as an event of a type the caller names.

Imports no Kafka client: records are plain values here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic_core import to_json

from eventbus.domain.envelope import Envelope, create_event
from eventbus.domain.events import EventRegistry
from eventbus.errors import EnvelopeDecodeError, EventError, EventValidationError
from eventbus.kafka.topics import TopicNaming

__all__ = [
    "HEADER_CORRELATION_ID",
    "HEADER_EVENT_ID",
    "HEADER_EVENT_TYPE",
    "HEADER_EVENT_VERSION",
    "PLAIN_RECORD_NAMESPACE",
    "Headers",
    "KafkaRecord",
    "decode_plain_record",
    "decode_record",
    "encode_record",
    "header_values",
    "is_envelope_record",
]

HEADER_EVENT_TYPE = "eventbus-event-type"  #: the envelope's ``event_type``
HEADER_EVENT_VERSION = "eventbus-event-version"  #: its ``version`` (decimal)
HEADER_EVENT_ID = "eventbus-event-id"  #: its ``event_id`` (a UUID)
HEADER_CORRELATION_ID = "eventbus-correlation-id"  #: its ``correlation_id``, when set

#: The namespace of the ``event_id`` a plain record gets: uuid5 of ``topic/partition/offset``,
#: so a record read twice is the same event (idempotent handlers skip the second).
PLAIN_RECORD_NAMESPACE = uuid.UUID("5f0e6a8c-1d2b-4c4e-9a57-3b0c6e1f2a90")

#: Record headers as confluent-kafka gives and takes them: ``(name, value)`` pairs
#: (a value may be None), or a mapping.
Headers = Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None]

_KAFKA_TYPE = "kafka_record"


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """One record to produce: ``producer.produce(r.topic, r.value, r.key, headers=r.headers)``."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def encode_record(
    envelope: Envelope[Any],
    topics: TopicNaming | None = None,
    *,
    wire: Mapping[str, Any] | None = None,
) -> KafkaRecord:
    """The record that carries ``envelope`` (module docstring), on the topic ``topics`` names.

    ``wire`` is the envelope's wire dict when the caller has it already
    (``envelope.to_wire()`` otherwise). Metadata that is not JSON raises
    :class:`~eventbus.errors.EventValidationError`, as does an envelope
    whose topic name would be illegal: nothing is produced.
    """
    topic = (topics or _DEFAULT_TOPICS).topic_for(envelope)
    whole = wire is None and type(envelope) is Envelope and envelope.occurred_at.tzinfo is UTC
    # ``whole``: the envelope itself, serialised in one pass by pydantic: the
    # same bytes as its wire dict's (fields in to_wire's order, the UUID and
    # the UTC time as to_wire writes them, ``data`` by its own class), without
    # building the dict first. (A parametrised Envelope[T] serialises its data
    # as T, and only a UTC time is written alike by both, as "...Z" (a zone
    # offset of seconds is not): those take the wire dict.)
    if whole:
        try:
            value = to_json(envelope)
        except (TypeError, ValueError):
            # Said as the wire dict's way says it: the data's own error, or
            # metadata that is not JSON.
            whole = False
    if not whole:
        serialized = envelope.to_wire() if wire is None else wire
        value = _wire_json(envelope, serialized)
    # The event id as text: the value begins {"event_id":"<36 characters>" (no
    # second str() of the UUID).
    event_id = value[13:49] if whole else str(serialized["event_id"]).encode()
    event_type = envelope.event_type.encode()
    headers = [
        (HEADER_EVENT_TYPE, event_type),
        (HEADER_EVENT_VERSION, _VERSIONS.get(envelope.version) or str(envelope.version).encode()),
        (HEADER_EVENT_ID, event_id),
    ]
    if envelope.correlation_id is not None:
        headers.append((HEADER_CORRELATION_ID, envelope.correlation_id.encode()))
    key = envelope.aggregate_id.encode() if envelope.aggregate_id is not None else None
    return KafkaRecord(topic=topic, key=key, value=value, headers=headers)


def _wire_json(envelope: Envelope[Any], wire: Mapping[str, Any]) -> bytes:
    try:
        # pydantic's serialiser (Rust): the same compact UTF-8 JSON as
        # json.dumps(separators=(",", ":"), ensure_ascii=False), a fifth of the
        # time; metadata datetimes, UUIDs and decimals become strings, as kombu's
        # JSON makes them on the Celery bus.
        return to_json(wire)
    except (TypeError, ValueError) as exc:
        raise EventValidationError(
            envelope.event_type,
            [{"type": _KAFKA_TYPE, "loc": ("metadata",), "msg": f"not JSON: {exc}", "input": None}],
        ) from None


_VERSIONS = {n: str(n).encode() for n in range(1, 100)}
_DEFAULT_TOPICS = TopicNaming()


def header_values(headers: Headers | None) -> dict[str, str]:
    """Headers as ``{name: text}`` (the last of repeated names; values not UTF-8 skipped)."""
    if not headers:
        return {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    found: dict[str, str] = {}
    for name, value in pairs:
        if value is None:
            continue
        if isinstance(value, bytes):
            try:
                value = value.decode()
            except UnicodeDecodeError:
                continue
        found[str(name)] = str(value)
    return found


def is_envelope_record(headers: Headers | None) -> bool:
    """Whether the record says it carries an eventbus envelope (its event-type header)."""
    return HEADER_EVENT_TYPE in header_values(headers)


def decode_record(
    value: bytes | str | None,
    headers: Headers | None = None,
    *,
    event_registry: EventRegistry | None = None,
) -> Envelope[Any]:
    """The envelope a record carries, or :class:`EnvelopeDecodeError` saying what is wrong.

    ``value`` is the record's value; ``headers`` its headers (optional: the
    value alone is the envelope). Headers that contradict the value (another
    event type, id or version) are an error: one of the two was tampered with.
    """
    if value is None:
        raise EnvelopeDecodeError("the record has no value (a tombstone?), not an envelope")
    try:
        wire = json.loads(value)
    except (TypeError, ValueError) as exc:
        raise EnvelopeDecodeError(f"the record's value is not JSON: {exc}") from None
    if not isinstance(wire, dict):
        raise EnvelopeDecodeError(
            f"the record's value is a JSON {type(wire).__name__}, not an envelope object"
        )
    given = header_values(headers)
    for header, field_name in (
        (HEADER_EVENT_TYPE, "event_type"),
        (HEADER_EVENT_ID, "event_id"),
        (HEADER_EVENT_VERSION, "version"),
    ):
        if header in given and given[header] != str(wire.get(field_name)):
            raise EnvelopeDecodeError(
                f"the record's header {header}={given[header][:100]!r} contradicts its "
                f"envelope's {field_name} {str(wire.get(field_name))[:100]!r}"
            )
    return Envelope.from_wire(wire, event_registry)


def decode_plain_record(
    value: bytes | str | None,
    event_type: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | str | None = None,
    timestamp_ms: int | None = None,
    event_registry: EventRegistry | None = None,
) -> Envelope[Any]:
    """A record of another producer (plain JSON data, no envelope) as an ``event_type`` event.

    The value is the event's data, validated as usual. The envelope gets a
    stable ``event_id`` (uuid5 of ``topic/partition/offset`` in
    :data:`PLAIN_RECORD_NAMESPACE`: the same record is the same event), the
    key as ``aggregate_id``, the record's time as ``occurred_at`` and
    ``metadata["kafka"]`` = ``{"topic", "partition", "offset"}``. Raises
    :class:`EnvelopeDecodeError` (its ``__cause__`` the validation error or
    :class:`~eventbus.errors.UnknownEventType`).
    """
    if value is None:
        raise EnvelopeDecodeError(f"a record on {topic!r} has no value (a tombstone?)")
    try:
        data = json.loads(value)
    except (TypeError, ValueError) as exc:
        raise EnvelopeDecodeError(f"the record's value is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EnvelopeDecodeError(
            f"the record's value is a JSON {type(data).__name__}, not an object of "
            f"{event_type!r} data"
        )
    if isinstance(key, bytes):
        try:
            key = key.decode()
        except UnicodeDecodeError:
            raise EnvelopeDecodeError("the record's key is not UTF-8 text") from None
    source = {"topic": topic, "partition": partition, "offset": offset}
    try:
        envelope = create_event(
            event_type,
            data,
            aggregate_id=key,
            metadata={"kafka": source},
            event_registry=event_registry,
        )
    except EventError as exc:
        raise EnvelopeDecodeError(f"invalid record for {event_type!r}: {exc}") from exc
    event_id = uuid.uuid5(PLAIN_RECORD_NAMESPACE, f"{topic}/{partition}/{offset}")
    update: dict[str, Any] = {"event_id": event_id, "correlation_id": str(event_id)}
    if timestamp_ms is not None and timestamp_ms > 0:
        update["occurred_at"] = datetime.fromtimestamp(timestamp_ms / 1000, UTC)
    return envelope.model_copy(update=update)
