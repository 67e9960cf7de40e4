"""The dead-letter record keeps what an operator needs, within bounds."""

from __future__ import annotations

import json
import uuid

import pydantic
import pytest

from eventbus.deadletter.record import (
    MAX_ENVELOPE_DEPTH,
    MAX_EXCEPTION_MESSAGE,
    MAX_TRACEBACK,
    DeadLetter,
)
from eventbus.errors import EnvelopeDecodeError


class Basket(pydantic.BaseModel):
    items: list[int]


def _validation_error(items: int) -> pydantic.ValidationError:
    with pytest.raises(pydantic.ValidationError) as raised:
        Basket.model_validate({"items": ["not a number"] * items})
    return raised.value


def test_an_enormous_exception_message_is_cut_to_16_kib_and_says_so() -> None:
    # Given a validation error of 20,000 bad items (its message: over a megabyte)
    error = _validation_error(20_000)
    try:
        raise EnvelopeDecodeError(str(error)) from error
    except EnvelopeDecodeError as exc:
        full = str(exc)
        # When it is dead-lettered
        record = DeadLetter.from_exception(
            exc, handler="h", reason="undecodable", attempts=1, envelope={"event_type": "x"}
        )
    assert len(full) > 1_000_000

    # Then the record keeps its first 16 KiB, marked as cut with the full size
    message = record.exception_message
    assert len(message.encode()) <= MAX_EXCEPTION_MESSAGE == 16 * 1024
    assert message.startswith(full[:10_000])
    size = len(full)  # (ASCII: as many bytes)
    assert message.endswith(f"[... cut by eventbus: {size} characters in all, {size} bytes]")
    # And so does its traceback, frames first
    assert record.traceback is not None
    assert len(record.traceback.encode()) <= MAX_TRACEBACK
    assert record.traceback.startswith("Traceback (most recent call last):")
    assert "cut by eventbus" in record.traceback
    # And the record still goes to JSON and back whole
    assert DeadLetter.model_validate_json(record.model_dump_json()) == record


def _record(message: str) -> DeadLetter:
    return DeadLetter(
        handler=None, reason="rejected", attempts=1, exception_type="E", exception_message=message
    )


def test_a_short_message_is_kept_as_it_is_and_a_cut_never_splits_a_character() -> None:
    short = _record("é" * 4096)
    assert short.exception_message == "é" * 4096  # 8 KiB of UTF-8

    long = _record("é" * 9000)
    assert len(long.exception_message.encode()) <= MAX_EXCEPTION_MESSAGE
    assert long.exception_message.startswith("é" * 8000)
    assert "cut by eventbus: 9000 characters in all, 18000 bytes" in long.exception_message


def test_an_envelope_nested_too_deep_to_write_is_kept_as_text() -> None:
    # Given an envelope whose metadata nests 300 levels deep (pydantic writes about 200)
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    envelope = {"event_id": str(uuid.uuid4()), "event_type": "x.y", "metadata": {"deep": deep}}

    # When a handler's failure on it is dead-lettered
    record = DeadLetter.from_exception(
        ValueError("no"), handler="h", reason="permanent_error", attempts=1, envelope=envelope
    )

    # Then it is kept as its JSON text, the record names the event and can be written and read
    assert record.envelope is None
    assert record.raw_body == json.dumps(envelope)
    assert (record.event_id, record.event_type) == (envelope["event_id"], "x.y")
    assert not record.replayable
    assert DeadLetter.model_validate_json(record.model_dump_json()) == record
    # While one within the bound stays an envelope
    shallow = {"event_type": "x.y", "metadata": {"deep": [[[1]]]}}
    assert MAX_ENVELOPE_DEPTH >= 10
    kept = DeadLetter.from_exception(
        ValueError("no"), handler="h", reason="permanent_error", attempts=1, envelope=shallow
    )
    assert kept.envelope == shallow
