"""The demo a newcomer runs first: `eventbus demo`, embedded and on real brokers.

It runs the package's own example app (eventbus.cli.demo_app), never a module of
the working directory, and on a real broker touches none of the names a
user's app configures: its dead letters go to QUEUE.dlq, its state under QUEUE:.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection

from tests.support import delete_queues, delete_state, require_broker, unique


def run_demo(
    env_extra: dict[str, str], queue: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTBUS_", "CELERY_"))}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "eventbus.cli", "demo", "--queue", queue],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_story_told(result: subprocess.CompletedProcess[str]) -> None:
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    assert "→ 2 handler tasks" in out and "→ 3 handler tasks" in out  # fan-out
    assert "retry in 1s" in out and "retry in 2s" in out  # backoff doubles
    assert "notify_assignee: 3 attempts" in out
    assert "reason=permanent_error attempts=1" in out  # the dead letter
    assert "(same event id), replays=1; record removed: True" in out  # its replay
    assert "EventValidationError" in out
    assert "Done: published 3 events" in out


def broker_holds(url: str, name: str) -> bool:
    """Whether the broker has anything named ``name``: a queue (RabbitMQ), a key (Redis)."""
    with Connection(url, connect_timeout=3) as conn:
        if conn.transport.driver_type == "redis":
            return any(conn.default_channel.client.scan_iter(match=f"*{name}*", count=1000))
        try:
            conn.channel().queue_declare(name, passive=True)
        except conn.channel_errors:
            return False  # 404: never declared
        return True


def test_demo_runs_with_no_broker_installed() -> None:
    # Given no broker configured at all, when the newcomer runs the demo,
    # then the embedded memory:// transport tells the whole story.
    result = run_demo({}, "eventbus.demo")
    assert "broker memory://" in result.stdout
    assert_story_told(result)


def test_demo_runs_inside_a_project_with_modules_named_like_the_example_app(
    tmp_path: Path,
) -> None:
    # Given a user's project whose own modules are named handlers and
    # celeryconfig (names many Celery projects use), which must not be run
    for name in ("handlers", "celeryconfig"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('user-module-imported: {name}')\n")
    # When the demo runs there, with no app named
    result = run_demo({}, "eventbus.demo", cwd=tmp_path)
    # Then it tells its story on its own app, having imported neither
    assert "user-module-imported" not in result.stdout + result.stderr
    assert_story_told(result)
    assert "dead letters go to eventbus.demo.dlq" in result.stdout


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_demo_runs_on_a_real_broker(kind: str) -> None:
    url = require_broker(kind)
    queue = unique("demo")
    # Given the names a user's app configures in the environment
    users = {
        "EVENTBUS_QUEUE": unique("users-queue"),
        "EVENTBUS_DLQ": unique("users-dlq"),
        "EVENTBUS_REDIS_PREFIX": f"{unique('users-state')}:",
    }
    try:
        # When the demo runs on that broker
        result = run_demo({"EVENTBUS_BROKER_URL": url, **users}, queue)
        # Then it tells its story on names of its own: dead letters on QUEUE.dlq
        # and (its handlers are idempotent and ordered) on Redis its state under QUEUE:
        assert_story_told(result)
        assert f"dead letters go to {queue}.dlq" in result.stdout
        assert "guest:guest" not in result.stdout  # the password is never printed
        for variable, name in users.items():
            assert not broker_holds(url, name), f"the demo used the user's {variable} {name}"
    finally:
        app = Celery(broker=url, set_as_current=False)
        delete_queues(app, queue, f"{queue}.dlq", users["EVENTBUS_DLQ"])
        if kind == "redis":
            for prefix in (f"{queue}:", users["EVENTBUS_REDIS_PREFIX"]):
                app.conf.update(eventbus_redis_url=url, eventbus_redis_prefix=prefix)
                delete_state(app)
