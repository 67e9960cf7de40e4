"""No password of a configured URL ever reaches the operator or the logs.

Every ``eventbus`` command (the test checks it knows them all) runs on the
example app (``-A handlers``, configured from the environment) with wrong
URLs that carry a marker password, in the userinfo and in ``?password=``:
the broker URL (``EVENTBUS_BROKER_URL``, ``demo --broker``), the state Redis
URL (``EVENTBUS_REDIS_URL``), the outbox URL (``--url``,
``EVENTBUS_OUTBOX_URL``). Neither stdout, stderr nor what the command logs
holds the marker, and no command prints a traceback. Then real workers: one
runs the outbox relay task with such an outbox URL, one has such a state URL
and runs an idempotent handler; neither their logs nor the task events
Flower shows hold the marker.

The commands run in-process (click's ``CliRunner``, logs captured), in one
process per environment (tests/integration/cli_secrets_runner.py: the
example app reads its environment once, when it is imported), through
``eventbus`` and through ``celery -A handlers eventbus`` alike. A few run as
real processes of each entry point (the ``eventbus`` and ``celery``
scripts): what an interpreter prints at exit is checked there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import pytest
from celery.events.receiver import EventReceiver

from eventbus.cli.main import main
from tests.support import delete_queues, make_app, require_broker, unique, wait_for

#: Over a hundred ``eventbus`` processes per test, three at a time.
#: About 200 commands, in-process in about 20 processes, two processes at a time.
pytestmark = [pytest.mark.redis, pytest.mark.timeout(300)]

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
    # Without credentials in its environment it refuses to start (exit 2), saying so.
    "console": [["console"]],
    # Without Kafka servers configured it exits 2 at once, naming the settings.
    "kafka consume": [["kafka", "consume"]],
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
    log: str = ""  #: what the command logged (an in-process run)
    escaped: str = ""  #: the traceback of an exception that escaped the command

    def texts(self) -> list[str]:
        return [self.stdout, self.stderr, self.log, self.escaped]


@dataclass
class Job:
    """One command, in a group's process."""

    what: str
    args: list[str]
    entry: str = "eventbus"  #: or "celery": ``celery -A handlers eventbus ARGS``
    env: dict[str, str] = field(default_factory=dict)  #: set for this command only


@dataclass
class Group:
    """Commands run in one process (tests/integration/cli_secrets_runner.py), one environment."""

    name: str
    env: dict[str, str]  #: the process's environment, over the world's good one
    jobs: list[Job]


def entry_point(name: str) -> list[str]:
    """The console script ``eventbus`` or ``celery`` of this environment."""
    script = Path(sys.executable).with_name(name)
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", {"eventbus": "eventbus.cli", "celery": "celery"}[name]]


