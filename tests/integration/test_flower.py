"""What an operator sees in Flower, proven against a real Flower 2.2 process.

The test starts ``celery flower`` (loopback, basic auth) and a real ``celery
worker`` as subprocesses of the app in :mod:`tests.integration.flower_app` on
the Redis broker, publishes events from this process, and reads Flower's
HTTP API the way an operator's browser or script would.

Flower knows only the tasks it saw events for since it started: the stack is
started, and Flower shown to receive events, before anything is published.
Redis gets a database of its own (``EVENTBUS_TEST_FLOWER_REDIS_URL``, default
db 10 of the test Redis), since Celery's events reach every listener on a
database; queue names and the worker's name carry a random suffix, and
teardown deletes the keys and binding entries the run created.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, cast
from urllib.parse import urlencode, urlsplit, urlunsplit

import pytest
import redis

from eventbus import DeadLetter
from eventbus.celery.deadletter.base import DEAD_LETTER_TASK
from eventbus.celery.deadletter.factory import store_for_app
from tests.brokers import free_port
from tests.support import require_broker, wait_for

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]
APP_MODULE = "tests.integration.flower_app"
USER, PASSWORD = "operator", "s3cret"
START_TIMEOUT = 30.0  #: seconds Flower and the worker get to come up
TIMEOUT = 20.0  #: seconds a single observation may take
REPLAY_TASK = "eventbus.replay_dead_letters"


def flower_redis_url() -> str:
    """The test Redis, on a database of its own for this module."""
    url = require_broker("redis")
    explicit = os.environ.get("EVENTBUS_TEST_FLOWER_REDIS_URL")
    if explicit:
        return explicit
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/10"))


def require_flower() -> None:
    """Skip without Flower installed; fail instead when CI is set."""
    if importlib.util.find_spec("flower") is None:
        if os.environ.get("CI"):
            pytest.fail("flower is not importable; CI is set: install '.[test]'")
        pytest.skip("flower is not installed")


# -- the processes -----------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} log (last {lines} lines) ---\n" + "\n".join(
            text.splitlines()[-lines:]
        )

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.popen.returncode}\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM the process group; SIGKILL it if it is still there after 10 s."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
            except ProcessLookupError:
                pass


def start(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> Process:
    log = log_dir / f"{name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", APP_MODULE, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )
    return Process(name, popen, log)


# -- Flower's HTTP API ----------------------------------------------------------------


@dataclass
class Flower:
    base_url: str
    process: Process
    worker: Process
    auth: tuple[str, str] | None = (USER, PASSWORD)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: tuple[str, str] | str | None = "default",
        **params: str,
    ) -> tuple[int, Any]:
        """(status, JSON body or text) of one request; HTTP errors are returned, not raised."""
        url = self.base_url + path + (f"?{urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        credentials = self.auth if auth == "default" else auth
        if isinstance(credentials, tuple):
            token = base64.b64encode(":".join(credentials).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        text = raw.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def get(self, path: str, **params: str) -> Any:
        status, body = self.request("GET", path, **params)
        assert status == 200, f"GET {path} -> {status}: {body}"
        return body

    def tasks(self, **params: str) -> dict[str, dict[str, Any]]:
        """Flower's task list (``/api/tasks``): uuid -> task."""
        tasks: dict[str, dict[str, Any]] = self.get("/api/tasks", **params)
        return tasks

    def task(self, task_id: str) -> dict[str, Any] | None:
        """One task as Flower knows it (``/api/task/info/<id>``), None while it knows none."""
        status, body = self.request("GET", f"/api/task/info/{task_id}")
        if status == 404:
            return None
        assert status == 200, f"task info {task_id} -> {status}: {body}"
        return dict(body)

    def wait_task(self, task_id: str, state: str, what: str) -> dict[str, Any]:
        """Poll Flower until it shows ``task_id`` in ``state``; return the task."""

        def shown() -> dict[str, Any]:
            self.process.check_alive()
            task = self.task(task_id)
            return task if task and task["state"] == state else {}

        return wait_for(
            shown,
            timeout=TIMEOUT,
            interval=0.1,
            message=lambda: (
                f"Flower showing {what} {task_id} as {state}; it shows "
                f"{self.task(task_id)}\n{self.worker.tail(20)}"
            ),
        )


