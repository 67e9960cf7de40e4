"""Invalid data raises one error, EventValidationError, wherever eventbus meets it.

It is also pydantic's ``ValidationError`` (code that catches that keeps
working), its ``errors()`` is pydantic's list, and its message is one line that
names the event type and each bad field, never the values given.
"""

from __future__ import annotations

import pickle
from typing import Any, Literal

import pytest
from pydantic import ValidationError

from eventbus import (
    EnvelopeDecodeError,
    Event,
    EventBusError,
    EventValidationError,
    InMemoryEventBus,
    create_event,
)
from eventbus.domain.envelope import Envelope


class TicketOpened(Event):
    event_type = "unit.ticket_opened"

    title: str
    priority: Literal["low", "normal", "high"] = "normal"
    seats: int = 1


SECRET = "s3cr3t-value"


def raised_by(call: Any) -> EventValidationError:
    with pytest.raises(EventValidationError) as err:
        call()
    return err.value


@pytest.mark.parametrize(
    "how",
    ["construct", "model_validate", "model_validate_json", "create_event", "parse_data"],
)
def test_every_way_of_making_an_event_raises_event_validation_error(how: str) -> None:
    # Given data with a bad priority, a bad seat count and an unknown field
    data = {"title": "t", "priority": "urgent", "seats": SECRET, "colour": "red"}
    calls = {
        "construct": lambda: TicketOpened(**data),
        "model_validate": lambda: TicketOpened.model_validate(data),
        "model_validate_json": lambda: TicketOpened.model_validate_json(
            f'{{"title": "t", "priority": "urgent", "seats": "{SECRET}", "colour": "red"}}'
        ),
        "create_event": lambda: create_event(TicketOpened, data),
        "parse_data": lambda: TicketOpened.parse_data(data),
    }
    # When it becomes an event, Then one EventValidationError names every bad field
    error = raised_by(calls[how])
    message = str(error)
    assert message.startswith("invalid data for event 'unit.ticket_opened': ")
    for field in ("priority", "seats", "colour"):
        assert field in message
    assert "\n" not in message and SECRET not in message
    assert error.event_type == "unit.ticket_opened"
    # And it is pydantic's ValidationError too, with pydantic's structured errors
    assert isinstance(error, ValidationError) and isinstance(error, ValueError)
    assert isinstance(error, EventBusError)
    assert {err["loc"] for err in error.errors()} == {("priority",), ("seats",), ("colour",)}
    assert all("url" not in err for err in error.errors(include_url=False))


def test_code_that_catches_pydantics_validation_error_keeps_working() -> None:
    # The Flask example's view: except ValidationError -> a 422 with exc.errors(...)
    try:
        TicketOpened(title=None)  # type: ignore[arg-type]
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False)
    assert [err["loc"] for err in errors] == [("title",)]


def test_an_invalid_envelope_field_at_publish_is_the_same_error_and_nothing_is_sent() -> None:
    # Given a bus with a handler
    bus = InMemoryEventBus()
    calls: list[object] = []
    bus.subscribe(TicketOpened, handler=calls.append, name="unit.tickets")
    # When an event is published with an aggregate id that is no id at all
    error = raised_by(lambda: bus.publish(TicketOpened(title="t"), aggregate_id=[SECRET]))
    # Then the field is named, and nothing ran or was counted
    assert "aggregate_id" in str(error) and SECRET not in str(error)
    assert calls == [] and sum(bus.published.values()) == 0
    # And create_event says the same
    raised_by(lambda: create_event(TicketOpened, {"title": "t"}, metadata="not a mapping"))


def test_an_envelope_built_by_hand_raises_it_too() -> None:
    event = TicketOpened(title="t")
    error = raised_by(lambda: Envelope(event_type="unit.ticket_opened", version="one", data=event))
    assert "version" in str(error)


def test_a_bad_message_is_still_an_envelope_decode_error_caused_by_it() -> None:
    # The worker's view: a message whose data fails its schema
    wire = create_event(TicketOpened, {"title": "t"}).to_wire()
    wire["data"]["seats"] = "many"
    with pytest.raises(EnvelopeDecodeError) as err:
        Envelope.from_wire(wire)
    assert isinstance(err.value.__cause__, EventValidationError)
    assert "seats" in str(err.value)


def test_it_survives_pickling_as_a_prefork_pool_sends_it_to_the_worker() -> None:
    error = raised_by(lambda: TicketOpened(title="t", seats="x"))
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is EventValidationError
    assert str(copy) == str(error) and copy.errors() == error.errors()


def test_it_can_still_be_built_from_a_list_of_errors() -> None:
    error = EventValidationError(
        "unit.ticket_opened",
        [
            {"loc": ("title",), "msg": "Field required", "type": "missing"},
            {"loc": ("seats",), "msg": "must be {even}", "type": "my_rule"},
        ],
    )
    assert str(error) == (
        "invalid data for event 'unit.ticket_opened': title: Field required; seats: must be {even}"
    )
    assert [err["type"] for err in error.errors()] == ["missing", "my_rule"]
