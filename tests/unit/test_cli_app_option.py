"""Which app the ``eventbus`` CLI runs on: the one named, never a guessed one.

The CLI used to fall back to ``-A handlers``: inside a user's project with a
``handlers`` module of its own, ``eventbus dlq list`` silently loaded that
(or, installed, the example app's). Now ``-A`` or ``EVENTBUS_APP`` names the
app; a command that needs one and was given neither says so in one line and
exits 2, while ``--help`` and ``demo`` need no app.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from eventbus.cli.main import main

REPO = Path(__file__).resolve().parents[2]
#: No app in the environment either (None unsets it for the invocation).
NO_APP: dict[str, str | None] = {"EVENTBUS_APP": None}

#: Commands that need the app's bus.
NEEDS_AN_APP = [
    ["events"],
    ["publish", "contract.item_added", '{"sku": "A1", "quantity": 1}'],
    ["dlq", "list"],
    ["dlq", "stats"],
    ["dlq", "replay", "--all"],
    ["schema", "export"],
    ["outbox", "relay", "--url", "sqlite://"],
]


def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=NO_APP if env is None else env)


def assert_names_the_ways_to_give_an_app(stderr: str) -> None:
    (line,) = stderr.splitlines()  # one line, no usage text around it
    assert line.startswith("error: no app given"), line
    assert "-A" in line and "EVENTBUS_APP" in line, line


@pytest.mark.parametrize("args", NEEDS_AN_APP, ids=" ".join)
def test_a_command_without_an_app_exits_2_naming_both_ways_to_give_one(args: list[str]) -> None:
    # Given neither -A nor EVENTBUS_APP, when a command that needs the app runs
    result = invoke(*args)
    # Then it exits 2 with one line naming -A and EVENTBUS_APP, and does nothing else
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert_names_the_ways_to_give_an_app(result.stderr)


def test_no_example_app_is_picked_up_from_the_working_directory() -> None:
    # Given a working directory with a module named handlers (the repository's
    # example app; in a user's project, their own), when `eventbus events` runs
    # with no app named, then it refuses rather than list that module's events.
    environ = {k: v for k, v in os.environ.items() if k != "EVENTBUS_APP"}
    result = subprocess.run(
        [sys.executable, "-m", "eventbus.cli", "events"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "todo.created" not in result.stdout
    assert_names_the_ways_to_give_an_app(result.stderr)


@pytest.mark.parametrize(
    "args",
    [["--help"], ["demo", "--help"], ["dlq", "list", "--help"], ["outbox", "status", "--help"]],
    ids=" ".join,
)
def test_help_needs_no_app(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout


def test_the_root_help_says_how_to_name_the_app() -> None:
    out = invoke("--help").stdout
    assert "-A, --app" in out and "EVENTBUS_APP" in out


def test_eventbus_app_names_the_app() -> None:
    # Given EVENTBUS_APP and no -A, then the commands run on that app
    result = invoke("events", env={"EVENTBUS_APP": "tests.unit.cli_app"})
    assert result.exit_code == 0, result.output
    assert "contract.item_added" in result.stdout


def test_a_given_a_wins_over_eventbus_app() -> None:
    result = invoke(
        "-A", "tests.unit.cli_app", "events", env={"EVENTBUS_APP": "no.such.module.anywhere"}
    )
    assert result.exit_code == 0, result.output
    assert "contract.item_added" in result.stdout


def test_an_empty_eventbus_app_is_no_app() -> None:
    result = invoke("events", env={"EVENTBUS_APP": ""})
    assert result.exit_code == 2
    assert_names_the_ways_to_give_an_app(result.stderr)


def test_outbox_status_with_its_url_needs_no_app(tmp_path: Path) -> None:
    # --url (and the default table) say everything status needs: no app is loaded.
    pytest.importorskip("sqlalchemy")
    url = f"sqlite:///{tmp_path / 'outbox.sqlite3'}"
    from eventbus.outbox.sql import Outbox

    Outbox(url).create_schema()
    result = invoke("outbox", "status", "--url", url)
    assert result.exit_code == 0, result.output
