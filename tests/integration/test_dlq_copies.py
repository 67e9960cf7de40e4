"""Copies of one dead letter (same id) read as one record, and replay publishes it once.

A record's id names its failed delivery (task id, handler, attempt). On
RabbitMQ a queue cannot refuse a duplicate on write: when the broker
redelivers a failed message after a connection loss, two pool processes may
each record the same delivery, 30 ms apart, and the queue holds two messages
with one id. The operator must see one record per failed delivery: listing,
``len()``, ``show``, ``stats`` and groups collapse the copies, and a replay
publishes the record once and removes every copy.

The copies are written here the way the second pool process does: a plain
publish of the record to the DLQ, with nothing that looks for an earlier
one (on Redis the store's own write would refuse it; a copy there comes
from a write that bypassed it, such as a mark that expired). Runs on Redis
(both transports) and RabbitMQ.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from click.testing import CliRunner, Result

from eventbus import DeadLetter
from eventbus.celery.deadletter.base import BrokerDeadLetterStore
from eventbus.cli.main import main
from eventbus.deadletter.summary import Summary

from .conftest import Env
from .helpers import OrderPlaced, wait_for

APP = "tests.integration.cli_env_app:bus"
HANDLER = "it.cli_env.reject_order"  #: the handler cli_env_app subscribes


def record_for(handler: str, n: int) -> DeadLetter:
    event_id = str(uuid.uuid4())
    return DeadLetter(
        handler=handler,
        reason="retries_exhausted",
        attempts=3,
        exception_type="ValueError",
        exception_message=f"boom {n}",
        task_id=str(uuid.uuid4()),
        worker="celery@a",
        event_id=event_id,
        event_type=OrderPlaced.event_type,
        envelope={
            "event_id": event_id,
            "event_type": OrderPlaced.event_type,
            "version": 1,
            "occurred_at": "2026-11-26T12:00:00Z",
            "metadata": {},
            "data": {"order_id": f"o-{n}", "quantity": 1},
        },
    )


def write_copy(env: Env, record: DeadLetter) -> DeadLetter:
    """Write a second copy of ``record`` (same id), as another process recording it would."""
    copy = record.model_copy(
        update={"worker": "celery@b", "failed_at": record.failed_at + timedelta(milliseconds=30)}
    )
    BrokerDeadLetterStore.append_once(env.bus.dead_letter_store, copy)  # a plain publish
    return copy


def dlq_messages(env: Env) -> int:
    """Messages in the DLQ on the broker, copies included."""
    return env.queue_length(env.dead_letter_queue)


@pytest.fixture
def dup_env(env: Env) -> Iterator[tuple[Env, DeadLetter, DeadLetter]]:
    """Three messages in the DLQ: a record, a copy of it, and another record after them."""
    env.bus.subscribe(OrderPlaced, name=HANDLER, handler=lambda e: None)
    record, other = record_for(HANDLER, 1), record_for(HANDLER, 2)
    env.bus.dead_letter_store.append(record)
    write_copy(env, record)
    env.bus.dead_letter_store.append(other)
    wait_for(lambda: dlq_messages(env) == 3, message="three messages in the DLQ")
    yield env, record, other


def listed(env: Env) -> list[str]:
    return [r.id for r in env.bus.dead_letters]


def cli(env: Env, *args: str) -> Result:
    return CliRunner().invoke(
        main,
        ["-A", APP, "dlq", *args],
        env={
            "EVENTBUS_CLI_TEST_BROKER": env.broker_url,
            "EVENTBUS_CLI_TEST_QUEUE": env.queue,
            "EVENTBUS_CLI_TEST_DLQ": env.dead_letter_queue,
        },
    )


def test_copies_of_a_record_read_as_one(dup_env: tuple[Env, DeadLetter, DeadLetter]) -> None:
    env, record, other = dup_env
    dlq = env.bus.dead_letters
    # When the operator reads the DLQ in every way there is
    # Then each failed delivery is one record, the copy nowhere
    wait_for(lambda: listed(env) == [record.id, other.id], message=lambda: f"listed {listed(env)}")
    assert [r.id for r in dlq.list()] == [record.id, other.id]
    assert len(dlq) == 2  # what list shows, not the 3 messages on the broker
    assert sum(dlq.groups().values()) == 2
    assert dlq.get(record.id[:8]).id == record.id  # a prefix names one record, not two
    # And the CLI says the same: list, stats (which names the copy), show
    result = cli(env, "list", "--json")
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == [record.id, other.id]
    result = cli(env, "stats", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) | {"groups": []} == {"groups": [], "total": 2, "copies": 1}
    result = cli(env, "stats")
    assert result.exit_code == 0, result.output
    assert "      2  total" in result.stdout
    assert "1 copy of a record" in result.stdout  # the broker holds 3 messages: said so
    result = cli(env, "show", record.id[:8])
    assert result.exit_code == 0, result.output
    assert record.id in result.stdout


def test_the_consoles_rows_are_the_rows_of_the_records_copies_and_garbage_alike(
    dup_env: tuple[Env, DeadLetter, DeadLetter],
) -> None:
    """``summaries()`` (lean where it can be) gives each record once, as ``records()`` does."""
    env, record, other = dup_env
    store = env.bus.dead_letter_store
    # Given a message pushed onto the DLQ by hand, no record at all, after the three
    with env.connection() as conn:
        conn.Producer().publish(
            b"\x00\x01 hand-pushed, not JSON",
            exchange=store.exchange,
            routing_key=store.queue.routing_key,
            declare=[store.queue],
            content_type="application/octet-stream",
            content_encoding="binary",
            retry=True,
        )
    wait_for(lambda: dlq_messages(env) == 4, message="four messages in the DLQ")
    # When the console reads its rows, and the operator's API its records
    rows = list(store.summaries())
    records = list(store.records())
    # Then both show the two records once each (the oldest copy), and the garbage
    assert [r.id for r in rows] == [r.id for r in records] == [record.id, other.id, rows[2].id]
    assert rows[:2] == [Summary.of(r) for r in records[:2]]
    assert rows[2].reason == "undecodable" and rows[2].event_type == "<undecodable>"
    assert replace(rows[2], failed_at=0) == replace(Summary.of(records[2]), failed_at=0)


def test_replay_all_publishes_a_copied_record_once_and_removes_every_copy(
    dup_env: tuple[Env, DeadLetter, DeadLetter],
) -> None:
    env, _, _ = dup_env
    # When the operator replays everything (no worker runs: the messages wait on the queue)
    replayed = env.bus.dead_letters.replay_all()
    # Then each record was published once, and the DLQ is empty: no copy left behind
    assert replayed == 2
    wait_for(lambda: env.queue_length() == 2, message=lambda: f"{env.queue_length()} sent")
    wait_for(lambda: dlq_messages(env) == 0, message=lambda: f"{dlq_messages(env)} left")
    assert len(env.bus.dead_letters) == 0


def test_replay_of_one_record_publishes_it_once_and_removes_every_copy(
    dup_env: tuple[Env, DeadLetter, DeadLetter],
) -> None:
    env, record, other = dup_env
    # When the operator replays the copied record by its id
    envelope = env.bus.dead_letters.replay(record.id)
    # Then one message was sent, both copies are gone, and the other record stays
    assert str(envelope.event_id) == record.event_id
    wait_for(lambda: dlq_messages(env) == 1, message=lambda: f"{dlq_messages(env)} left")
    assert env.queue_length() == 1
    wait_for(lambda: listed(env) == [other.id], message=lambda: f"listed {listed(env)}")


def test_cli_replay_and_purge_count_records_not_copies(
    dup_env: tuple[Env, DeadLetter, DeadLetter],
) -> None:
    env, record, other = dup_env
    # When the operator replays the copied record from the shell
    result = cli(env, "replay", record.id, "-v")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "replayed 1 dead letter(s)"
    assert result.stdout.count(f"replayed {record.id}") == 1
    assert env.queue_length() == 1
    # And a second copy of the other record appears, then everything is purged
    write_copy(env, other)
    wait_for(lambda: dlq_messages(env) == 2, message="the other record and its copy")
    result = cli(env, "purge", "--yes", "--json")
    assert result.exit_code == 0, result.output
    # Then the purge counts (and names) the one record the operator saw, and removed its copy too
    assert result.stdout.splitlines() == [f'{{"id": "{other.id}", "outcome": "purged"}}']
    assert result.stderr.strip() == "purged 1 dead letter(s)"
    assert dlq_messages(env) == 0


def test_listing_a_record_written_once_says_nothing_of_copies(env: Env) -> None:
    # Given a DLQ without copies
    env.bus.subscribe(OrderPlaced, name=HANDLER, handler=lambda e: None)
    env.bus.dead_letter_store.append(record_for(HANDLER, 1))
    wait_for(lambda: dlq_messages(env) == 1, message="the record")
    # Then stats and purge say nothing of copies
    result = cli(env, "stats")
    assert result.exit_code == 0, result.output
    assert "cop" not in result.stdout
    result = cli(env, "purge", "--yes")
    assert (result.exit_code, result.stdout.strip()) == (0, "purged 1 dead letter(s)")
