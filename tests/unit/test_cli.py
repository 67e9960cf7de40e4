"""The eventbus CLI: what an operator types and what comes back (exit codes included)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from eventbus.cli import main
from tests.unit import cli_app

APP = ["-A", "tests.unit.cli_app"]


@pytest.fixture(autouse=True)
def fresh_app() -> Iterator[None]:
    cli_app.bus.dead_letters.purge()
    cli_app.received.clear()
    cli_app.broken["on"] = True
    yield


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*APP, *args])
    return result.exit_code, result.output


def test_every_command_has_help() -> None:
    for command in (
        [],
        ["demo"],
        ["publish"],
        ["events"],
        ["dlq"],
        ["dlq", "list"],
        ["dlq", "show"],
        ["dlq", "replay"],
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
    code, output = run("dlq", "replay", record["id"])
    assert code == 0 and f"replayed {record['id']}" in output
    assert ("reserved", "A1") in cli_app.received
    code, output = run("dlq", "list")
    assert code == 1 and "no dead letters" in output


def test_replay_all_with_a_filter() -> None:
    run("publish", "contract.item_added", '{"sku": "B", "quantity": 1}')
    cli_app.broken["on"] = False
    code, output = run("dlq", "replay", "--handler", "*reserve_stock")
    assert (code, output.strip()) == (0, "replayed 1 dead letter(s)")


def test_purge_refuses_without_yes_off_a_terminal() -> None:
    run("publish", "contract.item_added", '{"sku": "C", "quantity": 1}')
    code, output = run("dlq", "purge")
    assert code == 1 and "refusing to purge without --yes" in output
    code, output = run("dlq", "purge", "--yes")
    assert code == 0 and "purged 1" in output


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
    ],
)
def test_misuse_exits_non_zero_with_a_one_line_reason(
    args: list[str], code: int, message: str
) -> None:
    exit_code, output = run(*args)
    assert exit_code == code
    assert message in output
    assert len([line for line in output.splitlines() if line.startswith("error")]) <= 1


def test_an_app_without_a_bus_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["-A", "json", "events"])
    assert result.exit_code == 2 and "no EventBus found in 'json'" in result.output


def test_the_same_commands_run_as_a_celery_sub_command() -> None:
    # Given the package installed (its celery.commands entry point), when an
    # operator runs `celery -A handlers eventbus events`, then the example
    # app's event types and handlers are listed.
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "handlers", "eventbus", "events"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "todo.created" in result.stdout
    assert "handlers.todo.notify_assignee" in result.stdout
