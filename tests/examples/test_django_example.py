"""examples/django: a view saves a todo, commits, and a real worker runs the handler.

Django runs in subprocesses only (``django_client.py`` sends requests with
Django's test Client and runs management commands; ``manage.py``; ``celery -A
todoproject worker``): Django's settings are process-wide, and the other tests
of this run must not see them. Each test has its own SQLite file and its own
queues (deleted afterwards); the worker tests run on Redis and on RabbitMQ.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.support import assert_stays, delete_queues, make_app, require_broker, wait_for

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django"
CLIENT = Path(__file__).with_name("django_client.py")
TODO_CREATED = "todos.todo_created"
#: RabbitMQ's port on a host where nothing listens: a publish fails at once.
CLOSED_BROKER_URL = "amqp://guest:guest@127.0.0.1:1//"

pytestmark = pytest.mark.timeout(120)


class Project:
    """The example project on one SQLite file and one broker, driven from outside."""

    def __init__(self, tmp_path: Path, broker_url: str) -> None:
        uid = uuid.uuid4().hex[:10]
        self.db = tmp_path / "todos.sqlite3"
        self.log = tmp_path / "worker.log"
        self.queue = f"ex.django.{uid}"
        self.dead_letter_queue = f"{self.queue}.dlq"
        self.default_queue = f"{self.queue}.celery"
        python_path = [str(EXAMPLE), str(ROOT), os.environ.get("PYTHONPATH", "")]
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, python_path)),
            "DJANGO_SETTINGS_MODULE": "todoproject.settings",
            "TODOS_DB": str(self.db),
            "CELERY_BROKER_URL": broker_url,
            "EVENTBUS_QUEUE": self.queue,
            "EVENTBUS_DLQ": self.dead_letter_queue,
            "CELERY_TASK_DEFAULT_QUEUE": self.default_queue,
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, *args],
            cwd=EXAMPLE,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def steps(self, *steps: list[Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """Run requests and ``manage.py`` commands in one Django process: results, published."""
        out = self.run(str(CLIENT), json.dumps(list(steps))).stdout
        result = json.loads(out.strip().splitlines()[-1])
        return result["results"], result["published"]

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.db, timeout=20)) as conn, conn:  # commits
            return conn.execute(sql, params).fetchall()

    def notifications(self, todo_id: int | None = None) -> int:
        if todo_id is None:
            return int(self.query("SELECT count(*) FROM todos_notification")[0][0])
        return int(
            self.query("SELECT count(*) FROM todos_notification WHERE todo_id = ?", todo_id)[0][0]
        )

    def outbox(self) -> list[tuple[Any, ...]]:
        return self.query(
            "SELECT event_type, aggregate_id, published_at, failed_at, attempts "
            "FROM eventbus_outbox ORDER BY id"
        )

    def start_worker(self) -> subprocess.Popen[bytes]:
        with open(self.log, "wb") as log:
            return subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "todoproject", "worker"),
                    *("--pool", "solo", "--loglevel", "INFO", "-n", f"{self.queue}@%h"),
                    *("--without-gossip", "--without-mingle", "--without-heartbeat"),
                    # Celery settings from its command line: no pidbox queue left behind.
                    *("--", "worker.enable_remote_control=false"),
                ],
                cwd=EXAMPLE,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def worker_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1] if text.strip() else ""


MIGRATE = ["MANAGE", "migrate", "--verbosity", "0"]
RELAY = ["MANAGE", "eventbus", "outbox", "relay"]
STATUS = ["MANAGE", "eventbus", "outbox", "status", "--json"]


# -- on a real worker, on each broker ------------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    broker_url = require_broker(request.param)
    project = Project(tmp_path, broker_url)
    try:
        yield project
    finally:
        app = make_app(broker_url)
        try:
            delete_queues(app, project.queue, project.dead_letter_queue, project.default_queue)
        finally:
            app.close()


@pytest.fixture
def worker(project: Project) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A todoproject worker``, ready; stopped afterwards."""
    process = project.start_worker()
    try:
        # Migrate while the worker starts: it needs the tables only to run a handler.
        project.run("manage.py", "migrate", "--verbosity", "0")
        wait_for(
            lambda: " ready." in project.worker_log() or process.poll() is not None,
            timeout=30,
            message=lambda: f"the worker to be ready; its log:\n{project.worker_log()}",
        )
        assert process.poll() is None, f"the worker exited:\n{project.worker_log()}"
        yield process
    finally:
        # An idle worker acts on SIGTERM (even SIGQUIT) at its next poll, up to
        # 10 s later on AMQP; the test is over and nothing is left unacked.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_a_committed_todo_reaches_the_handler_on_a_real_worker(
    project: Project, worker: subprocess.Popen[bytes]
) -> None:
    # Given the example project, migrated, and its Celery worker running
    # When a todo is created through the view that publishes on commit, another
    # one with invalid data, and a third through the outbox view
    (created, invalid, via_outbox), published = project.steps(
        ["POST", "/todos/", {"title": "Buy milk"}],
        ["POST", "/todos/", {"title": ""}],
        ["POST", "/todos/outbox/", {"title": "Write the report"}],
    )

    # Then the first is committed and its event published once, after the commit
    assert created["status"] == 201, created
    assert invalid["status"] == 400 and "title" in invalid["body"]["error"], invalid
    assert via_outbox["status"] == 201, via_outbox
    assert published == {TODO_CREATED: 1}
    # and the invalid todo was rolled back: the event validates before the commit
    assert project.query("SELECT title FROM todos_todo ORDER BY id") == [
        ("Buy milk",),
        ("Write the report",),
    ]
    # and the worker runs the handler for it
    todo_id, outbox_todo_id = created["body"]["id"], via_outbox["body"]["id"]
    wait_for(
        lambda: project.notifications(todo_id) == 1,
        message=lambda: (
            f"the handler to run for todo {todo_id}; worker log:\n{project.worker_log()}"
        ),
    )

    # And the outbox todo's event waits in the outbox, committed with the todo
    assert project.outbox() == [(TODO_CREATED, str(outbox_todo_id), None, None, 0)]
    assert project.notifications(outbox_todo_id) == 0

    # When the relay runs (the real manage.py)
    relay = project.run("manage.py", "eventbus", "outbox", "relay")

    # Then it publishes the row, and the handler runs for that todo too
    assert relay.stdout.strip() == "published 1, failed 0, pending 0", relay.stdout
    wait_for(
        lambda: project.notifications(outbox_todo_id) == 1,
        message=lambda: (
            f"the handler to run for the outbox's todo; worker log:\n{project.worker_log()}"
        ),
    )
    ((_, _, published_at, failed_at, attempts),) = project.outbox()
    assert published_at is not None and failed_at is None and attempts == 1

    # When another todo goes through the outbox and the relay runs as a Celery
    # task (as beat would send it), on the worker
    (by_task, _), _ = project.steps(
        ["POST", "/todos/outbox/", {"title": "Relayed by the task"}],
        ["TASK", "eventbus.django.relay_outbox"],
    )

    # Then its handler runs too
    wait_for(
        lambda: project.notifications(by_task["body"]["id"]) == 1,
        message=lambda: f"the relay task to publish the row; worker log:\n{project.worker_log()}",
    )

    # And a last relay has nothing left to publish: each handler ran exactly once
    again, status, dead, shown = project.steps(
        RELAY,
        STATUS,
        ["MANAGE", "eventbus", "dlq", "stats", "--json"],
        ["GET", f"/todos/{todo_id}/"],
    )[0]
    assert again["stdout"].strip() == "published 0, failed 0, pending 0", again
    assert_stays(
        lambda: project.notifications() == 3,
        duration=0.5,
        message="three notifications, one per todo",
    )
    counts = json.loads(status["stdout"])
    assert (counts["pending"], counts["failed"], counts["published"]) == (0, 0, 2)
    # and the project's dead-letter queue, read through manage.py, is empty
    assert json.loads(dead["stdout"]) == {"groups": [], "total": 0}
    assert (dead["status"], dead["stderr"]) == (0, "")  # empty is an answer, not an error
    # and the todo's page shows what the handler did
    assert shown["body"]["notifications"] == ["New todo: Buy milk"]


