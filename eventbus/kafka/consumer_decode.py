"""A consumed Kafka record as an envelope, or the error that makes it a dead letter.

Two kinds of records arrive on a topic (the codec is :mod:`eventbus.kafka.records`):

* **eventbus records** (the event-type header set, or a value that is an
  envelope): the envelope is rebuilt and validated as a worker would (its
  data against the registered class, older versions upcast); the event keeps
  its own id.
* **foreign records**, from producers that are not eventbus: a plain JSON
  object as the value, no envelope headers, on a topic that ``topic_types``
  maps to an event type (:func:`~eventbus.kafka.records.decode_plain_record`:
  the record key is the aggregate id, the event id is derived from the
  record's place, so a record dispatched twice is the same event).

Anything else (not JSON, not an object, an unknown type or version, invalid
data) raises :class:`RecordError`, whose ``kind`` is the type of the eventbus
error that says what is wrong; the consumer turns it into a dead letter.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from eventbus.deadletter.record import MAX_RAW_BODY, DeadLetter
from eventbus.domain.envelope import Envelope
from eventbus.domain.events import EventRegistry
from eventbus.errors import EnvelopeDecodeError, EventBusError, PayloadTooLarge
from eventbus.kafka.records import decode_plain_record, decode_record, is_envelope_record

__all__ = ["Record", "RecordError", "dead_letter_of", "decode_consumed", "record_uuid"]

#: Namespace of the ids derived from a record's place (dead-letter ids).
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
    """A record that can never be dispatched; ``kind``: the type of the error that says why.

    A type, not the error: an exception kept past its ``except`` block keeps its
    traceback's frames alive, the consumer's Kafka client among their locals,
    for the cyclic garbage collector, which in a forked child would free that
    client and hang there (librdkafka waits for the parent's threads).
    """

    def __init__(self, message: str, kind: type[BaseException] | None = None) -> None:
        super().__init__(message)
        self.kind: type[BaseException] = kind or RecordError


def record_uuid(record: Record, purpose: str) -> uuid.UUID:
    """A stable id of the record's place and ``purpose``: topic, partition, offset, timestamp.

    The timestamp tells a record from the one a re-created topic puts at
    the same offset.
    """
    _, stamp = record.timestamp()
    place = f"{purpose}/{record.topic()}/{record.partition()}/{record.offset()}/{stamp}"
    return uuid.uuid5(_NAMESPACE, place)


def decode_consumed(
    record: Record, registry: EventRegistry, topic_types: Mapping[str, str]
) -> Envelope[Any]:
    """The envelope ``record`` carries (module docstring), or :class:`RecordError`."""
    headers = record.headers()
    topic = record.topic() or ""
    foreign_type = topic_types.get(topic)
    try:
        if foreign_type is not None and not is_envelope_record(headers):
            stamp_type, stamp = record.timestamp()
            return decode_plain_record(
                record.value(),
                foreign_type,
                topic=topic,
                partition=int(record.partition() or 0),
                offset=int(record.offset() or 0),
                key=record.key(),
                timestamp_ms=stamp if stamp_type else None,
                event_registry=registry,
            )
        return decode_record(record.value(), headers, event_registry=registry)
    except EnvelopeDecodeError as exc:
        kind = type(exc.__cause__) if isinstance(exc.__cause__, EventBusError) else type(exc)
        message = str(exc)
        if foreign_type is None and not is_envelope_record(headers):
            message += (
                f" (a record without eventbus headers, on topic {topic!r}, which maps to no "
                "event type: eventbus_kafka_topic_types)"
            )
        raise RecordError(message, kind) from None


def dead_letter_of(
    record: Record, kind: type[BaseException], message: str, *, worker: str
) -> DeadLetter:
    """The dead letter of a record that can never be dispatched.

    Reason ``undecodable`` (``oversized`` when the bus refused its size);
    ``exception_type`` is ``kind``, the error that says what is wrong, so that
    an operator groups by it (unknown type, invalid data...); ``source`` is
    where the record is. Its id derives from the record's place: read twice, it
    is one record. It has no handler: it is not replayable (fix the producer,
    produce it again).
    """
    raw = record.value()
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return DeadLetter(
        id=record_uuid(record, "dead-letter").hex,
        handler=None,
        reason="oversized" if issubclass(kind, PayloadTooLarge) else "undecodable",
        attempts=1,
        exception_type=kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}",
        exception_message=message,
        worker=worker,
        raw_body=text[:MAX_RAW_BODY] if text is not None else None,
        raw_size=len(raw) if raw is not None else None,
        source={
            "kafka_topic": record.topic(),
            "partition": record.partition(),
            "offset": record.offset(),
        },
    )
