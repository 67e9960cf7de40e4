"""The transactional outbox relays to Kafka: rows become records, marked only once acknowledged."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("confluent_kafka")

import sqlalchemy as sa

from eventbus.kafka import KafkaEventBus, KafkaSettings, TopicNaming
from eventbus.outbox import Outbox, OutboxRelay
from tests.brokers import free_port
from tests.kafka.broker import TansuBroker, unique_topic
from tests.kafka.publish_support import delete_topics, read_records
from tests.outbox.events import EVENTS, OrderPlaced, placed

pytestmark = pytest.mark.kafka


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    box = Outbox(engine)
    box.create_schema()
    yield box
    engine.dispose()


@pytest.fixture
def topic(kafka_broker: TansuBroker) -> Iterator[str]:
    name = unique_topic("outbox")
    yield name
    delete_topics(kafka_broker.bootstrap_servers, [name])


def test_the_relay_publishes_pending_rows_to_kafka_in_order_and_marks_them(
    outbox: Outbox, kafka_broker: TansuBroker, topic: str
) -> None:
    with outbox.engine.begin() as conn:
        written = outbox.add([placed(f"o-{n % 2}", total=n) for n in range(6)], connection=conn)
        # A row whose data fails its schema: marked failed, never sent.
        bad = placed("o-9")
        conn.execute(
            sa.insert(outbox.table).values(
                event_id=str(bad.event_id),
                event_type=OrderPlaced.event_type,
                payload=json.dumps({**bad.to_wire(), "data": {"order": "o-9", "total": -1}}),
                created_at=datetime.now(UTC),
            )
        )
    bus = KafkaEventBus(
        KafkaSettings(kafka_broker.bootstrap_servers),
        topics=TopicNaming.fixed(topic),
        event_registry=EVENTS,
    )

    result = OutboxRelay(outbox, bus).drain()

    assert (result.published, result.failed, result.pending_left) == (6, 1, 0)
    records = read_records(kafka_broker.bootstrap_servers, topic, 6)
    for key in (b"o-0", b"o-1"):
        mine = [json.loads(r.value or b"") for r in records if r.key == key]
        expected = [str(e.event_id) for e in written if e.aggregate_id == key.decode()]
        assert [m["event_id"] for m in mine] == expected  # the rows' order, per aggregate
    assert outbox.status().pending == 0


def test_a_kafka_broker_that_is_down_leaves_the_rows_pending(outbox: Outbox) -> None:
    with outbox.engine.begin() as conn:
        outbox.add([placed("o-1"), placed("o-2")], connection=conn)
    bus = KafkaEventBus(
        KafkaSettings(f"127.0.0.1:{free_port()}", delivery_timeout=0.5),  # nothing listens
        event_registry=EVENTS,
    )

    result = outbox.relay(bus)

    assert (result.published, result.pending_left) == (0, 2)
    assert result.error is not None and "PublishError" in result.error
    assert "_MSG_TIMED_OUT" in result.error
    assert outbox.status().pending == 2
    bus.close(0)


def test_the_relay_command_publishes_to_kafka_with_a_kafka_bus_as_its_app(
    outbox: Outbox, kafka_broker: TansuBroker, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from eventbus.cli.main import main

    with outbox.engine.begin() as conn:
        written = outbox.add([placed("o-1"), placed("o-2")], connection=conn)
    monkeypatch.setenv("EVENTBUS_KAFKA_BOOTSTRAP_SERVERS", kafka_broker.bootstrap_servers)
    monkeypatch.setenv("EVENTBUS_TEST_KAFKA_TOPIC", topic)
    monkeypatch.delitem(sys.modules, "tests.kafka.publish_apps", raising=False)

    result = CliRunner().invoke(
        main,
        ["-A", "tests.kafka.publish_apps:kafka_bus", "outbox", "relay",
         "--url", str(outbox.engine.url)],
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert "published 2" in result.output
    records = read_records(kafka_broker.bootstrap_servers, topic, 2)
    assert sorted(json.loads(r.value or b"")["event_id"] for r in records) == sorted(
        str(e.event_id) for e in written
    )
