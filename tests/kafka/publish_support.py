"""Reading back what the publish tests produced: records of a topic, from the beginning.

A reader assigns itself every partition of the topic (no consumer group: a
group join on Tansu takes seconds, an assignment none) and polls with a
deadline until it has the records it expects.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.kafka.broker import unique_topic

__all__ = ["Read", "create_topic", "delete_topics", "read_records", "record_count"]


@dataclass(frozen=True)
class Read:
    """One record as a test sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def _confluent() -> Any:
    return pytest.importorskip("confluent_kafka")


@contextmanager
def _reader(bootstrap: str) -> Iterator[Any]:
    consumer = _confluent().Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_topic("reader"),  # never joined: partitions are assigned
            "enable.auto.commit": False,
        }
    )
    try:
        yield consumer
    finally:
        consumer.close()


def _partitions(consumer: Any, topic: str, deadline: float) -> list[int]:
    while True:
        topics = consumer.list_topics(topic, timeout=5).topics
        meta = topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions:
            return sorted(meta.partitions)
        if time.monotonic() > deadline:
            raise AssertionError(f"topic {topic!r} never appeared: {meta and meta.error}")
        time.sleep(0.05)  # polling the metadata, with a deadline


def read_records(bootstrap: str, topic: str, count: int, *, timeout: float = 15) -> list[Read]:
    """The first ``count`` records of ``topic`` (all partitions), in partition then offset order."""
    kafka = _confluent()
    deadline = time.monotonic() + timeout
    found: list[Read] = []
    with _reader(bootstrap) as consumer:
        partitions = _partitions(consumer, topic, deadline)
        consumer.assign(
            [kafka.TopicPartition(topic, p, kafka.OFFSET_BEGINNING) for p in partitions]
        )
        while len(found) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} of {count} records on {topic!r} in {timeout}s")
            message = consumer.poll(0.2)
            if message is None:
                continue
            assert message.error() is None, message.error()
            found.append(
                Read(
                    topic=message.topic(),
                    partition=message.partition(),
                    offset=message.offset(),
                    key=message.key(),
                    value=message.value(),
                    headers=dict(message.headers() or []),
                )
            )
    return sorted(found, key=lambda r: (r.partition, r.offset))


def record_count(bootstrap: str, topic: str) -> int:
    """How many records ``topic`` holds (the sum of its partitions' high watermarks)."""
    kafka = _confluent()
    with _reader(bootstrap) as consumer:
        partitions = _partitions(consumer, topic, time.monotonic() + 10)
        return sum(
            consumer.get_watermark_offsets(kafka.TopicPartition(topic, p), timeout=5)[1]
            for p in partitions
        )


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = pytest.importorskip("confluent_kafka.admin")
    client = admin.AdminClient({"bootstrap.servers": bootstrap})
    for future in client.create_topics([admin.NewTopic(topic, partitions)]).values():
        future.result(timeout=10)


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    """Remove the topics a test made (those that exist; errors are the broker's business)."""
    if not topics:
        return
    admin = pytest.importorskip("confluent_kafka.admin")
    client = admin.AdminClient({"bootstrap.servers": bootstrap})
    for future in client.delete_topics(topics, operation_timeout=10).values():
        with contextlib.suppress(Exception):  # a topic that never got created
            future.result(timeout=10)
