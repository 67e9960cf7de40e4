"""Publishing to Kafka: each event is a record on its topic, acknowledged before publish returns.

Against the run's real Kafka-protocol broker (Tansu); every record is read
back with confluent-kafka's own consumer.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from eventbus import (
    ConfigurationError,
    Event,
    EventRegistry,
    EventValidationError,
    MissingDependency,
    PayloadTooLarge,
    PublishError,
    SubscriptionError,
    UnknownEventType,
    create_event,
)
from eventbus.kafka import (
    HEADER_CORRELATION_ID,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_EVENT_VERSION,
    KafkaEventBus,
    KafkaSettings,
    TopicNaming,
    decode_record,
)
from tests.brokers import free_port
from tests.kafka.broker import TansuBroker, unique_topic
from tests.kafka.publish_support import create_topic, delete_topics, read_records, record_count

pytestmark = pytest.mark.kafka

pytest.importorskip("confluent_kafka")

REGISTRY = EventRegistry()


class OrderPlaced(Event, registry=REGISTRY):
    event_type = "kafka_test.order_placed"

    total: int


class OrderShipped(Event, registry=REGISTRY):
    event_type = "kafka_test.order_shipped"

    carrier: str


@pytest.fixture
def topics_made(kafka_broker: TansuBroker) -> Iterator[list[str]]:
    """Topics this test makes: deleted after it."""
    made: list[str] = []
    yield made
    delete_topics(kafka_broker.bootstrap_servers, made)


@pytest.fixture
def prefix(topics_made: list[str]) -> str:
    """A topic prefix of the test's own (the event-type topics it names are deleted after it)."""
    value = unique_topic("t") + "."
    topics_made.extend(value + t for t in (OrderPlaced.event_type, OrderShipped.event_type))
    return value


def make_bus(
    broker: TansuBroker, topics: TopicNaming | None = None, **settings: Any
) -> KafkaEventBus:
    return KafkaEventBus(
        KafkaSettings(broker.bootstrap_servers, **settings),
        topics=topics,
        event_registry=REGISTRY,
    )


@pytest.fixture
def bus(kafka_broker: TansuBroker, prefix: str) -> Iterator[KafkaEventBus]:
    made = make_bus(kafka_broker, TopicNaming.per_event_type(prefix))
    yield made
    made.close()


def test_a_published_event_is_a_record_keyed_by_its_aggregate_with_the_envelope_and_headers(
    bus: KafkaEventBus, kafka_broker: TansuBroker, prefix: str
) -> None:
    envelope = bus.publish(OrderPlaced(total=42), aggregate_id="o-1", aggregate_type="Order")

    [record] = read_records(kafka_broker.bootstrap_servers, prefix + OrderPlaced.event_type, 1)
    assert record.key == b"o-1"
    assert json.loads(record.value or b"") == envelope.to_wire()
    assert record.headers == {
        HEADER_EVENT_TYPE: b"kafka_test.order_placed",
        HEADER_EVENT_VERSION: b"1",
        HEADER_EVENT_ID: str(envelope.event_id).encode(),
        HEADER_CORRELATION_ID: str(envelope.correlation_id).encode(),
    }
    assert decode_record(record.value, record.headers, event_registry=REGISTRY) == envelope
    assert bus.published[OrderPlaced.event_type] == 1


def test_topics_per_aggregate_type_or_fixed_and_no_key_without_aggregate(
    kafka_broker: TansuBroker, topics_made: list[str]
) -> None:
    name = unique_topic("t")
    topics_made.extend([f"{name}.Order", f"{name}.misc", f"{name}.all"])
    per_aggregate = make_bus(kafka_broker, TopicNaming.per_aggregate_type(f"{name}."))
    per_aggregate.publish(OrderPlaced(total=1), aggregate_id=3, aggregate_type="Order")
    per_aggregate.publish(OrderShipped(carrier="ups"), aggregate_id=3, aggregate_type="Order")
    # From Celery (or Django CELERY_) settings:
    app = Celery("kafka-conf", set_as_current=False)
    app.conf.update(
        eventbus_kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
        eventbus_kafka_topics=f"topic:{name}.all",
    )
    fixed = KafkaEventBus.from_config(app.conf, event_registry=REGISTRY)
    fixed.publish(OrderShipped(carrier="dhl"))

    order = read_records(kafka_broker.bootstrap_servers, f"{name}.Order", 2)
    assert [json.loads(r.value or b"")["event_type"] for r in order] == [
        OrderPlaced.event_type,
        OrderShipped.event_type,
    ]
    assert {r.key for r in order} == {b"3"}
    [anything] = read_records(kafka_broker.bootstrap_servers, f"{name}.all", 1)
    assert anything.key is None
    assert json.loads(anything.value or b"")["data"] == {"carrier": "dhl"}