# -- without a broker ----------------------------------------------------------------


def test_with_the_broker_down_the_outbox_keeps_the_event_that_on_commit_loses(
    tmp_path: Path,
) -> None:
    # Given the example project and a broker that is down
    project = Project(tmp_path, CLOSED_BROKER_URL)

    # When a todo is created through each view, then the relay runs
    (_, on_commit, via_outbox, relay), published = project.steps(
        MIGRATE,
        ["POST", "/todos/", {"title": "After commit"}],
        ["POST", "/todos/outbox/", {"title": "Via the outbox"}],
        RELAY,
    )

    # Then the on-commit publish fails after the commit: the todo is saved, its
    # event is not (the request fails; the envelope is in the log)
    assert on_commit["status"] == 500 and "PublishError" in on_commit["body"]
    assert published == {}
    # while the outbox view succeeds, its event committed with the todo
    assert via_outbox["status"] == 201, via_outbox
    assert project.query("SELECT title FROM todos_todo ORDER BY id") == [
        ("After commit",),
        ("Via the outbox",),
    ]
    # and the relay, with the broker still down, fails in one line and keeps the
    # row pending, its attempt recorded
    assert relay["status"] == 1
    assert relay["stdout"].strip() == "published 0, failed 0, pending 1"
    # (the lines before are the log: the example's LOGGING sends eventbus's to stderr)
    assert last_line(relay["stderr"]).startswith(
        "error: publish failed, rows left pending: PublishError"
    )
    assert "publish of row 1 (event " in relay["stderr"]  # logged, with the event id
    ((published_at, failed_at, attempts, last_error),) = project.query(
        "SELECT published_at, failed_at, attempts, last_error FROM eventbus_outbox"
    )
    assert (published_at, failed_at, attempts) == (None, None, 1)
    assert last_error.startswith("PublishError: could not publish todos.todo_created")


