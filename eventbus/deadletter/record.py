"""The dead-letter record: everything an operator needs to understand a failure."""

from __future__ import annotations

import json
import traceback as tb
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from eventbus.domain.nesting import nests_deeper_than

__all__ = [
    "MAX_ENVELOPE_DEPTH",
    "MAX_EXCEPTION_MESSAGE",
    "MAX_RAW_BODY",
    "MAX_TRACEBACK",
    "DeadLetter",
    "DeadLetterReason",
]

#: Why a message was dead-lettered.
DeadLetterReason = Literal[
    "retries_exhausted",  # the handler kept failing with a retryable error
    "permanent_error",  # the handler raised a never-retry error
    "undecodable",  # the message is not a valid envelope (or not JSON at all)
    "time_limit",  # the handler overran its hard time limit
    "worker_lost",  # the worker died and the message was not re-queued
    "rejected",  # the worker rejected the message (invalid task message)
    "broker",  # the broker dead-lettered it (RabbitMQ: rejected by a consumer, expired...)
    "delivery_limit",  # RabbitMQ: a quorum queue gave it out eventbus_delivery_limit + 1 times
    "oversized",  # the message is larger than eventbus_max_payload_bytes
    "sequence_gap",  # ordered handler: an earlier event of the aggregate never came
    "late_event",  # ordered handler: it came after later events were handled
]

MAX_RAW_BODY = 64 * 1024  #: bytes of an undecodable body kept in its record
#: Bytes (UTF-8) of an exception message kept in a record, the mark of the cut included.
MAX_EXCEPTION_MESSAGE = 16 * 1024
#: Bytes (UTF-8) of a traceback kept in a record: its start (the frames), marked as cut.
MAX_TRACEBACK = 64 * 1024
#: Levels of nesting an envelope may have to be kept as one: pydantic writes and
#: reads a record only so deep (about 200 levels); a deeper one is kept as
#: ``raw_body`` (JSON text), and the record is not replayable.
MAX_ENVELOPE_DEPTH = 100


class DeadLetter(BaseModel):
    """One failed delivery of one event to one handler.

    ``envelope`` is the event exactly as it was sent (the wire dict), so the
    record survives even if the event class changed since; ``raw_body`` is set
    instead when the message could not be decoded at all (or its envelope nests
    deeper than :data:`MAX_ENVELOPE_DEPTH`). ``source`` says where a message
    that did not come from a Celery queue came from (a Kafka record's topic,
    partition and offset). ``exception_message`` and
    ``traceback`` are cut to :data:`MAX_EXCEPTION_MESSAGE` and
    :data:`MAX_TRACEBACK` bytes, the cut marked at the end.
    """

    model_config = ConfigDict(frozen=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    handler: str | None
    reason: DeadLetterReason
    attempts: int
    exception_type: str
    exception_message: str
    traceback: str | None = None
    task_id: str | None = None
    queue: str | None = None
    worker: str | None = None
    #: When it failed; None when unknown: a message read from the queue that says
    #: nothing of it (not a record eventbus wrote), never the time of the read.
    failed_at: datetime | None = Field(default_factory=lambda: datetime.now(UTC))
    event_id: str | None = None
    event_type: str | None = None
    envelope: dict[str, Any] | None = None
    raw_body: str | None = None
    raw_size: int | None = None
    #: Where the message came from when not from a Celery queue: a Kafka record's
    #: ``{"kafka_topic": ..., "partition": ..., "offset": ...}`` (``eventbus kafka consume``).
    source: dict[str, Any] | None = None

    @field_validator("exception_message")
    @classmethod
    def _cut_exception_message(cls, value: str) -> str:
        return _cut(value, MAX_EXCEPTION_MESSAGE)

    @field_validator("traceback")
    @classmethod
    def _cut_traceback(cls, value: str | None) -> str | None:
        return None if value is None else _cut(value, MAX_TRACEBACK)

    @model_validator(mode="before")
    @classmethod
    def _keep_deep_envelope_as_text(cls, data: Any) -> Any:
        envelope = data.get("envelope") if isinstance(data, dict) else None
        if isinstance(envelope, dict) and nests_deeper_than(envelope, MAX_ENVELOPE_DEPTH):
            try:
                text = json.dumps(envelope, default=str)
            except RecursionError:
                text = f"<an envelope nested more than {MAX_ENVELOPE_DEPTH} levels deep>"
            data = {**data, "envelope": None, "raw_body": text[:MAX_RAW_BODY]}
            data["raw_size"] = len(text)
        return data

    @property
    def replayable(self) -> bool:
        return self.envelope is not None and self.handler is not None

    @property
    def group(self) -> tuple[str, str]:
        """The failure group: (handler, exception type)."""
        return (self.handler or "?", self.exception_type)

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        *,
        handler: str | None,
        reason: DeadLetterReason,
        attempts: int,
        envelope: object = None,
        traceback: str | None = None,
        **fields: Any,
    ) -> DeadLetter:
        """Build a record for ``exc``; ``envelope`` is kept only if it is a dict."""
        env = envelope if isinstance(envelope, dict) else None
        if traceback is None and exc.__traceback__ is not None:
            traceback = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        if env is None and envelope is not None and "raw_body" not in fields:
            text = repr(envelope)
            fields["raw_body"] = text[:MAX_RAW_BODY]
            fields["raw_size"] = len(text)
        return cls(
            handler=handler,
            reason=reason,
            attempts=attempts,
            exception_type=_qualified_name(type(exc)),
            exception_message=str(exc),
            traceback=traceback,
            event_id=_str_or_none(env.get("event_id")) if env else None,
            event_type=_str_or_none(env.get("event_type")) if env else None,
            envelope=env,
            **fields,
        )

    def monitor_summary(self) -> str:
        """One line for monitors such as Flower: what failed, where, how often."""
        event = f"{self.event_type}#{self.event_id}" if self.event_type else "<undecodable>"
        message = self.exception_message[:200]
        return (
            f"handler={self.handler or '?'} event={event} attempts={self.attempts} "
            f"reason={self.reason} exception={self.exception_type}: {message}"
        )

    def summary(self) -> str:
        what = f"{self.event_type}#{self.event_id}" if self.event_type else "<undecodable>"
        failure = f"{self.exception_type}: {self.exception_message}"
        return f"{self.id} {self.handler or '?'} {what} {failure}"


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _cut(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` bytes (UTF-8), else its start and a mark of the cut."""
    if len(text) <= limit // 4:  # (UTF-8 takes at most 4 bytes a character)
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    mark = f"\n[... cut by eventbus: {len(text)} characters in all, {len(data)} bytes]"
    kept = data[: limit - len(mark.encode())].decode("utf-8", "ignore")
    return kept + mark