@dataclass
class Stack:
    module: ModuleType
    flower: Flower
    client: redis.Redis
    uid: str
    worker_name: str
    published: list[str] = field(default_factory=list)

    def records_of(self, event_id: str) -> dict[str, DeadLetter]:
        """This event's dead letters by handler, as ``bus.dead_letters.list()`` gives them."""
        records = self.module.bus.dead_letters.list()
        return {r.handler: r for r in records if r.event_id == event_id}

    def publish_and_wait_for_dead_letters(self) -> dict[str, DeadLetter]:
        """Publish one payment; both its handlers end in the DLQ (the ledger after a retry)."""
        module = self.module
        n = len(self.published) + 1
        envelope = module.bus.publish(
            module.PaymentCaptured(payment_id=f"pay-{self.uid}-{n}", amount=4200 + n)
        )
        event_id = str(envelope.event_id)
        self.published.append(event_id)

        def both_records() -> dict[str, DeadLetter]:
            records = self.records_of(event_id)
            return records if len(records) == 2 else {}

        return wait_for(
            both_records,
            timeout=TIMEOUT,
            interval=0.1,
            message=lambda: f"two dead letters of {event_id}\n{self.flower.worker.tail(20)}",
        )


def load_app_module(broker_url: str, uid: str) -> ModuleType:
    """Import the test app with this run's names (once per process: it defines events)."""
    loaded = sys.modules.get(APP_MODULE)
    if loaded is not None:
        return loaded
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EVENTBUS_FLOWER_TEST_BROKER_URL", broker_url)
        patch.setenv("EVENTBUS_FLOWER_TEST_QUEUE", f"it.flower.{uid}")
        patch.setenv("EVENTBUS_FLOWER_TEST_DLQ", f"it.flower.{uid}.dlq")
        return importlib.import_module(APP_MODULE)


def wait_until_flower_receives_events(flower: Flower, module: ModuleType) -> None:
    """Flower subscribes to events some time after its HTTP server answers: probe it.

    A probe task-sent event is sent until Flower lists it, then closed as
    succeeded, so nothing published afterwards is missed.
    """
    probe = f"probe-{uuid.uuid4().hex}"

    def probe_seen() -> bool:
        flower.process.check_alive()
        with module.app.events.default_dispatcher() as dispatcher:
            dispatcher.send("task-sent", uuid=probe, name="it.flower.probe", args="()")
        return flower.task(probe) is not None

    wait_for(probe_seen, timeout=START_TIMEOUT, interval=0.2, message="Flower receiving events")
    with module.app.events.default_dispatcher() as dispatcher:
        dispatcher.send("task-succeeded", uuid=probe, result="'probe'", runtime=0.0)


def clean_redis(client: redis.Redis, uid: str, event_bindings_before: set[bytes]) -> None:
    """Delete what this run left on its Redis database.

    Keys naming the run (queues, their binding tables, the app's flag and
    counter) go; entries naming it in shared binding tables go; so do the
    event-queue bindings Flower added (fanout bindings: Redis delivers events
    by PUBLISH, never through these tables); deadlines of tables that no
    longer exist go last.
    """
    names = list(client.scan_iter(match=f"*{uid}*", count=1000))
    if names:
        client.delete(*names)
    for table in client.scan_iter(match="_kombu.binding*", count=1000):
        if client.type(table) != b"set":
            continue
        for member in cast(set[bytes], client.smembers(table)):
            if uid.encode() in member or (
                table == b"_kombu.binding.celeryev" and member not in event_bindings_before
            ):
                client.srem(table, member)
    deadlines = "_kombu.binding_deadlines"
    for exchange in cast(list[bytes], client.zrange(deadlines, 0, -1)):
        if not client.exists(b"_kombu.binding." + exchange):
            client.zrem(deadlines, exchange)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A real Flower and a real worker on this run's queues; everything removed afterwards."""
    broker_url = flower_redis_url()
    require_flower()
    uid = uuid.uuid4().hex[:10]
    module = load_app_module(broker_url, uid)
    uid = module.QUEUE.rsplit(".", 1)[-1]  # the names the app really uses
    client = redis.Redis.from_url(module.BROKER_URL, socket_timeout=5)
    event_bindings_before = cast(set[bytes], client.smembers("_kombu.binding.celeryev"))
    log_dir = tmp_path_factory.mktemp("flower")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "EVENTBUS_FLOWER_TEST_BROKER_URL": module.BROKER_URL,
        "EVENTBUS_FLOWER_TEST_QUEUE": module.QUEUE,
        "EVENTBUS_FLOWER_TEST_DLQ": module.DEAD_LETTER_QUEUE,
    }
    port = free_port()
    worker_name = f"it-flower-{uid}@127.0.0.1"
    processes: list[Process] = []
    try:
        flower_process = start(
            "flower",
            ["flower", "--address=127.0.0.1", f"--port={port}", f"--basic-auth={USER}:{PASSWORD}"],
            env,
            log_dir,
        )
        processes.append(flower_process)
        worker = start(
            "worker",
            [
                "worker",
                "-Q",
                module.QUEUE,
                "--pool=threads",
                "-c",
                "2",
                "-E",
                "-n",
                worker_name,
                "--without-mingle",
                "--without-gossip",
                "-l",
                "INFO",
            ],
            env,
            log_dir,
        )
        processes.append(worker)
        flower = Flower(f"http://127.0.0.1:{port}", flower_process, worker)

        def flower_up() -> bool:
            flower_process.check_alive()
            worker.check_alive()
            try:
                return flower.request("GET", "/healthcheck")[0] == 200
            except OSError:
                return False  # not listening yet

        wait_for(
            flower_up,
            timeout=START_TIMEOUT,
            interval=0.2,
            message=lambda: f"Flower answering\n{flower_process.tail()}",
        )
        wait_until_flower_receives_events(flower, module)
        yield Stack(module, flower, client, uid, worker_name)
    finally:
        for process in reversed(processes):
            process.stop()
        module.app.close()
        clean_redis(client, uid, event_bindings_before)
        client.close()


