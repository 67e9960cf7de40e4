"""``eventbus kafka consume`` from a shell: its help, and one-line answers to misuse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from eventbus.cli.kafka import _default_topics
from eventbus.cli.main import load_bus, main
from eventbus.deadletter.record import DeadLetter

ROOT = Path(__file__).resolve().parents[2]
APP = ["-A", "tests.unit.cli_app"]


@pytest.fixture(autouse=True)
def no_kafka_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EVENTBUS_KAFKA_BOOTSTRAP_SERVERS", "EVENTBUS_KAFKA_GROUP"):
        monkeypatch.delenv(name, raising=False)


def consume(*args: str) -> Result:
    return CliRunner().invoke(main, [*APP, "kafka", "consume", *args])


def assert_one_line_error(result: Result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if "rror" in line]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_consume_has_help_under_eventbus_and_under_celery() -> None:
    result = CliRunner().invoke(main, ["kafka", "consume", "--help"])
    assert result.exit_code == 0 and "--topic-type TOPIC=EVENT_TYPE" in result.output
    # (the celery.commands entry point of the installed package; the example app)
    celery = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "handlers",
            "eventbus",
            "kafka",
            "consume",
            "--help",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert celery.returncode == 0, celery.stderr
    assert "consumer-group member" in celery.stdout


def test_consume_without_servers_says_where_to_give_them() -> None:
    result = consume("--group", "g", "--topic", "t")
    assert_one_line_error(result, 2, "no Kafka servers: pass --bootstrap-servers")


def test_consume_without_a_group_or_a_topic_is_a_usage_error() -> None:
    no_group = consume("--bootstrap-servers", "127.0.0.1:1", "--topic", "t")
    assert_one_line_error(no_group, 2, "no consumer group: pass --group")


def test_without_topics_it_reads_those_of_the_handlers_event_types() -> None:
    # Given the CLI test app (handlers of contract.item_added and _removed) and a mapping
    bus = load_bus("tests.unit.cli_app")
    mapping = {"payments": "contract.item_added"}
    # Then the default topics are one per handled type (the default naming), and the mapped
    assert _default_topics(bus, {}, mapping) == [
        "contract.item_added",
        "contract.item_removed",
        "payments",
    ]
    prefixed = {"eventbus_kafka_topic_prefix": "shop."}
    assert _default_topics(bus, prefixed, {}) == [
        "shop.contract.item_added",
        "shop.contract.item_removed",
    ]
    # but topics named by aggregate type cannot be told from event types
    with pytest.raises(click.UsageError, match="no topic to read"):
        _default_topics(bus, {"eventbus_kafka_topics": "aggregate_type"}, {})


def test_consume_refuses_a_bad_topic_mapping() -> None:
    servers = ("--bootstrap-servers", "127.0.0.1:1", "--group", "g")
    not_a_pair = consume(*servers, "--topic-type", "payments")
    assert_one_line_error(not_a_pair, 2, "'payments' is not KEY=VALUE")
    unknown = consume(*servers, "--topic-type", "payments=nobody.knows")
    assert_one_line_error(unknown, 2, "maps to 'nobody.knows', which is no registered event type")


def test_a_setting_eventbus_owns_is_refused_in_one_line() -> None:
    result = consume(
        "--bootstrap-servers", "127.0.0.1:1", "--group", "g", "--topic", "t",
        "--config", "bootstrap.servers=elsewhere:9092",
    )  # fmt: skip
    assert_one_line_error(result, 1, "'bootstrap.servers' is set from KafkaSettings")


def test_dlq_show_names_a_kafka_dead_letters_source() -> None:
    # Given a dead letter of a Kafka record (as the consumer writes it)
    bus = load_bus("tests.unit.cli_app")
    record = DeadLetter(
        handler=None,
        reason="undecodable",
        attempts=1,
        exception_type="eventbus.errors.UnknownEventType",
        exception_message="invalid envelope for 'shop.refunded'",
        raw_body='{"event_type": "shop.refunded"}',
        source={"kafka_topic": "shop.refunded", "partition": 2, "offset": 4117},
    )
    bus.dead_letter_store.append(record)
    try:
        # When an operator shows it, then its topic, partition and offset are there
        result = CliRunner().invoke(main, [*APP, "dlq", "show", record.id])
        assert result.exit_code == 0, result.output
        assert "source:      kafka_topic=shop.refunded partition=2 offset=4117" in result.output
        shown = CliRunner().invoke(main, [*APP, "dlq", "show", record.id, "--json"])
        assert '"offset": 4117' in shown.output
    finally:
        bus.dead_letter_store.remove([record.id])
