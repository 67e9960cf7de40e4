"""No password of a configured URL ever reaches the operator or the logs.

Every ``eventbus`` command (the test checks it knows them all) runs on the
example app (``-A handlers``, configured from the environment) with wrong
URLs that carry a marker password, in the userinfo and in ``?password=``:
the broker URL (``EVENTBUS_BROKER_URL``, ``demo --broker``), the state Redis
URL (``EVENTBUS_REDIS_URL``), the outbox URL (``--url``,
``EVENTBUS_OUTBOX_URL``). Neither stdout nor stderr holds the marker, and
no command prints a traceback. Then real workers: one runs the outbox relay
task with such an outbox URL, one has such a state URL and runs an
idempotent handler; neither their logs nor the task events Flower shows
hold the marker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest
from celery.events.receiver import EventReceiver

from eventbus.cli import main
from tests.support import delete_queues, make_app, require_broker, unique, wait_for

#: Over a hundred ``eventbus`` processes per test, three at a time.
pytestmark = [pytest.mark.redis, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
MARK = f"s3cr3t-{uuid.uuid4().hex[:10]}"  #: the password every wrong URL carries

#: Wrong broker URLs: a refused login, kombu's refusal of ?password=, no such transport, unparsable.
BROKER_URLS = {
    "amqp-login": f"amqp://guest:{MARK}@127.0.0.1:5672//",
    "redis-login": f"redis://eventbus-nobody:{MARK}@127.0.0.1:6379/9",
    "redis-query": f"redis://127.0.0.1:6379/9?password={MARK}",
    "unknown-scheme": f"foo://app:{MARK}@127.0.0.1/?password={MARK}",
    "malformed": f"amqp://app:{MARK}@[::1/?password={MARK}",
}
#: Wrong state Redis URLs: a refused login, nothing listening.
STATE_URLS = {
    "login": f"redis://eventbus-nobody:{MARK}@127.0.0.1:6379/9?password={MARK}",
    "refused": f"redis://127.0.0.1:1/0?password={MARK}",
}
#: Wrong outbox URLs: no such driver, nothing listening, no such database, a bad query.
OUTBOX_URLS = {
    "no-driver": f"postgresql+nosuch://app:{MARK}@127.0.0.1/app?password={MARK}",
    "refused": f"postgresql://app:{MARK}@127.0.0.1:1/app?password={MARK}",
    "no-database": f"postgresql://app:{MARK}@127.0.0.1:5432/eventbus_no_such_db?password={MARK}",
    "sqlite-query": f"sqlite:////nonexistent-eventbus-dir/app.db?password={MARK}",
}

A_RECORD = "abcdef123456"
TODO = json.dumps({"title": "Buy milk"})
USER = json.dumps({"user_id": "u1", "email": "ada@example.com", "name": "Ada"})

#: Every leaf command of ``eventbus``, and how each is run here.
COMMANDS: dict[str, list[list[str]]] = {
    "demo": [["demo"]],  # its --broker: see test_every_command_...
    "publish": [
        ["publish", "todo.created", TODO, "--aggregate-id", "42"],  # ordered: needs the state
        ["publish", "user.registered", USER],
    ],
    "events": [["events"], ["events", "--json"]],
    "schema export": [["schema", "export"]],
    "dlq list": [["dlq", "list"], ["dlq", "list", "--json"]],
    "dlq stats": [["dlq", "stats"], ["dlq", "stats", "--json"]],
    "dlq show": [["dlq", "show", A_RECORD], ["dlq", "show", A_RECORD, "--json"]],
    "dlq replay": [["dlq", "replay", "--all"], ["dlq", "replay", "--all", "--dry-run"]],
    "dlq edit": [["dlq", "edit", A_RECORD, "--data", TODO]],
    "dlq purge": [["dlq", "purge", "--yes"], ["dlq", "purge", A_RECORD, "--yes"]],
    "outbox relay": [["outbox", "relay"]],
    "outbox status": [["outbox", "status"], ["outbox", "status", "--json"]],
    "outbox retry-failed": [["outbox", "retry-failed", "--all"]],
}
OUTBOX_COMMANDS = [
    args for name, runs in COMMANDS.items() if name.startswith("outbox") for args in runs
]


def leaf_commands(group: click.Group, prefix: str = "") -> set[str]:
    names: set[str] = set()
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            names |= leaf_commands(command, path + " ")
        else:
            names.add(path)
    return names


@dataclass
class Run:
    what: str
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


class World:
    """The good settings every run starts from: Redis db 9, names of its own, a SQLite outbox."""

    def __init__(self, tmp_path: Path) -> None:
        self.redis = require_broker("redis")
        self.queue = unique("it.secrets")
        self.dead_letter_queue = f"{self.queue}.dlq"
        self.outbox_url = f"sqlite:///{tmp_path / 'outbox.db'}"
        self._add_pending_row()

    def _add_pending_row(self) -> None:
        # One pending row, so that a relay has something to publish (through the broker).
        from eventbus.outbox import Outbox

        box = Outbox(self.outbox_url)
        box.create_schema()
        with box.engine.begin() as conn:
            event_id = str(uuid.uuid4())
            payload = {
                "event_id": event_id,
                "event_type": "user.registered",
                "version": 1,
                "occurred_at": "2026-11-26T12:00:00Z",
                "metadata": {},
                "data": json.loads(USER),
            }
            conn.execute(
                box.table.insert(),
                {
                    "event_id": event_id,
                    "event_type": "user.registered",
                    "payload": json.dumps(payload),
                    "created_at": datetime.now(UTC),
                },
            )
        box.close()

    def environ(self, **overrides: str) -> dict[str, str]:
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("EVENTBUS_", "CELERY_"))
        }
        environ.update(
            EVENTBUS_BROKER_URL=self.redis,
            EVENTBUS_REDIS_URL=self.redis,
            EVENTBUS_QUEUE=self.queue,
            EVENTBUS_DLQ=self.dead_letter_queue,
            EVENTBUS_OUTBOX_URL=self.outbox_url,
            EVENTBUS_MAX_RETRIES="1",
            EVENTBUS_RETRY_BACKOFF="1",
            PYTHONPATH=str(REPO),
        )
        environ.update(overrides)
        return environ

    def run(self, what: str, args: list[str], *, celery: bool = False, **env: str) -> Run:
        head = ["-m", "celery", "-A", "handlers", "eventbus"] if celery else ["-m", "eventbus.cli"]
        if args[0] == "demo":
            args = [*args, "--queue", self.queue]
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, *head, *args],
            cwd=REPO,
            env=self.environ(**env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        elapsed = time.monotonic() - started
        return Run(what, args, result.returncode, result.stdout, result.stderr, elapsed)

    def close(self) -> None:
        app = make_app(self.redis)
        delete_queues(app, self.queue, self.dead_letter_queue)
        app.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


def assert_no_secret(runs: list[Run]) -> None:
    leaks = [
        f"{run.what}: {' '.join(run.args)}"
        for run in runs
        if MARK in run.stdout or MARK in run.stderr
    ]
    assert not leaks, f"{len(leaks)} run(s) printed the password: {leaks}"
    tracebacks = [
        f"{run.what}: {run.args}: {run.stderr}" for run in runs if "Traceback" in run.stderr
    ]
    assert not tracebacks, tracebacks[0]
    slowest = max(runs, key=lambda run: run.seconds)
    print(
        f"secrets[{runs[0].what.split()[0]}]: runs={len(runs)} leaked=0 tracebacks=0 "
        f"slowest={slowest.seconds:.1f}s ({slowest.what}: {' '.join(slowest.args)[:50]})"
    )


def assert_not_in(secret: str, text: str) -> None:
    leaking = [line for line in text.splitlines() if secret in line]
    assert not leaking, f"{len(leaking)} line(s) hold the password:\n" + "\n".join(leaking[:5])


def run_all(world: World, jobs: list[tuple[str, list[str], dict[str, Any]]]) -> list[Run]:
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda job: world.run(job[0], job[1], **job[2]), jobs))


def test_the_matrix_covers_every_command() -> None:
    assert leaf_commands(main) == set(COMMANDS)


def test_no_command_prints_a_password_of_a_wrong_broker_url(world: World) -> None:
    jobs: list[tuple[str, list[str], dict[str, Any]]] = []
    for name, url in BROKER_URLS.items():
        for runs in COMMANDS.values():
            jobs += [(f"broker {name}", args, {"EVENTBUS_BROKER_URL": url}) for args in runs]
        jobs.append((f"demo --broker {name}", ["demo", "--broker", url], {}))
        jobs.append(
            (f"celery {name}", ["dlq", "list"], {"EVENTBUS_BROKER_URL": url, "celery": True})
        )
    runs = run_all(world, jobs)
    assert_no_secret(runs)
    # (and the URLs were the ones used: reading the DLQ failed every time)
    dlq_lists = [run for run in runs if run.args[:2] == ["dlq", "list"]]
    assert dlq_lists and all(run.returncode == 1 for run in dlq_lists)


def test_no_command_prints_a_password_of_a_wrong_state_url(world: World) -> None:
    jobs: list[tuple[str, list[str], dict[str, Any]]] = []
    for name, url in STATE_URLS.items():
        for command, runs in COMMANDS.items():
            if command == "demo" and name != "login":
                continue  # a demo without its state waits 30 s for its handlers: once is enough
            jobs += [(f"state {name}", args, {"EVENTBUS_REDIS_URL": url}) for args in runs]
    runs = run_all(world, jobs)
    assert_no_secret(runs)
    ordered = [run for run in runs if run.args[:2] == ["publish", "todo.created"]]
    assert ordered and all(run.returncode == 1 for run in ordered)  # the sequence counter failed


def test_no_command_prints_a_password_of_a_wrong_outbox_url(world: World) -> None:
    jobs: list[tuple[str, list[str], dict[str, Any]]] = []
    for name, url in OUTBOX_URLS.items():
        for args in OUTBOX_COMMANDS:
            jobs.append((f"outbox --url {name}", [*args, "--url", url], {}))
            jobs.append((f"outbox env {name}", args, {"EVENTBUS_OUTBOX_URL": url}))
        jobs.append(
            (
                f"celery outbox {name}",
                ["outbox", "status"],
                {"EVENTBUS_OUTBOX_URL": url, "celery": True},
            )
        )
    runs = run_all(world, jobs)
    assert_no_secret(runs)
    assert all(run.returncode == 1 for run in runs)  # no outbox could be opened


# -- the workers' logs, and what Flower sees --------------------------------------------


class Worker:
    """``celery -A handlers worker`` with the test's environment, logging to a file."""

    def __init__(self, world: World, log_path: Path, **env: str) -> None:
        self.log_path = log_path
        command = [
            sys.executable, "-m", "celery", "-A", "handlers", "worker", "--pool=solo",
            "-Q", world.queue, "-n", f"{unique('secrets')}@%h", "--loglevel=INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=world.environ(**env), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


class Events(EventReceiver):  # type: ignore[misc]
    """Celery's event receiver, as Flower runs it: every task event, kept as JSON text."""

    def __init__(self, app: Any, connection: Any) -> None:
        super().__init__(connection, handlers={"*": self._record}, app=app, node_id=unique("ev"))
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def _record(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.seen.append(json.dumps(event, default=str))

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.seen)


@pytest.fixture
def flower_events(world: World) -> Iterator[Events]:
    app = make_app(world.redis)
    app.conf.event_exchange = "celeryev"  # celeryconfig's workers send to Celery's default
    with app.connection_for_write() as conn:
        receiver = Events(app, conn)
        thread = threading.Thread(target=receiver.capture, kwargs={"limit": None}, daemon=True)
        thread.start()
        try:
            yield receiver
        finally:
            receiver.should_stop = True
            thread.join(timeout=10)
            app.close()


@pytest.mark.parametrize("name", ["no-driver", "no-database"])
def test_a_worker_relaying_a_wrong_outbox_url_logs_no_password(
    world: World, tmp_path: Path, flower_events: Events, name: str
) -> None:
    worker = Worker(world, tmp_path / "relay.log", EVENTBUS_OUTBOX_URL=OUTBOX_URLS[name])
    try:
        wait_for(lambda: " ready." in worker.log(), timeout=60, message="the worker is ready")
        app = make_app(world.redis)
        task_id = app.send_task("eventbus.relay_outbox", queue=world.queue).id
        app.close()
        wait_for(
            lambda: f"eventbus.relay_outbox[{task_id}] raised" in worker.log(),
            timeout=60,
            message=lambda: f"the relay task's failure in the log:\n{worker.log()[-2000:]}",
        )
        wait_for(
            lambda: task_id in flower_events.text() and "task-failed" in flower_events.text(),
            timeout=30,
            message="the task-failed event, as Flower receives it",
        )
    finally:
        worker.stop()
    log = worker.log()
    assert "OutboxError" in log  # it did fail, on the wrong URL
    assert_not_in(MARK, log)
    assert_not_in(MARK, flower_events.text())


@pytest.mark.parametrize("name", list(STATE_URLS))
def test_a_worker_with_a_wrong_state_url_logs_no_password(
    world: World, tmp_path: Path, name: str
) -> None:
    worker = Worker(world, tmp_path / "state.log", EVENTBUS_REDIS_URL=STATE_URLS[name])
    try:
        wait_for(lambda: " ready." in worker.log(), timeout=60, message="the worker is ready")
        # An idempotent handler needs the state: it fails, is retried, is dead-lettered.
        published = world.run("publish", ["publish", "user.registered", USER])
        assert published.returncode == 0, published.stderr
        wait_for(
            lambda: "dead-lettered" in worker.log(),
            timeout=60,
            message=lambda: f"the handler dead-lettered:\n{worker.log()[-2000:]}",
        )
    finally:
        worker.stop()
    log = worker.log()
    assert "idempotency and ordering state in redis://" in log
    assert_not_in(MARK, log)
