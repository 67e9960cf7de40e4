"""Events, the registry and the envelope's wire format."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum

import pytest

from eventbus import (
    DuplicateEventType,
    Envelope,
    EnvelopeDecodeError,
    Event,
    EventRegistry,
    EventValidationError,
    UnknownEventType,
    create_event,
    registry,
)


class OrderPlaced(Event):
    event_type = "unit.order_placed"
    event_version = 2

    order_id: int
    total_cents: int


class Types(StrEnum):
    ORDER_PLACED = "unit.order_placed"


def test_defining_an_event_registers_it_by_type_name() -> None:
    assert registry.get("unit.order_placed") is OrderPlaced
    assert "unit.order_placed" in registry.names()


def test_create_event_accepts_the_seed_style_with_a_string_enum() -> None:
    envelope = create_event(
        Types.ORDER_PLACED,
        {"order_id": 7, "total_cents": 1250},
        aggregate_id=7,
        aggregate_type="Order",
    )
    assert isinstance(envelope.data, OrderPlaced)
    assert envelope.data.order_id == 7
    assert (envelope.event_type, envelope.version) == ("unit.order_placed", 2)
    assert envelope.aggregate_id == "7" and envelope.aggregate_type == "Order"
    assert envelope.correlation_id == str(envelope.event_id)  # a new conversation
    assert envelope.occurred_at.tzinfo is UTC


def test_invalid_data_names_every_bad_field() -> None:
    with pytest.raises(EventValidationError) as err:
        create_event("unit.order_placed", {"order_id": "seven", "totl_cents": 1})
    message = str(err.value)
    assert "unit.order_placed" in message
    assert "order_id" in message and "total_cents" in message and "totl_cents" in message
    assert {tuple(e["loc"]) for e in err.value.errors()} >= {("order_id",), ("total_cents",)}


def test_unknown_type_name_lists_what_is_registered() -> None:
    with pytest.raises(UnknownEventType, match=re.escape("unit.order_placd")):
        create_event("unit.order_placd", {})


def test_a_second_class_cannot_claim_a_taken_type_name() -> None:
    with pytest.raises(DuplicateEventType, match=re.escape("unit.order_placed")):

        class Impostor(Event):
            event_type = "unit.order_placed"


def test_a_private_registry_is_independent() -> None:
    private = EventRegistry()
    private.register(OrderPlaced)
    assert private.names() == ["unit.order_placed"]
    private.unregister("unit.order_placed")
    assert len(private) == 0


def test_the_wire_format_is_plain_json_and_round_trips() -> None:
    envelope = create_event(
        OrderPlaced, {"order_id": 1, "total_cents": 99}, metadata={"tenant": "acme"}
    )
    wire = json.loads(json.dumps(envelope.to_wire()))
    assert wire["data"] == {"order_id": 1, "total_cents": 99}
    assert wire["occurred_at"].endswith("Z")
    assert Envelope.from_wire(wire) == envelope


def test_occurred_at_is_normalised_to_utc_and_naive_times_are_refused() -> None:
    paris = timezone(timedelta(hours=1))
    wire = create_event(OrderPlaced, {"order_id": 1, "total_cents": 1}).to_wire()
    wire["occurred_at"] = datetime(2026, 1, 1, 13, 0, tzinfo=paris).isoformat()
    assert Envelope.from_wire(wire).occurred_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    wire["occurred_at"] = "2026-01-01T13:00:00"
    with pytest.raises(EnvelopeDecodeError, match="timezone"):
        Envelope.from_wire(wire)


@pytest.mark.parametrize(
    "payload, reason",
    [
        ("not a dict", "JSON object"),
        ({"data": {}}, "event_type"),
        ({"event_type": "unit.nope", "data": {}}, "unknown event type"),
        ({"event_type": "unit.order_placed", "version": 2, "data": {"order_id": 1}}, "total_cents"),
    ],
)
def test_bad_wire_payloads_raise_a_decode_error_that_says_why(payload: object, reason: str) -> None:
    with pytest.raises(EnvelopeDecodeError, match=reason):
        Envelope.from_wire(payload)


def test_json_schema_is_exported_for_every_registered_type() -> None:
    schema = registry.json_schemas()["unit.order_placed"]
    assert schema["x-event-version"] == 2
    assert set(schema["required"]) == {"order_id", "total_cents"}
