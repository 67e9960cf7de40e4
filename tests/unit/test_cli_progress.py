"""`dlq replay`/`purge` over many records: which output an operator gets, and what it says.

The bar itself needs a terminal (tests/integration/test_cli_dlq_progress.py
runs the CLI on a pty); here, the decision, and every mode off a terminal.
"""

from __future__ import annotations

import io
import json

import pytest

from eventbus.celery.deadletter.base import decode_record
from eventbus.cli.progress import KEPT_SHOWN, Progress, output_mode
from tests.unit import cli_app
from tests.unit.test_cli import add_item, fresh_app, invoke, push_garbage, records

__all__ = ["fresh_app"]  # (the autouse fixture that empties the app's DLQ)


@pytest.mark.parametrize(
    ("verbose", "as_json", "terminal", "mode"),
    [
        (False, False, True, "bar"),
        (False, False, False, "summary"),
        (True, False, True, "lines"),
        (True, False, False, "lines"),
        (False, True, True, "json"),
        (False, True, False, "json"),
    ],
)
def test_a_terminal_gets_a_bar_unless_lines_or_json_are_asked_for(
    verbose: bool, as_json: bool, terminal: bool, mode: str
) -> None:
    assert output_mode(verbose=verbose, as_json=as_json, terminal=terminal) == mode


def test_the_bar_fills_to_its_length_when_the_work_is_done() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with Progress("bar", label="replaying", length=10, status=lambda: "x", file=screen) as bar:
        for _ in range(7):  # the walk skipped copies: fewer steps than the depth read first
            bar.step()
    assert "10/10" in screen.getvalue() and "100%" in screen.getvalue()


def test_replay_off_a_terminal_prints_the_summary_only() -> None:
    for sku in ("A1", "A2", "A3"):
        add_item(sku)
    cli_app.broken["on"] = False
    result = invoke("dlq", "replay", "--all")
    assert (result.exit_code, result.stdout, result.stderr) == (
        0,
        "replayed 3 dead letter(s)\n",
        "",
    )


def test_replay_with_json_prints_an_object_per_record_and_the_summary_on_stderr() -> None:
    add_item("A1")
    add_item("A2")
    garbage = push_garbage()
    good = [r for r in records() if r.replayable]
    cli_app.broken["on"] = False
    result = invoke("dlq", "replay", "--all", "--json")
    assert result.exit_code == 1  # the garbage was kept
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    replayed = [o for o in objects if o["outcome"] == "replayed"]
    assert [o["id"] for o in replayed] == [r.id for r in good]
    assert [o["event_id"] for o in replayed] == [r.event_id for r in good]
    [kept] = [o for o in objects if o["outcome"] == "kept"]
    assert kept["id"] == garbage.id and "no decodable envelope" in kept["error"]
    assert result.stderr == "replayed 2 dead letter(s), kept 1\n"


def test_a_dry_run_with_json_says_what_would_happen_to_each() -> None:
    add_item("A1")
    garbage = push_garbage()
    result = invoke("dlq", "replay", "--all", "--dry-run", "--json")
    assert result.exit_code == 0
    outcomes = {o["id"]: o["outcome"] for o in map(json.loads, result.stdout.splitlines())}
    assert outcomes[garbage.id] == "would_keep"
    assert sorted(outcomes.values()) == ["would_keep", "would_replay"]
    assert "nothing was replayed" in result.stderr


def test_without_v_only_the_first_failures_are_named_then_counted() -> None:
    # Given more records that cannot be replayed than are named one by one
    for n in range(KEPT_SHOWN + 3):
        cli_app.bus.dead_letter_store.append(decode_record(f"not a record {n}".encode()))
    # When all are replayed without -v
    result = invoke("dlq", "replay", "--all")
    # Then the first are named with their reason, the rest counted, the summary says all
    assert result.exit_code == 1
    named = [line for line in result.stderr.splitlines() if line.startswith("kept ")]
    assert len(named) == KEPT_SHOWN and "no decodable envelope" in named[0]
    assert "... and 3 more kept: -v or --json names each" in result.stderr
    assert result.stdout == f"replayed 0 dead letter(s), kept {KEPT_SHOWN + 3}\n"
    # And -v names every one
    result = invoke("dlq", "replay", "--all", "-v")
    assert result.stderr.count("kept ") == KEPT_SHOWN + 3


def test_purge_modes() -> None:
    add_item("A1")
    add_item("A2")
    ids = [r.id for r in records()]
    result = invoke("dlq", "purge", ids[0], "--yes", "-v")
    assert result.stdout.splitlines() == [f"deleted {ids[0]}", "deleted 1 dead letter(s)"]
    result = invoke("dlq", "purge", "--yes", "--json")
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"id": ids[1], "outcome": "purged"}
    ]
    assert result.stderr == "purged 1 dead letter(s)\n"
    add_item("A3")
    result = invoke("dlq", "purge", "--yes")
    assert (result.stdout, result.stderr) == ("purged 1 dead letter(s)\n", "")


@pytest.mark.parametrize("command", [["replay", "--all"], ["purge", "--yes"]])
def test_v_and_json_together_are_a_usage_error(command: list[str]) -> None:
    add_item("A1")
    result = invoke("dlq", *command, "-v", "--json")
    assert result.exit_code == 2 and "give -v or --json, not both" in result.stderr
    assert len(records()) == 1