@pytest.fixture(scope="module")
def dead_letters(stack: Stack) -> dict[str, DeadLetter]:
    """One payment published: the ledger handler exhausted its retry, the receipt one failed."""
    return stack.publish_and_wait_for_dead_letters()


# -- the tests -------------------------------------------------------------------------


def test_flower_refuses_requests_without_the_credentials(
    stack: Stack, dead_letters: dict[str, DeadLetter]
) -> None:
    flower = stack.flower
    record = dead_letters[stack.module.LEDGER_HANDLER]
    for auth in (None, (USER, "wrong")):
        # When someone without the password reads the task list or sends a replay
        assert flower.request("GET", "/api/tasks", auth=auth)[0] == 401
        status, _ = flower.request(
            "POST",
            f"/api/task/async-apply/{REPLAY_TASK}",
            {"kwargs": {"ids": [record.id]}},
            auth=auth,
        )
        # Then Flower refuses both, and nothing is replayed
        assert status == 401
    assert record.id in {r.id for r in stack.module.bus.dead_letters.list()}


def test_the_exhausted_handler_task_shows_as_failure_with_retries_and_traceback(
    stack: Stack, dead_letters: dict[str, DeadLetter]
) -> None:
    module, flower = stack.module, stack.flower
    ledger = dead_letters[module.LEDGER_HANDLER]
    receipt = dead_letters[module.RECEIPT_HANDLER]
    # Then the ledger task (one retry, then exhausted) is a FAILURE in the task list
    flower.wait_task(str(ledger.task_id), "FAILURE", "the exhausted ledger task")
    failures = flower.tasks(taskname=module.LEDGER_HANDLER, state="FAILURE")
    assert str(ledger.task_id) in failures
    # and its details show the retries, the exception and the traceback
    info = flower.task(str(ledger.task_id))
    assert info is not None
    assert info["name"] == module.LEDGER_HANDLER
    assert info["retries"] == 1 == ledger.attempts - 1
    assert info["exception"].startswith("LedgerUnavailable(")
    assert f"pay-{stack.uid}-" in info["exception"]
    assert "Traceback (most recent call last)" in info["traceback"]
    assert "LedgerUnavailable: ledger timed out" in info["traceback"]
    assert info["worker"] == stack.worker_name
    assert info["routing_key"] == module.QUEUE
    # And the permanently failing receipt task is a FAILURE without retries
    receipt_info = flower.wait_task(str(receipt.task_id), "FAILURE", "the receipt task")
    assert receipt_info["retries"] == 0
    assert receipt_info["exception"].startswith("PermanentHandlerError(")