def test_one_aggregates_events_stay_in_order_in_one_partition(
    bus: KafkaEventBus, kafka_broker: TansuBroker, prefix: str
) -> None:
    topic = prefix + OrderPlaced.event_type
    create_topic(kafka_broker.bootstrap_servers, topic, 3)
    for n in range(30):
        bus.publish(OrderPlaced(total=n), aggregate_id=f"agg-{n % 3}")

    records = read_records(kafka_broker.bootstrap_servers, topic, 30)
    by_key: dict[bytes | None, list[Any]] = {}
    for record in records:  # (in partition, then offset order)
        by_key.setdefault(record.key, []).append(record)
    assert len(by_key) == 3
    for key, mine in by_key.items():
        assert len({r.partition for r in mine}) == 1, key
        totals = [json.loads(r.value or b"")["data"]["total"] for r in mine]
        assert totals == sorted(totals) and len(totals) == 10, (key, totals)


def test_a_batch_waits_once_and_every_record_is_acknowledged_at_its_end(
    bus: KafkaEventBus, kafka_broker: TansuBroker, prefix: str
) -> None:
    with bus.batch():
        envelopes = [bus.publish(OrderPlaced(total=n), aggregate_id=n % 7) for n in range(300)]
        with bus.batch():  # a nested block joins the outer one
            envelopes.append(bus.publish(OrderShipped(carrier="ups")))
    assert len(bus.producer.client()) == 0  # nothing queued or in flight: all acknowledged

    placed = read_records(kafka_broker.bootstrap_servers, prefix + OrderPlaced.event_type, 300)
    shipped = read_records(kafka_broker.bootstrap_servers, prefix + OrderShipped.event_type, 1)
    assert {json.loads(r.value or b"")["event_id"] for r in [*placed, *shipped]} == {
        str(e.event_id) for e in envelopes
    }


def test_invalid_input_raises_before_anything_is_produced(
    bus: KafkaEventBus, kafka_broker: TansuBroker, prefix: str
) -> None:
    unknown = create_event(OrderPlaced, {"total": 1}, event_registry=REGISTRY).model_copy(
        update={"event_type": "kafka_test.nobody"}
    )
    with pytest.raises(UnknownEventType):
        bus.publish(unknown)
    with pytest.raises(EventValidationError, match="aggregate_id"):
        bus.publish(OrderPlaced(total=1), aggregate_id="x" * 300)
    with pytest.raises(EventValidationError, match="metadata: not JSON"):
        bus.publish(OrderPlaced(total=1), metadata={"when": object()})
    small = KafkaEventBus(producer=bus.producer, topics=bus.topics, event_registry=REGISTRY,
                          max_payload_bytes=200)  # fmt: skip
    with pytest.raises(PayloadTooLarge):
        small.publish(OrderPlaced(total=1), metadata={"note": "x" * 300})
    with pytest.raises(TypeError, match="takes an Event or an Envelope"):
        bus.publish({"total": 1})  # type: ignore[arg-type]
    with pytest.raises(EventValidationError, match="aggregate_type: cannot name a Kafka topic"):
        per_aggregate = TopicNaming.per_aggregate_type(prefix)
        KafkaEventBus(producer=bus.producer, topics=per_aggregate, event_registry=REGISTRY).publish(
            OrderPlaced(total=1), aggregate_type="A B"
        )

    good = bus.publish(OrderPlaced(total=2))

    topic = prefix + OrderPlaced.event_type
    [record] = read_records(kafka_broker.bootstrap_servers, topic, 1)
    assert json.loads(record.value or b"")["event_id"] == str(good.event_id)
    assert record_count(kafka_broker.bootstrap_servers, topic) == 1


