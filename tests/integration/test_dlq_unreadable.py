"""A dead-letter queue that could not be read is an error, never an empty queue.

Only a queue that does not exist yet (RabbitMQ: 404 on a passive declare;
Redis: no key) reads as empty. A refused login, a missing vhost or Redis
database, a broker that refuses the connection, an unknown URL scheme, a
malformed URL: the Python API raises :class:`DeadLetterQueueUnavailable`,
and every ``dlq`` command prints one line naming the problem and exits 1,
under ``eventbus`` and ``celery -A app eventbus`` alike. An empty queue is
not an error: ``dlq list`` and ``dlq stats`` exit 0, and their ``--json``
prints JSON only, for monitoring scripts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from eventbus import EventBus
from eventbus.cli.main import main
from eventbus.deadletter.queue import DeadLetterQueue
from eventbus.errors import DeadLetterQueueUnavailable
from tests.support import require_broker, unique

from .cli_env_app import quick_app
from .conftest import Env

REPO = Path(__file__).resolve().parents[2]
ENV_APP = "tests.integration.cli_env_app:bus"


@dataclass(frozen=True)
class Unreadable:
    """A broker URL the DLQ cannot be read through, and what the error must say."""

    name: str
    url: str
    says: str  #: a phrase the one-line error must contain (case-insensitive)
    needs: str | None = None  #: the live broker the case talks to


UNREADABLE = [
    Unreadable(
        "amqp-wrong-password", "amqp://guest:wrong@127.0.0.1:5672//", "authentication failed",
        "rabbitmq",
    ),
    Unreadable(
        "amqp-missing-vhost", "amqp://guest:guest@127.0.0.1:5672/eventbus-no-such-vhost",
        "vhost", "rabbitmq",
    ),
    Unreadable("amqp-refused", "amqp://guest:guest@127.0.0.1:1//", "connection refused"),
    Unreadable(
        "redis-wrong-password", "redis://eventbus-nobody:wrong@127.0.0.1:6379/9",
        "authentication failed", "redis",
    ),
    Unreadable("redis-missing-db", "redis://127.0.0.1:6379/9999", "out of range", "redis"),
    Unreadable("redis-refused", "redis://127.0.0.1:1/0", "connection refused"),
    Unreadable("unknown-scheme", "foo://127.0.0.1//", "unknown broker URL scheme 'foo'"),
    Unreadable("malformed", "amqp://guest:guest@[::1//", "malformed broker URL"),
]  # fmt: skip


@pytest.fixture(params=UNREADABLE, ids=lambda case: case.name)
def unreadable(request: pytest.FixtureRequest) -> Unreadable:
    case: Unreadable = request.param
    if case.needs:
        require_broker(case.needs)  # the broker must answer, to refuse
    return case


#: Every way the Python API reads or changes the queue.
API_CALLS: dict[str, Callable[[DeadLetterQueue], Any]] = {
    "len": len,
    "iter": lambda dlq: next(iter(dlq), None),
    "list": lambda dlq: dlq.list(),
    "list-filtered": lambda dlq: dlq.list(handler="x.*"),
    "get": lambda dlq: dlq.get("abcdef12"),
    "groups": lambda dlq: dlq.groups(),
    "replay_all": lambda dlq: dlq.replay_all(),
    "delete": lambda dlq: dlq.delete(["abcdef12"]),
    "purge": lambda dlq: dlq.purge(),
}

#: Every ``dlq`` command, each of which must read the queue first.
DLQ_COMMANDS = [
    ["list"],
    ["list", "--json"],
    ["list", "--handler", "x.*"],
    ["stats"],
    ["stats", "--json"],
    ["show", "abcdef12"],
    ["replay", "--all"],
    ["replay", "--all", "--dry-run"],
    ["replay", "abcdef12"],
    ["edit", "abcdef12", "--data", '{"order_id": "x"}'],
    ["purge", "--yes"],
    ["purge", "abcdef12", "--yes"],
]


def assert_one_line_naming(stderr: str, case: Unreadable) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert case.says.lower() in lines[0].lower(), stderr
    assert "dead-letter queue" in lines[0], stderr


def test_the_python_api_raises_instead_of_reading_empty(unreadable: Unreadable) -> None:
    # Given a bus whose broker URL cannot be used to read the DLQ
    app = quick_app(unreadable.url)
    try:
        bus = EventBus(app, default_queue=unique("q"), dead_letter_queue=unique("dlq"))
        # When the DLQ is read or changed in any way, Then it raises, naming the problem
        for name, call in API_CALLS.items():
            with pytest.raises(DeadLetterQueueUnavailable) as raised:
                call(bus.dead_letters)
            message = str(raised.value)
            assert unreadable.says.lower() in message.lower(), (name, message)
    finally:
        app.close()


def test_every_dlq_command_says_what_is_wrong_in_one_line(unreadable: Unreadable) -> None:
    runner = CliRunner()
    for command in DLQ_COMMANDS:
        result = runner.invoke(
            main, ["-A", ENV_APP, "dlq", *command], env={"EVENTBUS_CLI_TEST_BROKER": unreadable.url}
        )
        assert result.exit_code == 1, (command, result.output, result.exception)
        assert isinstance(result.exception, SystemExit), (command, result.exception)
        assert result.stdout == "", command
        assert_one_line_naming(result.stderr, unreadable)


def cli(*args: str, broker_url: str, celery: bool = False) -> subprocess.CompletedProcess[str]:
    """``eventbus -A handlers ARGS`` (or ``celery -A handlers eventbus ARGS``): the example app."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTBUS_", "CELERY_"))}
    environ.update(EVENTBUS_BROKER_URL=broker_url, EVENTBUS_QUEUE=unique("it.unreadable"))
    head = (
        ["-m", "celery", "-A", "handlers", "eventbus"]
        if celery
        else ["-m", "eventbus.cli", "-A", "handlers"]
    )
    return subprocess.run(
        [sys.executable, *head, *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("celery", [False, True], ids=["eventbus", "celery-eventbus"])
def test_the_command_line_never_prints_a_traceback_or_empty(
    unreadable: Unreadable, celery: bool
) -> None:
    # The reproduction: EVENTBUS_BROKER_URL=amqp://guest:wrong@... eventbus dlq purge --yes
    for command in (["dlq", "purge", "--yes"], ["dlq", "list", "--json"]):
        result = cli(*command, broker_url=unreadable.url, celery=celery)
        assert result.returncode == 1, (command, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert "no dead letters" not in result.stderr
        assert result.stdout == "", command
        assert_one_line_naming(result.stderr, unreadable)


# -- what may read as empty -------------------------------------------------------------


def test_a_queue_never_declared_reads_as_empty(env: Env) -> None:
    # Given a DLQ nobody has written to (on RabbitMQ: not even declared)
    dlq = env.bus.dead_letters
    # Then it is empty, by every reading
    assert len(dlq) == 0
    assert dlq.list() == [] and list(dlq) == []
    assert dlq.groups() == {}
    assert dlq.purge() == 0


def test_an_empty_dlq_lists_and_counts_with_exit_0(env: Env) -> None:
    def run(*args: str) -> Any:
        return CliRunner().invoke(
            main,
            ["-A", ENV_APP, "dlq", *args],
            env={
                "EVENTBUS_CLI_TEST_BROKER": env.broker_url,
                "EVENTBUS_CLI_TEST_DLQ": env.dead_letter_queue,
            },
        )

    for args in (["list"], ["list", "--handler", "nobody.*"], ["stats"]):
        result = run(*args)
        assert (result.exit_code, result.stderr) == (0, ""), (args, result.output)
        assert "no dead letters" in result.stdout
    # --json: JSON on stdout and nothing else (list: one record per line, so none)
    result = run("list", "--json")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "", "")
    result = run("stats", "--json")
    assert (result.exit_code, result.stderr) == (0, "")
    assert json.loads(result.stdout) == {"groups": [], "total": 0}
