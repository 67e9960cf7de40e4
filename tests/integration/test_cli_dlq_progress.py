"""`eventbus dlq replay`/`purge` over many records: a summary, -v lines, --json objects, a bar.

Real brokers (each test on Redis and on RabbitMQ), a real worker that
dead-letters the events, the CLI as a subprocess (tests/integration/test_cli_dlq.py
shows the set-up). Off a terminal and without -v/--json the operator gets
the summary alone; on a terminal (a pty as stderr) click's progress bar.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from typing import Any

from tests.integration.cli_broker_app import REJECT, subscribe_handler
from tests.support import running_worker

from .conftest import Env
from .helpers import OrderPlaced, wait_for
from .test_cli_dlq import APP, REPO, dead_letter_ids, eventbus_dlq

MANY = 24


def dead_letter(env: Env, count: int) -> list[str]:
    """``count`` events a real worker dead-letters; their record ids, oldest first."""
    subscribe_handler(env.bus)
    with running_worker(env.app, env.bus.queues, pool="solo", concurrency=1):
        for n in range(count):
            env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))
        wait_for(
            lambda: len(env.bus.dead_letters) == count,
            message=lambda: f"{len(env.bus.dead_letters)}/{count} dead letters",
        )
    return dead_letter_ids(env)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_many_records_a_summary_off_a_terminal_json_objects_with_json(env: Env) -> None:
    # Given many dead letters
    ids = dead_letter(env, MANY)

    # When the operator dry-runs a replay of all, piped, without -v: the summary alone
    result = eventbus_dlq(env, "replay", "--all", "--dry-run")
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout == f"dry run: would replay {MANY} dead letter(s); nothing was replayed\n"

    # And replays three with --json: one object per record on stdout, the summary on stderr
    result = eventbus_dlq(env, "replay", *ids[:3], "--json")
    assert result.returncode == 0, result.stderr
    objects = json_lines(result.stdout)
    assert [o["id"] for o in objects] == ids[:3]
    assert {(o["outcome"], o["handler"]) for o in objects} == {("replayed", REJECT)}
    assert result.stderr == "replayed 3 dead letter(s)\n"
    wait_for(lambda: env.queue_length() == 3, message="the replayed messages on their queue")

    # And replays five more without -v: the summary alone
    result = eventbus_dlq(env, "replay", *ids[3:8])
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        "replayed 5 dead letter(s)\n",
        "",
    )

    # And deletes two by id with --json
    result = eventbus_dlq(env, "purge", *ids[8:10], "--yes", "--json")
    assert result.returncode == 0, result.stderr
    assert json_lines(result.stdout) == [{"id": i, "outcome": "deleted"} for i in ids[8:10]]

    # Then purging the rest with --json names each record once, after it is gone
    result = eventbus_dlq(env, "purge", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    purged = json_lines(result.stdout)
    assert sorted(o["id"] for o in purged) == sorted(ids[10:])  # (in the broker's order)
    assert {o["outcome"] for o in purged} == {"purged"}
    assert result.stderr == f"purged {MANY - 10} dead letter(s)\n"
    assert dead_letter_ids(env) == []
    wait_for(lambda: env.queue_length() == 8, message="eight replayed messages on their queue")


def test_a_terminal_gets_a_progress_bar(env: Env) -> None:
    # Given many dead letters
    dead_letter(env, MANY)
    # When the operator dry-runs a replay of all, stderr on a terminal
    code, stdout, terminal = run_with_terminal_stderr(env, "replay", "--all", "--dry-run")
    # Then the terminal shows click's bar, full at the end, and stdout the summary alone
    assert code == 0, terminal
    assert "dry run" in terminal and f"{MANY}/{MANY}" in terminal and "100%" in terminal
    assert "#" in terminal and f"would replay {MANY}" in terminal
    assert stdout == f"dry run: would replay {MANY} dead letter(s); nothing was replayed\n"
    # And a purge of all shows one too
    code, stdout, terminal = run_with_terminal_stderr(env, "purge", "--yes")
    assert code == 0, terminal
    assert "purging" in terminal and "100%" in terminal
    assert stdout == f"purged {MANY} dead letter(s)\n"


def run_with_terminal_stderr(env: Env, *args: str) -> tuple[int, str, str]:
    """Run ``eventbus dlq ARGS`` with stderr on a pty: (exit code, stdout, what the pty got)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTBUS_", "CELERY_"))}
    environ.update(
        EVENTBUS_CLI_TEST_BROKER=env.broker_url,
        EVENTBUS_CLI_TEST_QUEUE=env.queue,
        EVENTBUS_CLI_TEST_DLQ=env.dead_letter_queue,
        COLUMNS="100",
    )
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "eventbus.cli", "-A", APP, "dlq", *args],
            cwd=REPO,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
        )
        os.close(slave)
        slave = -1
        received = bytearray()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal's last end
                    break
                if not chunk:
                    break
                received += chunk
            elif process.poll() is not None:
                break
        stdout, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        return process.returncode, stdout, received.decode("utf-8", "replace")
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