def test_a_broker_that_is_down_is_a_publish_error_within_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = KafkaEventBus(
        KafkaSettings(
            f"127.0.0.1:{free_port()}",  # nothing listens there
            security={
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN",
                "sasl.username": "orders",
                "sasl.password": "s3cret-never-shown",
            },
            delivery_timeout=1.0,
        ),
        event_registry=REGISTRY,
    )
    caplog.set_level(logging.DEBUG)

    started = time.monotonic()
    with pytest.raises(PublishError) as single:
        down.publish(OrderPlaced(total=1), aggregate_id="o-1")
    assert down.published[OrderPlaced.event_type] == 0  # not counted as published
    with pytest.raises(PublishError) as batch, down.batch():
        for n in range(5):
            down.publish(OrderPlaced(total=n))
    elapsed = time.monotonic() - started

    assert elapsed < 2 * (1.0 + 2.0), elapsed  # two waits, each within timeout + grace
    assert "kafka_test.order_placed" in str(single.value)
    assert "topic 'kafka_test.order_placed'" in str(single.value)
    assert "_MSG_TIMED_OUT" in str(single.value)
    assert "0 of 1 acknowledged" in str(single.value)
    assert "a batch of 5 record(s) was not all acknowledged" in str(batch.value)
    assert "0 of 5 acknowledged" in str(batch.value)
    assert down.published[OrderPlaced.event_type] == 0  # nor the failed batch's events
    shown = [str(single.value), str(batch.value), repr(down), caplog.text]
    assert not any("s3cret-never-shown" in text for text in shown)
    down.close(0)


def test_subscribing_on_the_kafka_bus_says_where_handlers_go(bus: KafkaEventBus) -> None:
    with pytest.raises(SubscriptionError, match="subscribe it on the Celery EventBus"):
        bus.subscribe(OrderPlaced, handler=lambda envelope: None, name="tests.kafka.nope")
    with pytest.raises(ConfigurationError, match="no dead letters"):
        bus.dead_letters.list()


def test_wrong_construction_is_a_configuration_error(kafka_broker: TansuBroker) -> None:
    settings = KafkaSettings(kafka_broker.bootstrap_servers)
    with pytest.raises(ConfigurationError, match="needs KafkaSettings"):
        KafkaEventBus()
    with pytest.raises(ConfigurationError, match="topics must be a TopicNaming"):
        KafkaEventBus(settings, topics="event_type")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="No such configuration property"):
        KafkaEventBus(
            KafkaSettings(kafka_broker.bootstrap_servers, producer={"no.such.thing": 1}),
            event_registry=REGISTRY,
        ).publish(OrderPlaced(total=1))


def test_without_confluent_kafka_the_bus_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    with pytest.raises(MissingDependency, match=r'pip install "eventbus\[kafka\]"'):
        KafkaEventBus(KafkaSettings("127.0.0.1:9092"))


def test_threads_share_the_producer_and_each_publish_returns_acknowledged(
    bus: KafkaEventBus, kafka_broker: TansuBroker, prefix: str
) -> None:
    published: list[str] = []
    errors: list[BaseException] = []

    def publish_some(worker: int) -> None:
        try:
            for n in range(25):
                envelope = bus.publish(OrderPlaced(total=n), aggregate_id=f"w{worker}")
                published.append(str(envelope.event_id))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=publish_some, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    records = read_records(kafka_broker.bootstrap_servers, prefix + OrderPlaced.event_type, 100)
    assert sorted(json.loads(r.value or b"")["event_id"] for r in records) == sorted(published)


def test_a_forked_child_publishes_with_a_producer_of_its_own(
    bus: KafkaEventBus, kafka_broker: TansuBroker, prefix: str
) -> None:
    # As a pre-forking web server or Celery's prefork pool: the parent's
    # producer exists before the fork and does not survive it.
    parent = bus.publish(OrderPlaced(total=1))
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_publish_in_child, args=(bus,))
    child.start()
    child.join(30)

    assert child.exitcode == 0
    records = read_records(kafka_broker.bootstrap_servers, prefix + OrderPlaced.event_type, 2)
    totals = sorted(json.loads(r.value or b"")["data"]["total"] for r in records)
    assert totals == [1, 2]
    assert str(parent.event_id) in {json.loads(r.value or b"")["event_id"] for r in records}


def _publish_in_child(bus: KafkaEventBus) -> None:
    bus.publish(OrderPlaced(total=2))
