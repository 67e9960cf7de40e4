"""The publish path's shortcuts build the same envelope, ids and bytes as the long way.

``wrap`` copies a valid envelope when its fields need no validation, event
ids come from a buffered ``os.urandom``, and the Kafka record serialises the
envelope in one pass: each must give exactly what the plain way gives.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, field_serializer
from pydantic_core import PydanticSerializationError, to_json

from eventbus import Envelope, Event, EventRegistry, EventValidationError
from eventbus.domain.envelope import wrap
from eventbus.domain.ids import new_event_id

REGISTRY = EventRegistry()


class Item(BaseModel):
    sku: str


class SpecialItem(Item):
    note: str = "special"


class Placed(Event, registry=REGISTRY):
    event_type = "unit.fast.placed"
    event_version = 3

    total: Decimal
    at: datetime
    items: list[Item]
    raw: bytes = b"abc"
    label: str = "Grüße ✓"

    @field_serializer("label")
    def _shout(self, value: str) -> str:
        return value.upper()


class Kind(StrEnum):
    A = "kind-a"


def placed() -> Placed:
    return Placed(
        total=Decimal("19.99"),
        at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        items=[Item(sku="1"), SpecialItem(sku="2")],
    )


def validated(envelope: Envelope[Any]) -> Envelope[Any]:
    """The same fields through the envelope's validation."""
    return Envelope(**{name: getattr(envelope, name) for name in envelope.model_fields_set})


# -- wrap ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"aggregate_id": "a-1", "aggregate_type": "Order", "causation_id": "c"},
        {"aggregate_id": 7, "correlation_id": uuid.UUID(int=5)},  # converted to str
        {"aggregate_id": Kind.A},  # a str subclass: validation decides
        {"metadata": {"tenant": "t", "when": datetime(2026, 1, 1, tzinfo=UTC)}},
        {"metadata": {1: "not a str key"}},
    ],
)
def test_wrap_gives_the_envelope_validation_gives(fields: dict[str, Any]) -> None:
    try:
        envelope = wrap(placed(), **fields)
    except EventValidationError as exc:
        with pytest.raises(EventValidationError) as long_way:
            validated_fields = {"event_id": uuid.uuid4(), "event_type": Placed.event_type}
            Envelope(**validated_fields, version=3, data=placed(), **fields)
        assert exc.errors()[0]["loc"] == long_way.value.errors()[0]["loc"]
        return

    again = validated(envelope)
    assert again == envelope
    assert again.model_fields_set == envelope.model_fields_set
    assert type(again.aggregate_id) is type(envelope.aggregate_id)
    assert envelope.occurred_at.tzinfo is UTC
    assert envelope.correlation_id == (
        str(fields["correlation_id"]) if "correlation_id" in fields else str(envelope.event_id)
    )


def test_wrap_refuses_what_validation_refuses() -> None:
    with pytest.raises(EventValidationError, match="aggregate_id"):
        wrap(placed(), aggregate_id="x" * 256)
    with pytest.raises(EventValidationError, match="metadata"):
        wrap(placed(), metadata=["not", "a", "mapping"])  # type: ignore[arg-type]
    with pytest.raises(EventValidationError, match="aggregate_type"):
        wrap(placed(), aggregate_type=3.5)  # type: ignore[arg-type]


def test_wrap_copies_the_metadata_it_is_given() -> None:
    metadata = {"a": 1}
    envelope = wrap(placed(), metadata=metadata)
    metadata["b"] = 2
    assert envelope.metadata == {"a": 1}


# -- event ids -------------------------------------------------------------------


def test_event_ids_are_random_version_4_uuids_never_repeated() -> None:
    ids = [new_event_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert {i.version for i in ids} == {4}
    assert {i.variant for i in ids} == {uuid.RFC_4122}
    assert all(uuid.UUID(str(i)) == i for i in ids[:100])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_ids_of_its_own() -> None:
    new_event_id()  # the parent's buffer is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, b"".join(new_event_id().bytes for _ in range(8)))
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = b"".join(new_event_id().bytes for _ in range(8))
    assert len(child) == 128
    assert {child[i : i + 16] for i in range(0, 128, 16)}.isdisjoint(
        parent[i : i + 16] for i in range(0, 128, 16)
    )


# -- the Kafka record's bytes ----------------------------------------------------


def _variants() -> list[Envelope[Any]]:
    base = wrap(
        placed(),
        aggregate_id="a-1",
        metadata={"n": 1.5, "id": uuid.UUID(int=1), "d": Decimal("2.50"), "t": ("x", None)},
    )
    variants = [base, wrap(placed())]
    for micro in (0, 1, 120000, 999999):
        variants.append(
            base.model_copy(update={"occurred_at": datetime(2026, 5, 6, 7, 8, 9, micro, UTC)})
        )
    variants.append(base.model_copy(update={"sequence": 12}))
    variants.append(base.with_metadata(when=datetime(2026, 1, 1, tzinfo=UTC)))
    variants.append(  # not UTC: the wire dict's way
        base.model_copy(
            update={"occurred_at": datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2)))}
        )
    )
    variants.append(Envelope[Placed](**{n: getattr(base, n) for n in base.model_fields_set}))
    return variants


@pytest.mark.parametrize("envelope", _variants())
def test_a_record_value_is_the_wire_dicts_json_byte_for_byte(envelope: Envelope[Any]) -> None:
    pytest.importorskip("confluent_kafka")
    from eventbus.kafka import encode_record

    record = encode_record(envelope)

    assert record.value == to_json(envelope.to_wire())
    assert dict(record.headers)["eventbus-event-id"] == str(envelope.event_id).encode()


def test_falsy_metadata_that_is_not_a_mapping_is_no_metadata_as_before() -> None:
    for metadata in ([], "", 0):
        assert wrap(placed(), metadata=metadata).metadata == {}  # type: ignore[arg-type]


class Opaque:
    """A value an event may hold (arbitrary types allowed) but JSON cannot."""


class Holds(Event, registry=REGISTRY):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    event_type = "unit.fast.holds"

    thing: Opaque


def test_data_that_is_not_json_raises_what_the_wire_dict_raises() -> None:
    pytest.importorskip("confluent_kafka")
    from eventbus.kafka import encode_record

    envelope = wrap(Holds(thing=Opaque()))
    with pytest.raises(PydanticSerializationError) as wire_way:
        envelope.to_wire()
    with pytest.raises(PydanticSerializationError) as record_way:
        encode_record(envelope)
    assert str(record_way.value) == str(wire_way.value)


def test_metadata_that_is_not_json_is_refused_naming_it() -> None:
    pytest.importorskip("confluent_kafka")
    from eventbus.kafka import encode_record

    with pytest.raises(EventValidationError, match="metadata: not JSON"):
        encode_record(wrap(placed(), metadata={"when": object()}))
