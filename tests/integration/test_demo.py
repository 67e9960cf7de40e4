"""The demo a newcomer runs first: `eventbus demo`, embedded and on real brokers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from celery import Celery

from tests.support import delete_queues, delete_state, require_broker, unique


def run_demo(env_extra: dict[str, str], queue: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTBUS_", "CELERY_"))}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "eventbus.cli", "demo", "--queue", queue],
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


def test_demo_runs_with_no_broker_installed() -> None:
    # Given no broker configured at all, when the newcomer runs the demo,
    # then the embedded memory:// transport tells the whole story.
    result = run_demo({}, "eventbus.cli.demo")
    assert "broker memory://" in result.stdout
    assert_story_told(result)


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_demo_runs_on_a_real_broker(kind: str) -> None:
    url = require_broker(kind)
    queue, dlq = unique("demo"), unique("demo-dlq")
    # The example handlers are idempotent and ordered: on Redis their state
    # goes to the broker's db, under a prefix of this run's (removed below).
    prefix = f"{unique('demo-state')}:"
    try:
        result = run_demo(
            {"EVENTBUS_BROKER_URL": url, "EVENTBUS_DLQ": dlq, "EVENTBUS_REDIS_PREFIX": prefix},
            queue,
        )
        assert_story_told(result)
        assert "guest:guest" not in result.stdout  # the password is never printed
    finally:
        app = Celery(broker=url, set_as_current=False)
        delete_queues(app, queue, dlq)
        if kind == "redis":
            app.conf.update(eventbus_redis_url=url, eventbus_redis_prefix=prefix)
            delete_state(app)
