"""A dead letter whose headers nest deeper than py-amqp decodes (RabbitMQ): listed, never a crash.

RabbitMQ itself may put such a message into the dead-letter queue (a handler
queue's dead-letter exchange takes whatever a consumer rejected). py-amqp
decodes header tables recursively: reading it raised ``RecursionError`` out of
the browse, and ``eventbus dlq list`` and ``bus.dead_letters.list()`` crashed.
Now every reader of the DLQ shows it as an undecodable record, beside the others.

The readers run in processes of their own: the guard a worker of this test
process installed earlier must not hide a reader without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.cli_broker_app import REJECT, subscribe_handler
from tests.support import running_worker

from .conftest import Env
from .deep_headers import publish_deep_headers
from .helpers import OrderPlaced, wait_for

REPO = Path(__file__).resolve().parents[2]
APP = "tests.integration.cli_broker_app"
BODY = '["deep headers: the broker dead-lettered me"]'

#: Lists the DLQ with the Python API, in the CLI test app, as JSON lines.
LIST_WITH_THE_API = """
import json
from tests.integration.cli_broker_app import bus
for record in bus.dead_letters.list():
    print(json.dumps({"id": record.id, "reason": record.reason, "handler": record.handler,
                      "raw_body": record.raw_body, "message": record.exception_message}))
"""


def _environ(env: Env) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTBUS_", "CELERY_"))}
    environ.update(
        EVENTBUS_CLI_TEST_BROKER=env.broker_url,
        EVENTBUS_CLI_TEST_QUEUE=env.queue,
        EVENTBUS_CLI_TEST_DLQ=env.dead_letter_queue,
    )
    return environ


def _run(env: Env, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *command],
        cwd=REPO,
        env=_environ(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_dead_letter_with_headers_too_deep_is_listed_as_undecodable(rabbitmq_env: Env) -> None:
    # Given a DLQ holding a record a worker wrote
    env = rabbitmq_env
    subscribe_handler(env.bus)
    with running_worker(env.app, env.bus.queues, pool="solo", concurrency=1):
        env.bus.publish(OrderPlaced(order_id="o-1", quantity=1))
        wait_for(lambda: len(env.bus.dead_letters) == 1, message="the worker's dead letter")

    # When a message whose headers nest 5,000 deep lands in the DLQ (as the
    # broker dead-letters what a consumer rejected)
    publish_deep_headers(env.broker_url, env.dead_letter_queue, BODY, depth=5000)
    wait_for(lambda: len(env.bus.dead_letters) == 2, message="the deep message in the DLQ")

    # Then the Python API lists both: the deep one as an undecodable record
    listed = _run(env, "-c", LIST_WITH_THE_API)
    assert listed.returncode == 0, listed.stderr[-3000:]
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(r["reason"] for r in records) == ["permanent_error", "undecodable"], records
    [deep] = [r for r in records if r["reason"] == "undecodable"]
    assert deep["raw_body"] == BODY
    assert "headers" in deep["message"] and "deep" in deep["message"], deep
    [kept] = [r for r in records if r["reason"] != "undecodable"]
    assert kept["handler"] == REJECT
    # And so does the CLI, exit 0
    result = _run(env, "-m", "eventbus.cli", "-A", APP, "dlq", "list", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    shown = [json.loads(line) for line in result.stdout.splitlines()]  # (JSON lines)
    assert sorted(r["reason"] for r in shown) == ["permanent_error", "undecodable"], shown
    # And the record is shown, not consumed: the DLQ still holds both
    assert len(env.bus.dead_letters) == 2
