"""`eventbus demo` with a state store it cannot use: one line naming the setting, at once.

The example handlers are idempotent and ordered: they need the state store
(``EVENTBUS_REDIS_URL``). With one that refuses, the demo used to start its
worker, publish, and wait 30 s for handlers that could never run, then give
up on "user handlers". Now it checks the store before it starts and stops
with one line on stderr that names the store and the setting, before its
story begins. On the embedded broker, Redis and RabbitMQ.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support import require_broker, unique

REPO = Path(__file__).resolve().parents[2]
MARK = f"d3mo-{uuid.uuid4().hex[:8]}"
STATE_URLS = {
    "refused": (f"redis://eventbus:{MARK}@127.0.0.1:1/0", "connection refused"),
    "login": (f"redis://eventbus-nobody:{MARK}@127.0.0.1:6379/9", "authentication failed"),
}


@pytest.mark.parametrize("state", list(STATE_URLS))
@pytest.mark.parametrize("broker", ["memory", "redis", "rabbitmq"])
def test_demo_stops_at_once_when_its_state_store_cannot_be_used(broker: str, state: str) -> None:
    url, problem = STATE_URLS[state]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTBUS_", "CELERY_"))}
    if broker != "memory":
        environ["EVENTBUS_BROKER_URL"] = require_broker(broker)
    environ["EVENTBUS_REDIS_URL"] = url
    queue = unique("demo-state")
    environ["EVENTBUS_DLQ"] = f"{queue}.dlq"
    # When the newcomer runs the demo
    result = subprocess.run(
        [sys.executable, "-m", "eventbus.cli", "demo", "--queue", queue],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Then it stops before its story, with one line naming the store and the setting
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1. Fan-out" not in result.stdout  # nothing was published
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: state store redis://"), line
    assert "EVENTBUS_REDIS_URL" in line and problem in line, line
    assert MARK not in result.stdout + result.stderr
