"""Schema evolution: every reader upcasts old data (from_wire, a handler's delivery, a replay)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from eventbus import (
    DeadLetter,
    EnvelopeDecodeError,
    Event,
    EventRegistry,
    EventVersionError,
    InMemoryEventBus,
    UnknownEventType,
    create_event,
    upcaster,
)
from eventbus.domain.envelope import Envelope
from eventbus.domain.upcasting import UPCAST_FROM_KEY
from tests.store.events import (
    CURRENT,
    OLD_V1,
    OLD_V2,
    TodoArchived,
    TodoCreated,
    TodoCreatedV1,
    TodoCreatedV2,
)


def v1_wire(name: str = "Buy milk") -> dict[str, Any]:
    """A message the first release sent."""
    event = create_event(
        TodoCreatedV1, {"name": name}, aggregate_id=7, aggregate_type="Todo", event_registry=OLD_V1
    )
    return event.to_wire()


def test_v1_data_decodes_through_the_v3_class() -> None:
    wire = v1_wire()
    before = copy.deepcopy(wire)

    envelope = Envelope.from_wire(wire, CURRENT)

    assert envelope.data == TodoCreated(title="Buy milk", priority="normal")
    assert envelope.version == 3
    assert envelope.metadata == {UPCAST_FROM_KEY: 1}
    assert str(envelope.event_id) == before["event_id"]
    assert wire == before  # the upcasters changed a copy


def test_v2_data_takes_only_the_last_step() -> None:
    wire = create_event(
        TodoCreatedV2, {"name": "x", "priority": "low"}, event_registry=OLD_V2
    ).to_wire()
    envelope = Envelope.from_wire(wire, CURRENT)
    assert envelope.data == TodoCreated(title="x", priority="low")
    assert envelope.metadata[UPCAST_FROM_KEY] == 2


def test_current_data_is_not_marked() -> None:
    wire = create_event(TodoCreated, {"title": "t", "priority": "p"}, event_registry=CURRENT)
    assert Envelope.from_wire(wire.to_wire(), CURRENT).metadata == {}


def test_data_newer_than_the_class_is_a_decode_error_that_says_so() -> None:
    wire = {**v1_wire(), "version": 5}
    with pytest.raises(EnvelopeDecodeError, match="v5, newer than this code's v3") as caught:
        Envelope.from_wire(wire, CURRENT)
    assert isinstance(caught.value.__cause__, EventVersionError)


def test_a_missing_step_is_named_at_decode() -> None:
    gapped = EventRegistry()

    class Thing(Event, registry=gapped):
        event_type = "store.thing"
        event_version = 3
        a: int

    @gapped.upcaster(Thing, from_version=2)
    def _v2(data: dict[str, Any]) -> dict[str, Any]:
        return data

    wire = {**create_event(Thing, {"a": 1}, event_registry=gapped).to_wire(), "version": 1}
    with pytest.raises(EnvelopeDecodeError, match=r"no upcaster goes from v1 to v2"):
        Envelope.from_wire(wire, gapped)


def test_upcasters_that_cannot_be_right_are_refused_at_registration() -> None:
    reg = EventRegistry()

    class Thing(Event, registry=reg):
        event_type = "store.thing"
        event_version = 2

    def step(data: dict[str, Any]) -> dict[str, Any]:
        return data

    def other(data: dict[str, Any]) -> dict[str, Any]:
        return data

    with pytest.raises(EventVersionError, match="leads past"):
        upcaster(Thing, from_version=2, registry=reg)(step)
    upcaster("store.thing", from_version=1, registry=reg)(step)
    upcaster("store.thing", from_version=1, registry=reg)(step)  # a module reload: fine
    with pytest.raises(EventVersionError, match="already upcast by"):
        upcaster("store.thing", from_version=1, registry=reg)(other)
    with pytest.raises(EventVersionError, match="positive int"):
        upcaster("store.thing", from_version=0, registry=reg)(other)


def test_a_failing_upcaster_is_named() -> None:
    reg = EventRegistry()

    class Thing(Event, registry=reg):
        event_type = "store.thing"
        event_version = 2

    @reg.upcaster(Thing, from_version=1)
    def _broken(data: dict[str, Any]) -> dict[str, Any]:
        return {"renamed": data["missing"]}

    wire = {**create_event(Thing, {}, event_registry=reg).to_wire(), "version": 1}
    with pytest.raises(EnvelopeDecodeError, match=r"_broken .* v1 -> v2 failed: KeyError"):
        Envelope.from_wire(wire, reg)


def test_an_unknown_type_names_type_and_version() -> None:
    wire = create_event(TodoArchived, {}, event_registry=OLD_V1).to_wire()
    with pytest.raises(EnvelopeDecodeError, match=r"unknown event type 'store.todo_archived' v4"):
        Envelope.from_wire(wire, CURRENT)


def test_an_old_class_in_its_own_registry_leaves_the_current_one_alone() -> None:
    assert CURRENT.get("store.todo_created") is TodoCreated
    assert OLD_V1.get("store.todo_created") is TodoCreatedV1
    with pytest.raises(UnknownEventType, match="v2"):
        OLD_V1.get("store.nothing", version=2)


def test_a_handler_gets_old_messages_upcast() -> None:
    # Given a bus running today's code, and a message from the first release
    bus = InMemoryEventBus(event_registry=CURRENT, raise_errors=True)
    seen: list[Envelope[Any]] = []
    bus.subscribe(TodoCreated, handler=seen.append, name="store.test.seen")
    old = create_event(TodoCreatedV1, {"name": "from v1"}, event_registry=OLD_V1)

    # When it is delivered (through the wire format, as a worker decodes it)
    bus.publish(old)

    # Then the handler sees the current class
    assert [e.data for e in seen] == [TodoCreated(title="from v1", priority="normal")]


def test_a_dead_letter_of_old_data_is_replayed_upcast() -> None:
    # Given a dead letter recorded before the event class changed
    bus = InMemoryEventBus(event_registry=CURRENT, raise_errors=True)
    seen: list[Envelope[Any]] = []
    bus.subscribe(TodoCreated, handler=seen.append, name="store.test.replayed")
    record = DeadLetter.from_exception(
        RuntimeError("down"),
        handler="store.test.replayed",
        reason="retries_exhausted",
        attempts=3,
        envelope=v1_wire("dead"),
    )
    bus.dead_letter_store.append(record)

    # When it is replayed with today's code
    bus.dead_letters.replay(record.id)

    # Then the handler gets v3 data
    assert [e.data for e in seen] == [TodoCreated(title="dead", priority="normal")]
    assert seen[0].metadata[UPCAST_FROM_KEY] == 1