class World:
    """The good settings every run starts from: Redis db 9, names of its own, a SQLite outbox."""

    def __init__(self, tmp_path: Path) -> None:
        self.redis = require_broker("redis")
        self.queue = unique("it.secrets")
        self.dead_letter_queue = f"{self.queue}.dlq"
        self.tmp_path = tmp_path
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

    def demo_args(self, *args: str) -> list[str]:
        # On the test's queue, not eventbus.demo, which another run may be using.
        return ["demo", *args, "--queue", self.queue]

    def run(self, what: str, args: list[str], *, celery: bool = False, **env: str) -> Run:
        """A real process: ``eventbus -A handlers ARGS`` or ``celery -A handlers eventbus ARGS``."""
        head = (
            [*entry_point("celery"), "-A", "handlers", "eventbus"]
            if celery
            else [*entry_point("eventbus"), "-A", "handlers"]
        )
        started = time.monotonic()
        result = subprocess.run(
            [*head, *args],
            cwd=REPO,
            env=self.environ(**env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        elapsed = time.monotonic() - started
        return Run(what, args, result.returncode, result.stdout, result.stderr, elapsed)

    def run_group(self, group: Group) -> list[Run]:
        """The group's commands, in one process: their runs, and the process's own output."""
        with tempfile.TemporaryDirectory(dir=self.tmp_path) as work:
            jobs, results = Path(work) / "jobs.json", Path(work) / "results.json"
            jobs.write_text(json.dumps([vars(job) for job in group.jobs]))
            started = time.monotonic()
            process = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.cli_secrets_runner",
                    str(jobs),
                    str(results),
                ],
                cwd=REPO,
                env=self.environ(**group.env),
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            elapsed = time.monotonic() - started
            assert process.returncode == 0, f"{group.name}: the runner failed\n{process.stderr}"
            runs = [Run(**result) for result in json.loads(results.read_text())]
        own = Run(f"{group.name} (its process)", [], 0, process.stdout, process.stderr, elapsed)
        return [*runs, own]

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


def assert_no_secret(kind: str, runs: list[Run], processes: int) -> None:
    leaks = [
        f"{run.what}: {' '.join(run.args)}"
        for run in runs
        if any(MARK in text for text in run.texts())
    ]
    assert not leaks, f"{len(leaks)} run(s) printed or logged the password: {leaks}"
    tracebacks = [
        f"{run.what}: {run.args}: {run.stderr}{run.log}{run.escaped}"
        for run in runs
        if run.escaped or any("Traceback" in text for text in run.texts())
    ]
    assert not tracebacks, tracebacks[0]
    commands = [run for run in runs if run.args]
    slowest = max(commands, key=lambda run: run.seconds)
    print(
        f"secrets[{kind}]: runs={len(commands)} processes={processes} leaked=0 tracebacks=0 "
        f"slowest={slowest.seconds:.1f}s ({slowest.what}: {' '.join(slowest.args)[:50]})"
    )


def assert_not_in(secret: str, text: str) -> None:
    leaking = [line for line in text.splitlines() if secret in line]
    assert not leaking, f"{len(leaking)} line(s) hold the password:\n" + "\n".join(leaking[:5])


def run_all(
    world: World, groups: list[Group], real: list[tuple[str, list[str], dict[str, Any]]]
) -> list[Run]:
    """The groups (in-process runs) and the real processes, two processes at a time."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        grouped = pool.map(world.run_group, groups)
        reals = pool.map(lambda job: world.run(job[0], job[1], **job[2]), real)
        return [run for runs in grouped for run in runs] + list(reals)


def every_command(world: World, what: str, *, demo: bool = True) -> list[Job]:
    """Every leaf command's runs (COMMANDS); ``demo`` last: it changes Celery's default app."""
    jobs = [Job(what, args) for name, runs in COMMANDS.items() if name != "demo" for args in runs]
    return [*jobs, Job(what, world.demo_args())] if demo else jobs


def test_the_matrix_covers_every_command() -> None:
    assert leaf_commands(main) == set(COMMANDS)


def test_no_command_prints_a_password_of_a_wrong_broker_url(world: World) -> None:
    groups = [
        Group(
            f"broker {name}",
            {"EVENTBUS_BROKER_URL": url},
            [
                *every_command(world, f"broker {name}", demo=False),
                Job(f"celery {name}", ["dlq", "list"], entry="celery"),
                Job(f"broker {name}", world.demo_args()),
            ],
        )
        for name, url in BROKER_URLS.items()
    ]
    # The URL given as an option only (the process's own is the good one); each demo
    # stops before it starts a worker.
    good = {"EVENTBUS_BROKER_URL": world.redis, "EVENTBUS_QUEUE": world.queue}
    groups.append(
        Group(
            "demo --broker",
            {},
            [
                Job(f"demo --broker {name}", world.demo_args("--broker", url), env=good)
                for name, url in BROKER_URLS.items()
            ],
        )
    )
    real: list[tuple[str, list[str], dict[str, Any]]] = [
        (
            "eventbus amqp-login",
            ["dlq", "list"],
            {"EVENTBUS_BROKER_URL": BROKER_URLS["amqp-login"]},
        ),
        (
            "celery redis-login",
            ["dlq", "list"],
            {"EVENTBUS_BROKER_URL": BROKER_URLS["redis-login"], "celery": True},
        ),
    ]
    runs = run_all(world, groups, real)
    assert_no_secret("broker", runs, len(groups) + len(real))
    # (and the URLs were the ones used: reading the DLQ failed every time)
    dlq_lists = [run for run in runs if run.args[:2] == ["dlq", "list"]]
    assert len(dlq_lists) == 3 * len(BROKER_URLS) + 2
    assert all(run.returncode == 1 for run in dlq_lists)
    demos = [run for run in runs if run.args[:1] == ["demo"]]
    assert len(demos) == 2 * len(BROKER_URLS) and all(run.returncode == 1 for run in demos)


def test_no_command_prints_a_password_of_a_wrong_state_url(world: World) -> None:
    groups = [
        Group(f"state {name}", {"EVENTBUS_REDIS_URL": url}, every_command(world, f"state {name}"))
        for name, url in STATE_URLS.items()
    ]
    real: list[tuple[str, list[str], dict[str, Any]]] = [
        (
            "eventbus state refused",
            COMMANDS["publish"][0],
            {"EVENTBUS_REDIS_URL": STATE_URLS["refused"]},
        )
    ]
    runs = run_all(world, groups, real)
    assert_no_secret("state", runs, len(groups) + len(real))
    # The sequence counter failed: one line naming the state store's setting
    ordered = [run for run in runs if run.args[:2] == ["publish", "todo.created"]]
    assert len(ordered) == len(STATE_URLS) + 1
    for run in ordered:
        assert run.returncode == 1, run
        (line,) = run.stderr.splitlines()
        assert line.startswith("error: state store ") and "eventbus_redis_url" in line, line
    # And the demo stopped before it began (its handlers need that store)
    demos = [run for run in runs if run.args[:1] == ["demo"]]
    assert len(demos) == len(STATE_URLS) and all(run.returncode == 1 for run in demos)


def test_no_command_prints_a_password_of_a_wrong_outbox_url(world: World) -> None:
    groups = [
        Group(
            "outbox --url",
            {},
            [
                Job(f"outbox --url {name}", [*args, "--url", url])
                for name, url in OUTBOX_URLS.items()
                for args in OUTBOX_COMMANDS
            ],
        )
    ]
    groups += [
        Group(
            f"outbox env {name}",
            {"EVENTBUS_OUTBOX_URL": url},
            [
                *(Job(f"outbox env {name}", args) for args in OUTBOX_COMMANDS),
                Job(f"celery outbox {name}", ["outbox", "status"], entry="celery"),
            ],
        )
        for name, url in OUTBOX_URLS.items()
    ]
    real: list[tuple[str, list[str], dict[str, Any]]] = [
        (
            "celery outbox no-driver",
            ["outbox", "status"],
            {"EVENTBUS_OUTBOX_URL": OUTBOX_URLS["no-driver"], "celery": True},
        )
    ]
    runs = run_all(world, groups, real)
    assert_no_secret("outbox", runs, len(groups) + len(real))
    commands = [run for run in runs if run.args]
    assert len(commands) == len(OUTBOX_URLS) * (2 * len(OUTBOX_COMMANDS) + 1) + 1
    assert all(run.returncode == 1 for run in commands)  # no outbox could be opened


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