def test_each_dead_letter_is_a_task_row_with_the_operators_summary(
    stack: Stack, dead_letters: dict[str, DeadLetter]
) -> None:
    module, flower = stack.module, stack.flower
    expected = {
        module.LEDGER_HANDLER: (
            2,
            "retries_exhausted",
            "tests.integration.flower_app.LedgerUnavailable: ledger timed out posting payment",
        ),
        module.RECEIPT_HANDLER: (
            1,
            "permanent_error",
            "eventbus.errors.PermanentHandlerError: no receipt template for amount",
        ),
    }
    # The record ids the operator gets from `eventbus dlq list` are Flower's task ids
    for record in dead_letters.values():
        flower.wait_task(record.id, "PENDING", "the dead letter")
    rows = flower.tasks(taskname=DEAD_LETTER_TASK)
    for handler, (attempts, reason, exception) in expected.items():
        record = dead_letters[handler]
        row = rows[record.id]
        # Then each row is an eventbus.dead_letter task, waiting, sent to the DLQ
        assert row["uuid"] == record.id
        assert row["name"] == DEAD_LETTER_TASK
        assert row["state"] == "PENDING"
        assert row["routing_key"] == module.DEAD_LETTER_QUEUE
        # whose args say at a glance what failed, where and how often
        args = row["args"]
        assert f"handler={handler} " in args
        assert f"event={record.event_type}#{record.event_id} " in args
        assert record.event_type == "it.flower.payment_captured"
        assert f"attempts={attempts} " in args
        assert f"reason={reason} " in args
        assert f"exception={exception}" in args
        # and which handler task it came from
        assert row["root_id"] == record.task_id


def test_replay_from_flowers_api_runs_the_fixed_handler_and_marks_the_row_succeeded(
    stack: Stack,
) -> None:
    module, flower, client = stack.module, stack.flower, stack.client
    # Given a fresh dead letter of the ledger handler
    record = stack.publish_and_wait_for_dead_letters()[module.LEDGER_HANDLER]
    flower.wait_task(record.id, "PENDING", "the dead letter")
    other_ids = {r.id for r in module.bus.dead_letters.list()} - {record.id}
    # and the fix deployed (the worker's handler reads this key)
    client.set(module.FIXED_KEY, "1")
    try:
        handled_before = int(client.get(module.HANDLED_KEY) or 0)
        # When the operator replays it through Flower's API
        status, body = flower.request(
            "POST", f"/api/task/async-apply/{REPLAY_TASK}", {"kwargs": {"ids": [record.id]}}
        )
        assert status == 200, body
        replay_task_id = body["task-id"]
        # Then the worker runs the handler again, successfully
        wait_for(
            lambda: int(client.get(module.HANDLED_KEY) or 0) > handled_before,
            timeout=TIMEOUT,
            interval=0.1,
            message=lambda: f"the replayed ledger run\n{flower.worker.tail(20)}",
        )
    finally:
        client.delete(module.FIXED_KEY)
    # and the record left the DLQ, the others stayed
    wait_for(
        lambda: record.id not in {r.id for r in module.bus.dead_letters.list()},
        timeout=TIMEOUT,
        interval=0.1,
        message="the replayed record leaving the DLQ",
    )
    assert other_ids <= {r.id for r in module.bus.dead_letters.list()}
    # and Flower shows the dead letter as SUCCESS, the replay task too
    row = flower.wait_task(record.id, "SUCCESS", "the replayed dead letter")
    assert row["result"] == "'replayed'"
    replay = flower.wait_task(replay_task_id, "SUCCESS", "the replay task")
    assert "'replayed': 1" in replay["result"]
    assert str(record.event_id) in replay["result"]
    # and the handler's new run, same event id, as SUCCESS
    wait_for(
        lambda: [
            task
            for task in flower.tasks(taskname=module.LEDGER_HANDLER, state="SUCCESS").values()
            if str(record.event_id) in task["args"]
        ],
        timeout=TIMEOUT,
        interval=0.1,
        message="the replayed ledger run in Flower",
    )


def test_a_purged_dead_letter_shows_as_revoked(stack: Stack) -> None:
    module, flower = stack.module, stack.flower
    # Given a dead letter in a DLQ of its own (written as the worker writes one)
    store = store_for_app(module.app, f"{module.DEAD_LETTER_QUEUE}.purge")
    record = DeadLetter.from_exception(
        ValueError("bad amount"),
        handler=module.LEDGER_HANDLER,
        reason="permanent_error",
        attempts=1,
        envelope={"event_id": "e-purge", "event_type": "it.flower.payment_captured"},
    )
    store.append(record)
    flower.wait_task(record.id, "PENDING", "the dead letter")
    # When the operator purges that queue
    assert store.purge() == 1
    # Then Flower shows the row as REVOKED
    flower.wait_task(record.id, "REVOKED", "the purged dead letter")
