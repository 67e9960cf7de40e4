"""The payload column's format: an envelope as JSON text, and every way it can be unusable."""

from __future__ import annotations

import json

import pytest

from eventbus import EventValidationError, InMemoryEventBus, OutboxRowError, UnknownEventType
from tests.outbox.events import EVENTS, placed

BUS = InMemoryEventBus(event_registry=EVENTS)


def test_a_payload_decodes_to_the_same_envelope() -> None:
    envelope = placed("o1", metadata={"tenant": "t1"})
    decoded = decode(outbox_payload_of(envelope))
    assert decoded == envelope
    assert decoded.data.total == 10


def test_a_payload_written_by_older_code_is_upcast_like_any_read() -> None:
    from eventbus import Event, EventRegistry
    from eventbus.outbox import decode_outbox_payload

    newer = EventRegistry()

    class OrderPlacedV2(Event, registry=newer):
        event_type = "outbox_test.order_placed"
        event_version = 2
        order: str
        total: int
        currency: str

    @newer.upcaster("outbox_test.order_placed", from_version=1)
    def add_currency(data: dict[str, object]) -> dict[str, object]:
        return {**data, "currency": "EUR"}

    # Given a row written before the deploy (v1), relayed after it
    decoded = decode_outbox_payload(
        InMemoryEventBus(event_registry=newer), outbox_payload_of(placed("o1"))
    )
    assert decoded.version == 2
    assert decoded.data == OrderPlacedV2(order="o1", total=10, currency="EUR")


@pytest.mark.parametrize(
    ("payload", "message", "cause"),
    [
        ("{not json", "not JSON", json.JSONDecodeError),
        ("", "not JSON", json.JSONDecodeError),
        ('"a string"', "not an envelope: a JSON str", None),
        ("[]", "not an envelope: a JSON list", None),
        ('{"event_type": 3}', "no 'event_type' string", None),
        (
            json.dumps(placed("o").to_wire() | {"event_type": "outbox_test.nobody"}),
            "unknown event type 'outbox_test.nobody' v1",
            UnknownEventType,
        ),
        (
            json.dumps(placed("o").to_wire() | {"data": {"order": "o", "total": -1}}),
            "total",
            EventValidationError,
        ),
        (json.dumps(placed("o").to_wire() | {"version": "one"}), "'version'", None),
    ],
)
def test_an_unusable_payload_is_an_outbox_row_error(
    payload: str, message: str, cause: type[BaseException] | None
) -> None:
    with pytest.raises(OutboxRowError, match="outbox payload") as raised:
        decode(payload)
    assert message in str(raised.value)
    if cause is not None:
        assert isinstance(raised.value.__cause__, cause)


def test_the_payload_helpers_import_without_sqlalchemy() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "from eventbus.outbox import outbox_payload, decode_outbox_payload\n"
        "try:\n"
        "    from eventbus.outbox import Outbox\n"
        "except ImportError as exc:\n"
        "    print('hint:', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'eventbus[store]'" in out


def outbox_payload_of(envelope: object) -> str:
    from eventbus.outbox import outbox_payload

    return outbox_payload(envelope)  # type: ignore[arg-type]


def decode(payload: str) -> object:
    from eventbus.outbox import decode_outbox_payload

    return decode_outbox_payload(BUS, payload)
