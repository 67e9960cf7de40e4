"""A consumed Kafka record as an envelope, or the error that makes it a dead letter.

Two kinds of records arrive on a topic:

* **eventbus records** (any producer that follows the record codec: an
  envelope's JSON wire dict as the value, the event type in a header). The
  envelope is rebuilt and validated as a worker would (its data against the
  registered class, older versions upcast); the event keeps its own id.
* **foreign records**, from producers that are not eventbus: a plain JSON
  object as the value, no envelope headers. A topic named in ``topic_types``
  maps them to an event type: the value is the event's data (validated
  against the class's current version), the record key its aggregate id, the
  record's timestamp its ``occurred_at``. Their event id is derived from the
  record's place (topic, partition, offset, timestamp), so a record dispatched
  twice (a consumer that died before it committed) carries the same id both
  times, and idempotent handlers run it once.

Anything else (not JSON, not an object, an unknown type or version, invalid
data) raises :class:`RecordError`, whose ``cause`` is the eventbus error that
says what is wrong; the consumer turns it into a dead letter.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from eventbus.domain.envelope import Envelope, create_event, decode_envelope
from eventbus.domain.events import EventRegistry
from eventbus.errors import EnvelopeDecodeError, EventBusError

__all__ = [
    "EVENT_TYPE_HEADER",
    "ORIGIN_KEY",
    "Record",
    "RecordError",
    "decode_record",
    "record_uuid",
]

#: The header an eventbus producer sets to the event type (the record codec's).
EVENT_TYPE_HEADER = "eventbus-event-type"
#: Metadata key of a foreign record's envelope: where it came from.
ORIGIN_KEY = "kafka"
#: Namespace of the ids derived from a record's place (event ids, dead-letter ids).
_NAMESPACE = uuid.UUID("5b0c1f7e-3d4a-4c59-9a61-2f1e8c7d4b10")


class Record(Protocol):
    """What the consumer reads of a record (``confluent_kafka.Message``'s methods)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | str | None: ...
    def value(self) -> bytes | str | None: ...
    def headers(self) -> list[tuple[str, bytes | None]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...


class RecordError(EventBusError):
    """A record that can never be dispatched: ``cause`` says why (its type names the group)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause: BaseException = cause if cause is not None else self


def record_uuid(record: Record, purpose: str = "event") -> uuid.UUID:
    """A stable id of the record's place: topic, partition, offset and timestamp.

    The timestamp tells a record from the one a re-created topic puts at
    the same offset.
    """
    _, stamp = record.timestamp()
    place = f"{purpose}/{record.topic()}/{record.partition()}/{record.offset()}/{stamp}"
    return uuid.uuid5(_NAMESPACE, place)


def _headers(record: Record) -> dict[str, bytes | None]:
    return {name.lower(): value for name, value in record.headers() or []}


def _text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode("utf-8", "replace")


def decode_record(
    record: Record, registry: EventRegistry, topic_types: Mapping[str, str]
) -> Envelope[Any]:
    """The envelope ``record`` carries (module docstring), or :class:`RecordError`."""
    raw = record.value()
    if raw is None:
        raise RecordError("the record has no value (a tombstone): no event to dispatch")
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise RecordError(
            f"the record's value is not JSON: {exc}", EnvelopeDecodeError(f"not JSON: {exc}")
        ) from exc
    headers = _headers(record)
    topic = record.topic() or ""
    foreign_type = topic_types.get(topic)
    if EVENT_TYPE_HEADER not in headers and foreign_type is not None:
        return _foreign(record, value, foreign_type, registry)
    if not isinstance(value, dict):
        cause = EnvelopeDecodeError(
            f"envelope must be a JSON object, got a JSON {type(value).__name__}"
        )
        raise RecordError(f"the record's value is not an envelope: {cause}", cause)
    if not isinstance(value.get("event_type"), str):
        cause = EnvelopeDecodeError(
            "the record's value has no 'event_type' string, and its topic "
            f"{topic!r} maps to no event type (eventbus_kafka_topic_types)"
        )
        raise RecordError(str(cause), cause)
    try:
        return decode_envelope(value, registry)
    except EventBusError as exc:
        raise RecordError(f"invalid envelope for {value['event_type']!r}: {exc}", exc) from exc


def _foreign(
    record: Record, value: object, event_type: str, registry: EventRegistry
) -> Envelope[Any]:
    """A foreign record's envelope: its value is the data of ``event_type``."""
    if not isinstance(value, dict):
        cause = EnvelopeDecodeError(
            f"the data of {event_type!r} must be a JSON object, got a JSON {type(value).__name__}"
        )
        raise RecordError(str(cause), cause)
    kind, stamp = record.timestamp()
    origin = {"topic": record.topic(), "partition": record.partition(), "offset": record.offset()}
    try:
        envelope = create_event(
            event_type,
            value,
            aggregate_id=_text(record.key()),
            metadata={ORIGIN_KEY: origin},
            event_registry=registry,
        )
    except EventBusError as exc:
        raise RecordError(f"foreign record of {event_type!r}: {exc}", exc) from exc
    event_id = record_uuid(record)
    fields: dict[str, Any] = {"event_id": event_id, "correlation_id": str(event_id)}
    if kind and stamp > 0:  # (0: no timestamp)
        fields["occurred_at"] = datetime.fromtimestamp(stamp / 1000, UTC)
    return envelope.model_copy(update=fields)