def test_rows_the_relay_cannot_publish_are_marked_failed_and_can_be_retried(
    tmp_path: Path,
) -> None:
    # Given two rows no relay can ever publish: not JSON, and an envelope whose
    # event id is not the row's
    project = Project(tmp_path, CLOSED_BROKER_URL)
    project.steps(MIGRATE)
    envelope = {
        "event_id": str(uuid.uuid4()),
        "event_type": TODO_CREATED,
        "version": 1,
        "occurred_at": "2026-11-26T15:00:00Z",
        "data": {"todo_id": 1, "title": "Buy milk"},
    }
    for event_id, payload in ((str(uuid.uuid4()), "{not json"), ("1", json.dumps(envelope))):
        project.query(
            "INSERT INTO eventbus_outbox (event_id, event_type, payload, created_at, attempts) "
            "VALUES (?, ?, ?, '2026-11-26 15:00:00', 0)",
            event_id,
            TODO_CREATED,
            payload,
        )

    # When the relay runs (the broker is down, and never asked), an operator
    # looks, makes the rows pending again (after a fix) and looks again
    relay, failed, retried, pending = project.steps(
        RELAY, STATUS, ["MANAGE", "eventbus", "outbox", "retry-failed", "--all"], STATUS
    )[0]

    # Then both rows were marked failed with their reason, and the relay said so
    assert relay["status"] == 1
    assert relay["stdout"].strip() == "published 0, failed 2, pending 0"
    assert last_line(relay["stderr"]) == (
        "error: 2 row(s) cannot be published and were marked failed"
    )
    assert "row 2 (event 1) cannot be published, marked failed" in relay["stderr"]  # logged
    counts = json.loads(failed["stdout"])
    assert (counts["pending"], counts["failed"], counts["published"]) == (0, 2, 0)
    errors = sorted(row["last_error"] for row in counts["latest_failed"])
    assert errors[0].startswith("OutboxRowError: outbox payload is not JSON")
    assert errors[1].startswith("OutboxRowError: the row's event_id '1' is not its payload's")
    # and the retry made them pending for the next relay
    assert retried["stdout"] == "2 row(s) pending again\n"
    counts = json.loads(pending["stdout"])
    assert (counts["pending"], counts["failed"]) == (2, 0)


def test_manage_py_eventbus_help_and_misuse(tmp_path: Path) -> None:
    project = Project(tmp_path, CLOSED_BROKER_URL)
    misuse = {
        ("outbox", "relay", "--limit", "0"): "Error: Invalid value for '--limit'",
        ("outbox", "retry-failed"): "Error: give --id ID (repeatable) or --all",
        ("nosuch",): "Error: No such command 'nosuch'.",
    }
    results, _ = project.steps(
        ["MANAGE", "eventbus", "--help"],
        ["MANAGE", "help", "eventbus"],
        ["MANAGE", "eventbus", "outbox", "relay", "--help"],
        ["MANAGE", "eventbus", "events"],
        *(["MANAGE", "eventbus", *args] for args in misuse),
        # before `migrate`
        ["MANAGE", "eventbus", "outbox", "status"],
    )
    helps, relay_help, events, *misused, unmigrated = (results[:2], *results[2:])

    # --help (and `manage.py help eventbus`) lists eventbus's commands, the outbox's too
    for shown in helps:
        assert shown["status"] == 0
        assert "Usage: manage.py eventbus [OPTIONS] COMMAND" in shown["stdout"]
        for command in ("dlq", "events", "outbox", "publish", "schema"):
            assert f"  {command} " in shown["stdout"], shown["stdout"]
    assert "--loop" in relay_help["stdout"] and "--database" in relay_help["stdout"]

    # the bus's own commands run on the project's bus
    assert f"{TODO_CREATED} (v1, todos.events.TodoCreated)" in events["stdout"]
    assert "→ todos.handlers.notify_team" in events["stdout"]

    # misuse exits 2, the reason on the last line
    for (args, reason), result in zip(misuse.items(), misused, strict=True):
        assert result["status"] == 2, (args, result)
        assert last_line(result["stderr"]).startswith(reason), (args, result["stderr"])

    # before `migrate`: exit 1, one line that says what is missing
    assert unmigrated["status"] == 1
    assert last_line(unmigrated["stderr"]) == (
        "error: OperationalError: no such table: eventbus_outbox (has 'manage.py migrate' run?)"
    )
