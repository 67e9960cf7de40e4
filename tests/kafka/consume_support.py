"""What the consume tests share: topics on the test broker, records, a consumer in a thread.

Records of eventbus are written as the record codec writes them (value: the
envelope's JSON wire dict; the event type in a header); records of other
producers are plain JSON.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Protocol

import pytest

from eventbus import Envelope
from eventbus.kafka.consumer import KafkaConsumer
from eventbus.kafka.records import encode_record
from eventbus.kafka.settings import KafkaSettings
from tests.kafka.broker import CONSUMER_TIMING

confluent_kafka = pytest.importorskip("confluent_kafka")
admin_module = pytest.importorskip("confluent_kafka.admin")


class Cluster(Protocol):
    """A Kafka-protocol broker of the tests: Tansu in memory, or on S3 (``tests.kafka.faults``)."""

    @property
    def bootstrap_servers(self) -> str: ...


#: A record to produce: (key, value, headers).
Raw = tuple[bytes | None, bytes, list[tuple[str, bytes]] | None]


def create_topic(broker: Cluster, topic: str, partitions: int) -> None:
    admin = admin_module.AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    for future in admin.create_topics([admin_module.NewTopic(topic, partitions)]).values():
        future.result(timeout=10)


def delete_topics(broker: Cluster, *topics: str) -> None:
    admin = admin_module.AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    for future in admin.delete_topics(list(topics)).values():
        # Never created, or not deletable: the broker's memory storage goes anyway.
        with suppress(confluent_kafka.KafkaException):
            future.result(timeout=10)


def envelope_record(envelope: Envelope[Any]) -> Raw:
    """An eventbus record, as the record codec writes it (key = aggregate id)."""
    record = encode_record(envelope)
    return record.key, record.value, record.headers


def produce(broker: Cluster, topic: str, records: Sequence[Raw]) -> list[tuple[int, int]]:
    """Produce ``records`` in order (acks=all, idempotent); return their (partition, offset)."""
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    places: list[tuple[int, int] | None] = [None] * len(records)
    errors: list[str] = []

    def report(index: int) -> Any:
        def on_delivery(error: Any, message: Any) -> None:
            if error is not None:
                errors.append(str(error))
            else:
                places[index] = (message.partition(), message.offset())

        return on_delivery

    for index, (key, value, headers) in enumerate(records):
        while True:
            try:
                producer.produce(
                    topic, key=key, value=value, headers=headers, on_delivery=report(index)
                )
                break
            except BufferError:  # the local queue is full: let it drain
                producer.poll(0.1)
    assert producer.flush(30) == 0, "records not delivered within 30 s"
    assert not errors, errors
    return [place for place in places if place is not None]


def committed(broker: Cluster, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offset of each partition (-1001: none)."""
    reader = confluent_kafka.Consumer(
        {"bootstrap.servers": broker.bootstrap_servers, "group.id": group}
    )
    try:
        asked = [confluent_kafka.TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: tp.offset for tp in reader.committed(asked, timeout=10)}
    finally:
        reader.close()


#: The consume tests' consumers: half the session timeout of ``CONSUMER_TIMING``, so
#: that Tansu admits a member sooner (~1.8 s) and a killed one leaves sooner.
CONSUME_TIMING = {**CONSUMER_TIMING, "session.timeout.ms": 3000, "heartbeat.interval.ms": 300}


def kafka_settings(broker: Cluster, **consumer: Any) -> KafkaSettings:
    """The test consumers' settings (Tansu's join timing: :data:`CONSUME_TIMING`)."""
    return KafkaSettings(broker.bootstrap_servers, consumer={**CONSUME_TIMING, **consumer})


@contextmanager
def consuming(
    bus: Any,
    broker: Cluster,
    *,
    topics: Sequence[str],
    group: str,
    topic_types: Mapping[str, str] | None = None,
    **options: Any,
) -> Iterator[KafkaConsumer]:
    """A :class:`KafkaConsumer` running in a thread; stopped (gracefully) and joined at the end."""
    consumer = KafkaConsumer(
        bus,
        topics=topics,
        group_id=group,
        settings=kafka_settings(broker),
        topic_types=topic_types,
        **options,
    )
    stop = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            consumer.run(stop)
        except BaseException as exc:  # re-raised in the test's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="kafka-consumer", daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the consumer did not stop within 30 s"
    if failure:
        raise failure[0]


def read_topic(
    broker: Cluster, topic: str, timeout: float = 20
) -> dict[str, list[tuple[int, int]]]:
    """Every record of ``topic`` now, by event id (header): the places holding it."""
    reader = confluent_kafka.Consumer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "group.id": f"reader.{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **CONSUME_TIMING,
        }
    )
    found: dict[str, list[tuple[int, int]]] = {}
    ends: set[int] = set()
    try:
        reader.subscribe([topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = reader.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == confluent_kafka.KafkaError._PARTITION_EOF:
                    ends.add(message.partition())
                    assignment = {tp.partition for tp in reader.assignment()}
                    if assignment and assignment <= ends:
                        break
                continue
            ends.discard(message.partition())
            headers = dict(message.headers() or [])
            event_id = (headers.get("eventbus-event-id") or b"?").decode()
            found.setdefault(event_id, []).append((message.partition(), message.offset()))
    finally:
        reader.close()
    return found
