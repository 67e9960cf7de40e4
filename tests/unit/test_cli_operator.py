"""What the operator reads is true and safe: old schema versions, hostile text, clear hints."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from eventbus import DeadLetter
from eventbus.celery.deadletter.base import decode_record
from eventbus.cli.main import main
from eventbus.domain.upcasting import UPCAST_FROM_KEY
from tests.unit import cli_operator_app as op

APP = ["-A", "tests.unit.cli_operator_app"]
REPO = Path(__file__).resolve().parents[2]
RAW_CONTROLS = ("\x1b", "\x07", "\x9b")


@pytest.fixture(autouse=True)
def fresh_app() -> Iterator[None]:
    op.bus.dead_letters.purge()
    op.booked.clear()
    yield


def invoke(*args: str, app: list[str] = APP, input: str | None = None) -> Result:
    return CliRunner().invoke(main, [*app, *args], input=input)


def v1_dead_letter(carrier: str = "", grams: int = 2500) -> DeadLetter:
    """A record of a v1 ShipmentBooked (weight in grams), failed before the v2 deploy."""
    event_id = str(uuid.uuid4())
    record = DeadLetter(
        handler=op.BOOK,
        reason="permanent_error",
        attempts=1,
        exception_type="ValueError",
        exception_message="no carrier",
        event_id=event_id,
        event_type=op.ShipmentBooked.event_type,
        envelope={
            "event_id": event_id,
            "event_type": op.ShipmentBooked.event_type,
            "version": 1,
            "occurred_at": "2026-11-26T12:00:00Z",
            "metadata": {},
            "data": {"carrier": carrier, "weight_grams": grams},
        },
    )
    op.bus.dead_letter_store.append(record)
    return record


# -- item 10: editing a record of an older schema version ------------------------------


def test_edit_of_a_v1_record_takes_v2_data_and_sends_v2() -> None:
    # Given a dead letter written at v1, and the v2 class with its upcaster deployed
    record = v1_dead_letter()
    # When the operator corrects it with data of the current schema
    result = invoke("dlq", "edit", record.id, "--data", '{"carrier": "dhl", "weight_kg": 2.5}')
    # Then it is validated against v2, sent as v2 under the same event id, and removed
    assert result.exit_code == 0, result.output
    (envelope,) = op.booked
    assert envelope.version == 2
    assert envelope.data == op.ShipmentBooked(carrier="dhl", weight_kg=2.5)
    assert str(envelope.event_id) == record.event_id
    assert envelope.metadata[UPCAST_FROM_KEY] == 1
    assert op.bus.dead_letters.list() == []


def test_edit_of_a_v1_record_in_the_editor_shows_the_data_upcast(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    record = v1_dead_letter()
    monkeypatch.setattr("eventbus.cli.dlq_select.interactive", lambda: True)
    shown: list[str] = []

    def edit(text: str, **kwargs: Any) -> str:
        shown.append(text)
        return text.replace('"carrier": ""', '"carrier": "ups"')

    monkeypatch.setattr(click, "edit", edit)
    result = invoke("dlq", "edit", record.id)
    assert result.exit_code == 0, result.output
    assert json.loads(shown[0]) == {"carrier": "", "weight_kg": 2.5}  # v2, from the v1 data
    assert "(upcast from v1 to v2)" in result.output
    (envelope,) = op.booked
    assert (envelope.version, envelope.data.carrier, envelope.data.weight_kg) == (2, "ups", 2.5)


def test_edit_of_a_v1_record_with_data_still_invalid_at_v2_keeps_it() -> None:
    record = v1_dead_letter()
    result = invoke("dlq", "edit", record.id, "--data", '{"carrier": "dhl", "weight_grams": 1}')
    assert result.exit_code == 1
    assert "weight_kg: Field required" in result.stderr and "nothing was sent" in result.stderr
    assert op.booked == [] and [r.id for r in op.bus.dead_letters.list()] == [record.id]


def test_a_v1_record_the_upcaster_cannot_read_is_still_edited_with_v2_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a v1 record whose data the upcaster fails on (no weight_grams)
    record = v1_dead_letter()
    broken = record.model_copy(
        update={
            "id": "broken-v1-record",
            "envelope": {**(record.envelope or {}), "data": {"carrier": "dhl"}},
        }
    )
    op.bus.dead_letter_store.append(broken)
    # Then the editor cannot show it at v2, and says what to do instead
    monkeypatch.setattr("eventbus.cli.dlq_select.interactive", lambda: True)
    result = invoke("dlq", "edit", broken.id)
    assert result.exit_code == 1 and "with --data or --file" in result.stderr
    # And corrected data of v2 goes through
    result = invoke("dlq", "edit", broken.id, "--data", '{"carrier": "dhl", "weight_kg": 1}')
    assert result.exit_code == 0, result.output
    assert [e.data.weight_kg for e in op.booked] == [1.0]


def test_replay_with_data_from_python_writes_the_current_version() -> None:
    record = v1_dead_letter()
    envelope = op.bus.dead_letters.replay(record.id, data={"carrier": "dpd", "weight_kg": 1.0})
    assert envelope.version == 2 and op.booked[0].version == 2


# -- item 12: control characters never reach the terminal raw --------------------------


def hostile_record() -> DeadLetter:
    op.bus.publish(op.Hostile())  # its handler fails at once: one dead letter
    (record,) = op.bus.dead_letters.list()
    assert op.HOSTILE in record.exception_message and op.HOSTILE in (record.handler or "")
    return record


def assert_escaped(text: str) -> None:
    for control in RAW_CONTROLS:
        assert control not in text, repr(text)


def test_control_characters_are_escaped_in_every_text_output() -> None:
    # Given a record whose event type, handler and exception carry ESC, BEL and CSI
    record = hostile_record()
    # When the operator reads it every way there is
    for args in (
        ["dlq", "list"],
        ["dlq", "stats"],
        ["dlq", "show", record.id],
        ["dlq", "replay", "--dry-run", "--all", "-v"],
        ["events"],
    ):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
        # Then nothing raw reaches the terminal: each shows escaped
        assert_escaped(result.output)
        assert "\\x1b[31m\\x07" in result.output, args
    # And a replay that keeps the record says why without the raw text either
    result = invoke("dlq", "replay", "--all")
    assert_escaped(result.output)
    result = invoke("dlq", "replay", "--all", "-v")
    assert_escaped(result.output)


def test_json_output_stays_valid_json_with_the_text_intact() -> None:
    record = hostile_record()
    for args in (["dlq", "list", "--json"], ["dlq", "show", record.id, "--json"]):
        result = invoke(*args)
        assert result.exit_code == 0
        assert_escaped(result.stdout)
        parsed = json.loads(result.stdout)
        assert parsed["handler"] == op.HOSTILE_HANDLER
        assert parsed["exception_message"] == record.exception_message
    stats = json.loads(invoke("dlq", "stats", "--json").stdout)
    assert stats["groups"][0]["handler"] == op.HOSTILE_HANDLER


# -- item 16: what a newcomer hit ------------------------------------------------------


def test_a_short_id_says_that_a_prefix_needs_6_characters() -> None:
    record = v1_dead_letter()
    result = invoke("dlq", "show", record.id[:2])
    assert result.exit_code == 1
    assert f"no dead letter with id {record.id[:2]!r}" in result.stderr
    assert "a prefix needs 6 or more characters" in result.stderr
    assert invoke("dlq", "show", record.id[:6]).exit_code == 0


def test_events_json_shows_the_effective_queue_as_the_text_does() -> None:
    app = ["-A", "tests.unit.cli_operator_app:celery_app"]
    out = json.loads(invoke("events", "--json", app=app).stdout)
    (booked,) = (e for e in out if e["event_type"] == op.ShipmentBooked.event_type)
    queues = {h["handler"]: h["queue"] for h in booked["handlers"]}
    assert queues == {op.BOOK: "op-default", op.BOOK + "_elsewhere": "op-other"}
    text = invoke("events", app=app).stdout
    assert "[queue=op-default " in text and "[queue=op-other " in text


def test_an_undecodable_record_says_why_it_has_no_handler() -> None:
    garbage = decode_record(b"\x00\x01 hand-pushed")
    op.bus.dead_letter_store.append(garbage)
    result = invoke("dlq", "show", garbage.id)
    assert result.exit_code == 0
    assert "handler:     (unknown: the message could not be decoded)" in result.stdout
    assert "None" not in result.stdout


def test_celery_eventbus_without_an_app_says_what_to_do() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "eventbus", "events"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "no Celery app given: run 'celery -A proj eventbus ...'" in result.stderr
    assert "given with -A" not in result.stderr
