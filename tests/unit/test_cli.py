"""The eventbus CLI: what an operator types and what comes back (exit codes included)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from eventbus import DeadLetter
from eventbus.celery.deadletter.base import decode_record
from eventbus.cli.main import main
from eventbus.deadletter.memory import InMemoryDeadLetterStore
from tests.unit import cli_app

APP = ["-A", "tests.unit.cli_app"]
RESERVE = "tests.unit.cli_app.reserve_stock"
RELEASE = "tests.unit.cli_app.release_stock"
PERMANENT = "eventbus.errors.PermanentHandlerError"
GARBAGE = b"\x00\x01 hand-pushed, not JSON"


@pytest.fixture(autouse=True)
def fresh_app() -> Iterator[None]:
    cli_app.bus.dead_letters.purge()
    cli_app.received.clear()
    cli_app.reserved.clear()
    cli_app.broken["on"] = True
    yield


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, [*APP, *args], input=input)


def run(*args: str) -> tuple[int, str]:
    result = invoke(*args)
    return result.exit_code, result.output


def add_item(sku: str, quantity: int = 1) -> None:
    code, _ = run("publish", "contract.item_added", json.dumps({"sku": sku, "quantity": quantity}))
    assert code == 0


def remove_item(sku: str) -> None:
    code, _ = run("publish", "contract.item_removed", json.dumps({"sku": sku}))
    assert code == 0


def push_garbage() -> DeadLetter:
    """A message someone pushed onto the DLQ by hand, as the broker stores decode it."""
    record = decode_record(GARBAGE)
    cli_app.bus.dead_letter_store.append(record)
    return record


def records() -> list[DeadLetter]:
    return cli_app.bus.dead_letters.list()


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


def assert_one_line_error(result: Result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert len([line for line in result.stderr.splitlines() if "rror" in line]) == 1


def test_every_command_has_help() -> None:
    for command in (
        [],
        ["demo"],
        ["publish"],
        ["events"],
        ["dlq"],
        ["dlq", "list"],
        ["dlq", "stats"],
        ["dlq", "show"],
        ["dlq", "replay"],
        ["dlq", "edit"],
        ["dlq", "purge"],
    ):
        code, output = run(*command, "--help")
        assert code == 0 and "Usage:" in output, command


def test_events_lists_types_and_their_handlers() -> None:
    code, output = run("events")
    assert code == 0
    assert "contract.item_added" in output
    assert "tests.unit.cli_app.reserve_stock" in output
    code, output = run("events", "--json")
    item = next(e for e in json.loads(output) if e["event_type"] == "contract.item_added")
    assert {h["handler"] for h in item["handlers"]} == {
        "tests.unit.cli_app.record",
        "tests.unit.cli_app.reserve_stock",
    }
    assert item["schema"]["required"] == ["sku", "quantity"]


def test_publish_then_list_show_replay_a_dead_letter() -> None:
    # Given a published event whose stock handler fails
    code, output = run(
        "publish", "contract.item_added", '{"sku": "A1", "quantity": 2}', "--aggregate-id", "cart-9"
    )
    assert code == 0 and "to 2 handler(s)" in output
    # When the operator lists the DLQ
    code, output = run("dlq", "list")
    assert code == 0 and "reserve_stock" in output and "LookupError" in output
    code, output = run("dlq", "list", "--json")
    record = json.loads(output.splitlines()[0])
    assert record["envelope"]["aggregate_id"] == "cart-9"
    # and shows one record
    code, output = run("dlq", "show", record["id"][:10])
    assert code == 0 and "no stock for A1" in output and "Traceback" in output
    # Then, after the fix, replay puts it through and empties the queue
    cli_app.broken["on"] = False
    code, output = run("dlq", "replay", record["id"], "-v")
    assert code == 0 and f"replayed {record['id']}" in output
    assert ("reserved", "A1") in cli_app.received
    code, output = run("dlq", "list")
    assert code == 0 and output == "no dead letters\n"


# -- list ------------------------------------------------------------------------------


def test_list_is_a_table_of_the_columns_an_operator_needs() -> None:
    add_item("A1")
    code, output = run("dlq", "list")
    assert code == 0
    header, row = output.splitlines()
    for column in ("ID", "HANDLER", "EVENT TYPE", "EXCEPTION", "ATT", "FAILED AT"):
        assert column in header
    record = records()[0]
    assert row.split() == [
        record.id,
        RESERVE,
        "contract.item_added",
        "LookupError",
        "1",
        *f"{record.failed_at:%Y-%m-%d %H:%M:%S}".split(),
    ]


def test_list_filters_by_handler_event_type_and_exception() -> None:
    add_item("A1")
    add_item("A2")
    remove_item("B1")
    for args, count in [
        (["--handler", "*.release_stock"], 1),
        (["--handler", "tests.unit.*"], 3),
        (["--event-type", "contract.item_added"], 2),
        (["--exception", "PermanentHandlerError"], 1),
        (["--exception", "eventbus.errors.PermanentHandlerError"], 1),
        (["--exception", "eventbus.errors.*"], 1),
        (["--exception", "LookupError", "--event-type", "contract.item_removed"], 0),
        (["--limit", "2"], 2),
    ]:
        result = invoke("dlq", "list", "--json", *args)
        assert len(json_lines(result.stdout)) == count, args
        assert (result.exit_code, result.stderr) == (0, ""), args  # none is an answer
    result = invoke("dlq", "list", "--exception", "KeyError")
    assert (result.exit_code, result.output) == (0, "no dead letters match\n")


def test_list_since_takes_an_age_or_an_iso_date() -> None:
    # Given one failure three hours old and one just now
    add_item("old")
    old = records()[0]
    cli_app.bus.dead_letters.delete([old.id])
    cli_app.bus.dead_letter_store.append(
        old.model_copy(update={"failed_at": datetime.now(UTC) - timedelta(hours=3)})
    )
    add_item("new")
    skus = {r.id: (r.envelope or {})["data"]["sku"] for r in records()}

    def listed(*args: str) -> list[str]:
        result = invoke("dlq", "list", "--json", *args)
        return [skus[line["id"]] for line in json_lines(result.stdout)]

    assert listed("--since", "2h") == ["new"]
    assert listed("--since", "30m") == ["new"]
    assert listed("--since", "4h") == ["old", "new"]
    assert listed("--since", "1d") == ["old", "new"]
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    assert listed("--since", two_hours_ago.strftime("%Y-%m-%dT%H:%M:%S")) == ["new"]
    assert listed("--since", two_hours_ago.isoformat()) == ["new"]
    assert listed("--since", (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")) == [
        "old",
        "new",
    ]
    result = invoke("dlq", "list", "--since", "2 hours ago")
    assert result.exit_code == 2 and "neither an ISO date/time" in result.stderr


def test_list_json_streams_one_record_per_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a queue too long to hold in memory (endless, here)
    add_item("A1")
    template = records()[0]

    def endless(self: InMemoryDeadLetterStore) -> Iterator[DeadLetter]:
        for n in range(10**12):
            yield template.model_copy(update={"id": f"r{n:06d}"})

    monkeypatch.setattr(InMemoryDeadLetterStore, "__iter__", endless)
    # When the operator lists a few, Then they come back without reading it all
    result = invoke("dlq", "list", "--json", "--limit", "3")
    assert result.exit_code == 0
    assert [line["id"] for line in json_lines(result.stdout)] == ["r000000", "r000001", "r000002"]


def test_an_undecodable_record_is_listed_shown_and_purgeable_by_id() -> None:
    # Given a real dead letter and garbage pushed onto the DLQ by hand
    add_item("A1")
    garbage = push_garbage()
    # Then listing does not crash: the garbage is shown as undecodable, with its size
    code, output = run("dlq", "list")
    assert code == 0
    row = next(line for line in output.splitlines() if line.startswith(garbage.id))
    assert f"<undecodable> {len(GARBAGE)}B" in row
    lines = json_lines(invoke("dlq", "list", "--json").stdout)
    assert [line["reason"] for line in lines] == ["retries_exhausted", "undecodable"]
    assert lines[1]["raw_size"] == len(GARBAGE)
    code, output = run("dlq", "show", garbage.id)
    assert code == 0 and f"raw body ({len(GARBAGE)} bytes)" in output
    # And it is purged by id, the real record kept
    code, output = run("dlq", "purge", garbage.id, "--yes")
    assert (code, output.strip()) == (0, "deleted 1 dead letter(s)")
    assert [r.reason for r in records()] == ["retries_exhausted"]


# -- show ------------------------------------------------------------------------------


def test_show_prints_the_full_record_by_id_or_unique_prefix() -> None:
    add_item("A1", quantity=7)
    record = records()[0]
    for ref in (record.id, record.id[:6]):
        code, output = run("dlq", "show", ref)
        assert code == 0
        assert f"id:          {record.id}" in output
        assert f"handler:     {RESERVE}" in output
        assert '"quantity": 7' in output  # the payload
        assert "LookupError: no stock for A1" in output
        assert "Traceback (most recent call last)" in output
    shown = json.loads(invoke("dlq", "show", record.id, "--json").stdout)
    assert shown["id"] == record.id and shown["traceback"]


def test_show_names_an_unknown_or_ambiguous_id() -> None:
    add_item("A1")
    template = records()[0]
    for suffix in ("1", "2"):
        cli_app.bus.dead_letter_store.append(template.model_copy(update={"id": "abcdef" + suffix}))
    assert_one_line_error(invoke("dlq", "show", "nope-123"), 1, "no dead letter with id 'nope-123'")
    assert_one_line_error(invoke("dlq", "show", "abcdef"), 1, "matches 2 dead letters")
    assert invoke("dlq", "show", "abcdef2").exit_code == 0


# -- stats -----------------------------------------------------------------------------


def test_stats_counts_failure_groups_largest_first_with_a_total() -> None:
    add_item("A1")
    remove_item("B1")
    add_item("A2")
    garbage = push_garbage()
    code, output = run("dlq", "stats")
    assert code == 0
    lines = [line.split() for line in output.splitlines()[1:]]
    assert lines == [
        ["2", f"{RESERVE}:LookupError"],
        ["1", f"?:{garbage.exception_type}"],
        ["1", f"{RELEASE}:{PERMANENT}"],
        ["4", "total"],
    ]
    stats = json.loads(invoke("dlq", "stats", "--json").stdout)
    assert stats["total"] == 4
    assert stats["groups"][0] == {
        "group": f"{RESERVE}:LookupError",
        "handler": RESERVE,
        "exception_type": "LookupError",
        "count": 2,
    }


def test_stats_of_an_empty_queue_is_an_answer_not_an_error() -> None:
    result = invoke("dlq", "stats")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "no dead letters\n", "")
    result = invoke("dlq", "stats", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == {"groups": [], "total": 0}


# -- replay ----------------------------------------------------------------------------


def test_replay_all_with_a_filter() -> None:
    add_item("B")
    remove_item("C")
    cli_app.broken["on"] = False
    code, output = run("dlq", "replay", "--handler", "*reserve_stock")
    assert code == 0
    assert output.splitlines()[-1] == "replayed 1 dead letter(s)"
    assert [r.handler for r in records()] == [RELEASE]


def test_replay_a_group_as_stats_prints_it() -> None:
    # Given two failure groups
    add_item("A1")
    add_item("A2")
    remove_item("B1")
    cli_app.broken["on"] = False
    # When the operator replays one group, by the exception's short or dotted name
    code, output = run("dlq", "replay", "--group", f"{RESERVE}:LookupError", "-v")
    # Then only that group's records were replayed, one line each (-v) and a total
    assert code == 0
    assert output.count("replayed ") == 3 and "replayed 2 dead letter(s)" in output
    assert sorted(e.data.sku for e in cli_app.reserved) == ["A1", "A2"]
    assert [r.handler for r in records()] == [RELEASE]
    code, output = run("dlq", "replay", "--group", f"{RELEASE}:eventbus.errors.*")
    assert code == 1  # a group is named exactly, not by pattern
    code, output = run("dlq", "replay", "--group", f"{RELEASE}:{PERMANENT}")
    assert code == 0 and ("released", "B1") in cli_app.received
    # And a group that matches nothing exits 1
    assert_one_line_error(
        invoke("dlq", "replay", "--group", f"{RESERVE}:LookupError"), 1, "no dead letters match"
    )


def test_dry_run_prints_what_would_be_replayed_and_replays_nothing() -> None:
    add_item("A1")
    add_item("A2")
    garbage = push_garbage()
    before = [r.id for r in records()]
    cli_app.broken["on"] = False
    for args in (["--all"], [before[0], before[1]], ["--group", f"{RESERVE}:LookupError"]):
        code, output = run("dlq", "replay", "--dry-run", "-v", *args)
        assert code == 0, args
        assert f"would replay {before[0]} to {RESERVE}" in output
        assert "nothing was replayed" in output
    code, output = run("dlq", "replay", "--dry-run", "--all", "-v")
    assert f"would keep {garbage.id}: not replayable" in output
    assert "would replay 2 dead letter(s), keep 1" in output
    assert [r.id for r in records()] == before
    assert cli_app.reserved == []
    assert_one_line_error(
        invoke("dlq", "replay", "--dry-run", "--event-type", "contract.nope"),
        1,
        "no dead letters match",
    )


def test_replay_reports_and_keeps_what_cannot_be_replayed() -> None:
    # Given two good records, garbage, and a record of a handler no longer subscribed
    add_item("A1")
    add_item("A2")
    garbage = push_garbage()
    orphan = records()[0].model_copy(update={"id": "orphan-0001", "handler": "gone.handler"})
    cli_app.bus.dead_letter_store.append(orphan)
    cli_app.broken["on"] = False
    # When everything is replayed (no -v: a summary, and each record kept, named)
    result = invoke("dlq", "replay", "--all")
    # Then the good ones went, the others are reported, kept, and the exit code says so
    assert result.exit_code == 1
    assert result.stdout.count("replayed ") == 1
    assert result.stdout.splitlines()[-1] == "replayed 2 dead letter(s), kept 2"
    assert f"kept {garbage.id}: " in result.stderr
    assert "kept orphan-0001: handler 'gone.handler' is not subscribed" in result.stderr
    assert sorted(r.id for r in records()) == sorted([garbage.id, "orphan-0001"])
    assert sorted(e.data.sku for e in cli_app.reserved) == ["A1", "A2"]


def test_replay_of_unknown_ids_replays_nothing() -> None:
    add_item("A1")
    record = records()[0]
    cli_app.broken["on"] = False
    result = invoke("dlq", "replay", record.id, "missing-42")
    assert_one_line_error(result, 1, "no dead letter with id 'missing-42'")
    assert [r.id for r in records()] == [record.id] and cli_app.reserved == []


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "name record ids, or use --all or --group"),
        (["abc", "--all"], "not both"),
        (["abc", "--group", "h:E"], "not both"),
        (["--group", "h:E", "--handler", "x"], "drop those filters"),
        (["--group", "no-colon"], "is not HANDLER:EXCEPTION"),
        (["--group", ":ValueError"], "is not HANDLER:EXCEPTION"),
        (["--all", "--since", "yesterday"], "neither an ISO date/time"),
    ],
)
def test_replay_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = invoke("dlq", "replay", *args)
    assert result.exit_code == 2 and message in result.stderr


# -- edit ------------------------------------------------------------------------------


def test_edit_replays_corrected_data_under_the_same_event_id() -> None:
    # Given a failure caused by bad data
    add_item("A1", quantity=2)
    record = records()[0]
    cli_app.broken["on"] = False
    # When the operator edits the payload
    code, output = run("dlq", "edit", record.id[:8], "--data", '{"sku": "A1-fixed", "quantity": 5}')
    # Then the handler gets the corrected data, same event id, and the record is gone
    assert code == 0 and "changed: quantity, sku" in output
    (envelope,) = cli_app.reserved
    assert (envelope.data.sku, envelope.data.quantity) == ("A1-fixed", 5)
    assert str(envelope.event_id) == record.event_id
    assert envelope.metadata["eventbus_dead_letter_id"] == record.id
    assert records() == []


def test_edit_with_invalid_data_sends_nothing_and_keeps_the_record() -> None:
    add_item("A1")
    record = records()[0]
    received_before = list(cli_app.received)
    cli_app.broken["on"] = False
    result = invoke("dlq", "edit", record.id, "--data", '{"sku": "A1", "quantity": "many"}')
    assert_one_line_error(result, 1, "quantity: Input should be a valid integer")
    assert "nothing was sent" in result.stderr
    assert cli_app.reserved == [] and cli_app.received == received_before
    assert [r.id for r in records()] == [record.id]


def test_edit_reads_the_data_from_a_file_or_stdin(tmp_path: Path) -> None:
    add_item("A1")
    add_item("A2")
    first, second = records()
    cli_app.broken["on"] = False
    path = tmp_path / "fixed.json"
    path.write_text('{"sku": "A1", "quantity": 10}')
    assert invoke("dlq", "edit", first.id, "--file", str(path)).exit_code == 0
    result = invoke("dlq", "edit", second.id, "--file", "-", input='{"sku": "A2", "quantity": 20}')
    assert result.exit_code == 0
    assert [e.data.quantity for e in cli_app.reserved] == [10, 20]


def test_edit_opens_the_editor_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    add_item("A1", quantity=2)
    record = records()[0]
    cli_app.broken["on"] = False
    monkeypatch.setattr("eventbus.cli.dlq_select.interactive", lambda: True)
    shown: list[str] = []

    def editor(replace: tuple[str, str] | None) -> Any:
        def edit(text: str, **kwargs: Any) -> str | None:
            shown.append(text)
            return None if replace is None else text.replace(*replace)

        return edit

    # An editor closed without saving, or saved unchanged: refused, nothing sent
    for replace in (None, ("2", "2")):
        monkeypatch.setattr(click, "edit", editor(replace))
        assert_one_line_error(invoke("dlq", "edit", record.id), 1, "no change")
    assert json.loads(shown[0]) == {"sku": "A1", "quantity": 2}
    assert cli_app.reserved == []
    # Edited into broken JSON: refused
    monkeypatch.setattr(click, "edit", editor(("}", "")))
    assert_one_line_error(invoke("dlq", "edit", record.id), 1, "not valid JSON")
    # Corrected: replayed
    monkeypatch.setattr(click, "edit", editor(('"quantity": 2', '"quantity": 3')))
    assert invoke("dlq", "edit", record.id).exit_code == 0
    assert [e.data.quantity for e in cli_app.reserved] == [3]


@pytest.mark.parametrize(
    "args, code, message",
    [
        ([], 2, "give --data or --file: not on a terminal"),
        (["--data", "{}", "--file", "-"], 2, "not both"),
        (["--data", "{oops"], 2, "not valid JSON"),
        (["--data", "[1]"], 2, "must be a JSON object"),
        (["--file", "/nonexistent/fixed.json"], 2, "No such file"),
        (["--data", '{"sku": "A1", "quantity": 1}'], 1, "no change to the data"),
    ],
)
def test_edit_misuse(args: list[str], code: int, message: str) -> None:
    add_item("A1")
    result = invoke("dlq", "edit", records()[0].id, *args)
    assert result.exit_code == code and message in result.stderr
    assert len(records()) == 1


def test_edit_refuses_unknown_and_undecodable_records() -> None:
    garbage = push_garbage()
    data = ["--data", '{"sku": "x", "quantity": 1}']
    assert_one_line_error(invoke("dlq", "edit", "nope-123", *data), 1, "'nope-123'")
    assert_one_line_error(invoke("dlq", "edit", garbage.id, *data), 1, "no decodable envelope")


# -- purge -----------------------------------------------------------------------------


def test_purge_refuses_without_yes_off_a_terminal() -> None:
    run("publish", "contract.item_added", '{"sku": "C", "quantity": 1}')
    code, output = run("dlq", "purge")
    assert code == 1 and "refusing to purge without --yes" in output
    code, output = run("dlq", "purge", "--yes")
    assert code == 0 and "purged 1" in output


def test_purge_asks_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    add_item("A1")
    add_item("A2")
    first, second = records()
    monkeypatch.setattr("eventbus.cli.dlq_select.interactive", lambda: True)
    result = invoke("dlq", "purge", first.id, input="n\n")
    assert result.exit_code == 1 and "delete 1 dead letter(s)" in result.output
    assert len(records()) == 2
    result = invoke("dlq", "purge", first.id, input="y\n")
    assert result.exit_code == 0 and [r.id for r in records()] == [second.id]
    result = invoke("dlq", "purge", input="y\n")
    assert "delete all 1 dead letter(s)?" in result.output and records() == []


def test_purge_by_id_deletes_only_those_and_refuses_unknown_ids() -> None:
    add_item("A1")
    add_item("A2")
    remove_item("B1")
    first, second, third = records()
    result = invoke("dlq", "purge", first.id, "nope-123", "--yes")
    assert_one_line_error(result, 1, "no dead letter with id 'nope-123'")
    assert len(records()) == 3
    code, output = run("dlq", "purge", first.id[:8], third.id, "--yes")
    assert (code, output.strip()) == (0, "deleted 2 dead letter(s)")
    assert [r.id for r in records()] == [second.id]


def test_purge_of_an_empty_queue_exits_1() -> None:
    assert_one_line_error(invoke("dlq", "purge", "--yes"), 1, "no dead letters")


# -- the rest --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["publish", "contract.item_added", "{not json"], 2, "not valid JSON"),
        (["publish", "contract.item_added", "[1, 2]"], 2, "must be a JSON object"),
        (["publish", "contract.nope", "{}"], 1, "unknown event type 'contract.nope'"),
        (["publish", "contract.item_added", '{"sku": "A"}'], 1, "quantity: Field required"),
        (["dlq", "show", "does-not-exist"], 1, "no dead letter with id 'does-not-exist'"),
        (["dlq", "replay"], 2, "name record ids, or use --all"),
        (["dlq", "replay", "abc", "--all"], 2, "not both"),
        (["dlq", "list", "--limit", "0"], 2, "--limit"),
        (["dlq", "list", "--since", "2x"], 2, "neither an ISO date/time"),
    ],
)
def test_misuse_exits_non_zero_with_a_one_line_reason(
    args: list[str], code: int, message: str
) -> None:
    result = invoke(*args)
    assert result.exit_code == code
    assert message in result.stderr
    assert len([line for line in result.stderr.splitlines() if "rror" in line]) == 1


def test_an_app_without_a_bus_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["-A", "json", "events"])
    assert result.exit_code == 2 and "no EventBus found in 'json'" in result.output


def test_the_same_commands_run_as_a_celery_sub_command() -> None:
    # Given the package installed (its celery.commands entry point), when an
    # operator runs `celery -A handlers eventbus events` where the example app
    # is (it is not installed), then its event types and handlers are listed.
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "handlers", "eventbus", "events"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "todo.created" in result.stdout
    assert "handlers.todo.notify_assignee" in result.stdout
