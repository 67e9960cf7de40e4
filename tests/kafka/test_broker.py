"""The test broker speaks Kafka: a record produced with confluent-kafka is consumed back."""

from __future__ import annotations

import pytest

from tests.kafka.broker import CONSUMER_TIMING, TansuBroker, unique_topic

pytestmark = pytest.mark.kafka


def test_a_produced_record_is_consumed_back(kafka_broker: TansuBroker) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    admin_module = pytest.importorskip("confluent_kafka.admin")
    topic = unique_topic()
    admin = admin_module.AdminClient({"bootstrap.servers": kafka_broker.bootstrap_servers})
    for future in admin.create_topics([admin_module.NewTopic(topic, 3)]).values():
        future.result(timeout=10)
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": kafka_broker.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
        }
    )
    producer.produce(topic, key=b"k", value=b"v")
    assert producer.flush(10) == 0
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap_servers,
            "group.id": unique_topic("group"),
            "auto.offset.reset": "earliest",
            **CONSUMER_TIMING,
        }
    )
    try:
        consumer.subscribe([topic])
        record = None
        for _ in range(150):  # a deadline of 30 s; the join takes ~3.6 s
            record = consumer.poll(0.2)
            if record is not None and not record.error():
                break
        assert record is not None and record.value() == b"v", record and record.error()
    finally:
        consumer.close()
