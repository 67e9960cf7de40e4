"""``eventbus outbox``: what an operator types and what comes back (exit codes included)."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from eventbus.cli.main import main
from eventbus.errors import OutboxError
from eventbus.outbox import Outbox
from tests.outbox import cli_apps
from tests.outbox.events import placed
from tests.support import wait_for

MEMORY = ["-A", "tests.outbox.cli_apps:memory_bus"]
CELERY = ["-A", "tests.outbox.cli_apps:celery_app"]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


@pytest.fixture
def outbox(url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Outbox]:
    monkeypatch.delenv("EVENTBUS_OUTBOX_URL", raising=False)
    bus = cli_apps.memory_bus
    bus.received.clear()
    bus.down, bus.fail_after = False, None
    box = Outbox(url)
    box.create_schema()
    yield box
    box.close()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def commit(outbox: Outbox, count: int) -> None:
    with outbox.engine.begin() as conn:
        outbox.add([placed(f"o{i}") for i in range(count)], connection=conn)


def add_garbage(outbox: Outbox) -> None:
    from datetime import UTC, datetime

    with outbox.engine.begin() as conn:
        conn.execute(
            outbox.table.insert(),
            {
                "event_id": "00000000-0000-0000-0000-000000000000",
                "event_type": "outbox_test.order_placed",
                "payload": "{garbage",
                "created_at": datetime.now(UTC),
            },
        )


def test_relay_publishes_every_pending_row_and_says_so(outbox: Outbox, url: str) -> None:
    commit(outbox, 3)
    result = invoke(*MEMORY, "outbox", "relay", "--url", url, "--limit", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout == "published 3, failed 0, pending 0\n"
    assert len(cli_apps.memory_bus.received) == 3


def test_relay_exits_1_when_rows_fail_and_status_shows_them(outbox: Outbox, url: str) -> None:
    commit(outbox, 1)
    add_garbage(outbox)
    commit(outbox, 1)
    # When the relay meets a malformed row
    result = invoke(*MEMORY, "outbox", "relay", "--url", url)
    # Then the others go out, and the exit code says something failed
    assert result.exit_code == 1
    assert "published 2, failed 1, pending 0" in result.stdout
    assert "error: 1 row(s) cannot be published and were marked failed" in result.stderr
    # And status counts and shows it (no app needed with --url)
    status = invoke("-A", "no_such_module", "outbox", "status", "--url", url)
    assert status.exit_code == 0, status.output
    lines = status.stdout.splitlines()
    assert lines[:3] == ["pending:   0", "failed:    1", "published: 2"]
    assert "outbox_test.order_placed 00000000-0000-0000-0000-000000000000" in lines[3]
    assert "not JSON" in lines[3]
    as_json = json.loads(invoke(*MEMORY, "outbox", "status", "--url", url, "--json").stdout)
    assert (as_json["pending"], as_json["failed"], as_json["published"]) == (0, 1, 2)
    assert as_json["latest_failed"][0]["last_error"].startswith("OutboxRowError")


def test_retry_failed_makes_failed_rows_pending_again(outbox: Outbox, url: str) -> None:
    add_garbage(outbox)
    invoke(*MEMORY, "outbox", "relay", "--url", url)
    assert invoke(*MEMORY, "outbox", "retry-failed", "--url", url).exit_code == 2
    result = invoke(*MEMORY, "outbox", "retry-failed", "--url", url, "--all")
    assert (result.exit_code, result.stdout) == (0, "1 row(s) pending again\n")
    assert outbox.status().pending == 1
    # Failed again (still garbage): retried by id
    invoke(*MEMORY, "outbox", "relay", "--url", url)
    assert invoke(*MEMORY, "outbox", "retry-failed", "--url", url, "--id", "2").exit_code == 1
    assert invoke(*MEMORY, "outbox", "retry-failed", "--url", url, "--id", "1").exit_code == 0
    # Nothing failed any more: nothing to do
    assert invoke(*MEMORY, "outbox", "retry-failed", "--url", url, "--all").exit_code == 1


def test_relay_exits_1_and_leaves_rows_pending_when_the_broker_is_down(
    outbox: Outbox, url: str
) -> None:
    commit(outbox, 2)
    cli_apps.memory_bus.down = True
    result = invoke(*MEMORY, "outbox", "relay", "--url", url)
    assert result.exit_code == 1
    assert "published 0, failed 0, pending 2" in result.stdout
    assert "error: publish failed, rows left pending: PublishError" in result.stderr
    assert outbox.status().pending == 2


def test_without_an_outbox_url_the_commands_are_a_usage_error(outbox: Outbox) -> None:
    for command in ("relay", "status"):
        result = invoke(*MEMORY, "outbox", command)
        assert result.exit_code == 2
        assert "eventbus_outbox_url" in result.stderr
        assert "EVENTBUS_OUTBOX_URL" in result.stderr


def test_the_url_and_table_come_from_the_celery_apps_settings(
    outbox: Outbox, url: str, tmp_path: Path
) -> None:
    other = Outbox(url, table_name="orders_outbox")
    other.create_schema()
    with other.engine.begin() as conn:
        other.add(placed("o1"), connection=conn)
    conf = cli_apps.celery_app.conf
    conf.eventbus_outbox_url, conf.eventbus_outbox_table = url, "orders_outbox"
    try:
        status = invoke(*CELERY, "outbox", "status")
        assert status.stdout.startswith("pending:   1 (oldest "), status.output
        relay = invoke(*CELERY, "outbox", "relay")
        assert (relay.exit_code, relay.stdout) == (0, "published 1, failed 0, pending 0\n")
    finally:
        conf.eventbus_outbox_url = conf.eventbus_outbox_table = None
        other.close()


def test_the_url_can_come_from_the_environment(outbox: Outbox, url: str) -> None:
    commit(outbox, 1)
    result = CliRunner(env={"EVENTBUS_OUTBOX_URL": url}).invoke(main, [*MEMORY, "outbox", "status"])
    assert result.stdout.startswith("pending:   1"), result.output


def test_relay_loop_relays_until_sigterm(outbox: Outbox, url: str) -> None:
    commit(outbox, 3)

    def stop_when_relayed() -> None:
        # The loop has installed its handler before it relays anything.
        wait_for(lambda: outbox.status().pending == 0, message="the loop relayed the rows")
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_when_relayed)
    stopper.start()
    result = invoke(*MEMORY, "outbox", "relay", "--url", url, "--loop", "--interval", "0.05")
    stopper.join(5)
    assert result.exit_code == 0, result.output
    assert "published 3, failed 0, pending 0" in result.stdout
    assert result.stdout.splitlines()[-1] == "stopped: published 3, failed 0 in this run"
    assert "stopping (SIGTERM)" in result.stderr
    assert len(cli_apps.memory_bus.received) == 3


SECRET_URLS = [
    "postgresql+nosuch://app:hunter2-pw@127.0.0.1/app?password=hunter3-pw",
    "postgresql://app:hunter2-pw@127.0.0.1:1/app?password=hunter3-pw",
    "sqlite:////nonexistent-eventbus-dir/app.db?password=hunter3-pw",
]


@pytest.mark.filterwarnings("ignore:Query string argument:sqlalchemy.exc.SAWarning")
@pytest.mark.parametrize("url", SECRET_URLS)
def test_no_password_of_the_outbox_url_is_printed_or_raised(url: str) -> None:
    # The CLI, text and JSON
    for args in (["status"], ["status", "--json"], ["relay"], ["retry-failed", "--all"]):
        result = invoke(*MEMORY, "outbox", *args, "--url", url)
        assert result.exit_code == 1, result.output
        assert "hunter" not in result.output, result.output
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    # The Python API (what the relay task raises into a worker's log and Flower)
    with pytest.raises(OutboxError) as raised:
        box = Outbox(url)
        try:
            box.status()
        finally:
            box.close()
    chain: BaseException | None = raised.value
    while chain is not None:  # a traceback prints every chained error
        assert "hunter" not in str(chain), str(chain)
        chain = chain.__cause__ or (None if chain.__suppress_context__ else chain.__context__)
    assert "***" in str(raised.value)
