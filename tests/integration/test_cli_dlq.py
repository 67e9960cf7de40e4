"""`eventbus dlq` as the on-call engineer runs it: a real process on a real broker.

Each test runs on Redis and on RabbitMQ. A real worker in this process
dead-letters events; the CLI, a subprocess, loads the same bus from
tests/integration/cli_broker_app.py (configured through the environment).
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
from .helpers import OrderPlaced, wait_for

REPO = Path(__file__).resolve().parents[2]
APP = "tests.integration.cli_broker_app"
GARBAGE = b"\xff\xfe pushed by hand: not JSON, not a record"


def eventbus_dlq(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``eventbus -A tests.integration.cli_broker_app dlq ARGS`` on env's bus."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTBUS_", "CELERY_"))}
    environ.update(
        EVENTBUS_CLI_TEST_BROKER=env.broker_url,
        EVENTBUS_CLI_TEST_QUEUE=env.queue,
        EVENTBUS_CLI_TEST_DLQ=env.dead_letter_queue,
    )
    return subprocess.run(
        [sys.executable, "-m", "eventbus.cli", "-A", APP, "dlq", *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dead_letter_ids(env: Env) -> list[str]:
    return [record.id for record in env.bus.dead_letters]


def test_list_stats_show_dry_run_replay_purge(env: Env) -> None:
    # Given three events a real worker dead-lettered
    subscribe_handler(env.bus)
    with running_worker(env.app, env.bus.queues, pool="solo", concurrency=1):
        events = [env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1)) for n in range(3)]
        wait_for(
            lambda: len(env.bus.dead_letters) == 3,
            message=lambda: f"{len(env.bus.dead_letters)}/3 dead letters",
        )
    ids = dead_letter_ids(env)

    # When the operator lists them for a script: one JSON record per line
    result = eventbus_dlq(env, "list", "--json")
    assert result.returncode == 0, result.stderr
    listed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in listed] == ids
    assert sorted(r["event_id"] for r in listed) == sorted(str(e.event_id) for e in events)
    assert {r["handler"] for r in listed} == {REJECT}

    # And counts the failure groups
    result = eventbus_dlq(env, "stats")
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()[1:]]
    assert lines == [["3", f"{REJECT}:eventbus.errors.PermanentHandlerError"], ["3", "total"]]

    # And shows one, by a prefix of its id
    first = listed[0]
    result = eventbus_dlq(env, "show", first["id"][:12])
    assert result.returncode == 0, result.stderr
    order_id = first["envelope"]["data"]["order_id"]
    assert f"PermanentHandlerError: order {order_id} rejected" in result.stdout
    assert "Traceback (most recent call last)" in result.stdout

    # And dry-runs a replay of everything: reported, nothing changes
    result = eventbus_dlq(env, "replay", "--dry-run", "--all", "-v")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("would replay ") == 4  # three records and the total
    assert dead_letter_ids(env) == ids
    assert env.queue_length() == 0

    # And replays one (no worker runs now: its message waits on the handler queue)
    result = eventbus_dlq(env, "replay", first["id"][:12], "-v")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"replayed {first['id']} to {REJECT} (event {first['event_id']})",
        "replayed 1 dead letter(s)",
    ]
    wait_for(lambda: env.queue_length() == 1, message="the replayed message on its queue")
    assert dead_letter_ids(env) == ids[1:]

    # Then purges the rest: refused off a terminal without --yes, done with it
    result = eventbus_dlq(env, "purge")
    assert result.returncode == 1 and "refusing to purge without --yes" in result.stderr
    result = eventbus_dlq(env, "purge", "--yes")
    assert (result.returncode, result.stdout.strip()) == (0, "purged 2 dead letter(s)")
    assert len(env.bus.dead_letters) == 0
    result = eventbus_dlq(env, "list")
    assert (result.returncode, result.stdout, result.stderr) == (0, "no dead letters\n", "")


def test_hand_pushed_garbage_is_listed_and_purged_by_id(env: Env) -> None:
    # Given a raw message, not JSON at all, pushed onto the dead-letter queue by hand
    store = env.bus.dead_letter_store
    with env.connection() as conn:
        conn.Producer().publish(
            GARBAGE,
            exchange=store.exchange,
            routing_key=store.queue.routing_key,
            declare=[store.queue],
            content_type="application/octet-stream",
            content_encoding="binary",
            retry=True,
        )
    wait_for(lambda: len(env.bus.dead_letters) == 1, message="the garbage in the DLQ")

    # When the operator lists the DLQ, it is shown as undecodable with its size
    result = eventbus_dlq(env, "list")
    assert result.returncode == 0, result.stderr
    row = result.stdout.splitlines()[1]
    assert f"<undecodable> {len(GARBAGE)}B" in row
    record_id = row.split()[0]

    # Then it is purged by its id
    result = eventbus_dlq(env, "purge", record_id, "--yes")
    assert (result.returncode, result.stdout.strip()) == (0, "deleted 1 dead letter(s)"), (
        result.stderr
    )
    assert len(env.bus.dead_letters) == 0
