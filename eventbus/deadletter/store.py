"""Where dead letters are kept: the storage interface and its broker-backed base.

A store appends records, iterates them *without consuming* (oldest first),
removes chosen ones, counts and purges. :class:`BrokerDeadLetterStore` keeps
them on the Celery broker as ordinary durable JSON messages in one queue
(default ``eventbus.dlq``); one subclass per transport knows how to browse it.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

from kombu.entity import Exchange, Queue

from eventbus.deadletter.record import MAX_RAW_BODY, DeadLetter
from eventbus.errors import DeadLetterError

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["BrokerDeadLetterStore", "DeadLetterStore", "decode_record", "store_for_app"]

DEFAULT_DEAD_LETTER_QUEUE = "eventbus.dlq"  #: the dead-letter queue's default name


class DeadLetterStore(ABC):
    """Storage of dead-letter records. Iteration never consumes."""

    @abstractmethod
    def append(self, record: DeadLetter) -> None: ...

    @abstractmethod
    def __iter__(self) -> Iterator[DeadLetter]:
        """Every record, oldest first, without removing any."""

    @abstractmethod
    def remove(self, record_ids: Collection[str]) -> int:
        """Remove these records; return how many were found and removed."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def purge(self) -> int:
        """Remove every record; return how many there were."""


class BrokerDeadLetterStore(DeadLetterStore):
    """Records as durable JSON messages in one broker queue."""

    def __init__(self, app: Celery, queue_name: str = DEFAULT_DEAD_LETTER_QUEUE) -> None:
        self.app = app
        self.queue_name = queue_name
        self.exchange = Exchange(queue_name, type="direct", durable=True)
        self.queue = Queue(
            queue_name, self.exchange, routing_key=queue_name, durable=True, auto_delete=False
        )

    def append(self, record: DeadLetter) -> None:
        try:
            with self.app.producer_or_acquire() as producer:
                producer.publish(
                    record.model_dump(mode="json"),
                    exchange=self.exchange,
                    routing_key=self.queue_name,
                    declare=[self.queue],
                    serializer="json",
                    delivery_mode=2,
                    headers={"eventbus-dead-letter": record.id},
                    retry=True,
                    retry_policy=self.app.conf.task_publish_retry_policy,
                )
        except Exception as exc:
            raise DeadLetterError(
                f"could not write dead letter {record.id} to {self.queue_name!r}: {exc}"
            ) from exc

    def count(self) -> int:
        with self.app.connection_for_write() as conn:
            try:
                _, count, _ = self.queue.bind(conn.default_channel).queue_declare(passive=True)
            except conn.channel_errors:
                return 0  # the queue does not exist yet: nothing failed
            return int(count)

    def purge(self) -> int:
        with self.app.connection_for_write() as conn:
            bound = self.queue.bind(conn.default_channel)
            bound.declare()
            return int(bound.purge() or 0)


def decode_record(body: bytes | str | Any) -> DeadLetter:
    """Turn a DLQ message body into a record; garbage becomes an undecodable record."""
    try:
        data = json.loads(body) if isinstance(body, (bytes, str)) else body
        return DeadLetter.model_validate(data)
    except Exception as exc:  # a hand-pushed message must not break listing
        raw = body if isinstance(body, str) else bytes(body or b"").decode("utf-8", "replace")
        return DeadLetter(
            id="raw-" + hashlib.sha1(raw.encode("utf-8", "replace")).hexdigest()[:16],
            handler=None,
            reason="undecodable",
            attempts=0,
            exception_type=type(exc).__name__,
            exception_message=f"not a dead-letter record: {exc}"[:500],
            raw_body=raw[:MAX_RAW_BODY],
            raw_size=len(raw),
        )


def store_for_app(app: Celery, queue_name: str = DEFAULT_DEAD_LETTER_QUEUE) -> DeadLetterStore:
    """The store that fits the app's broker transport (Redis, RabbitMQ or memory)."""
    with app.connection_for_write() as conn:
        driver = conn.transport.driver_type
    if driver == "redis":
        from eventbus.deadletter.redis import RedisDeadLetterStore

        return RedisDeadLetterStore(app, queue_name)
    if driver == "amqp":
        from eventbus.deadletter.amqp import AmqpDeadLetterStore

        return AmqpDeadLetterStore(app, queue_name)
    if driver == "memory":
        from eventbus.deadletter.kombu_memory import KombuMemoryDeadLetterStore

        return KombuMemoryDeadLetterStore(app, queue_name)
    raise DeadLetterError(
        f"the dead-letter queue supports the redis, amqp and memory transports, not {driver!r}"
    )
