"""Kafka topics into Celery handlers: a consumer-group member that dispatches what it reads.

:class:`KafkaConsumer` reads the subscribed topics in batches and hands each
record to the bus exactly as ``bus.publish`` would (one Celery task message
per subscribed handler), so retries, backoff, the DLQ, idempotent and ordered
handlers behave as for any other event. What it promises:

Nothing lost
    Offsets are committed (``enable.auto.commit`` is off) only after the
    batch's handler messages were accepted by the Celery broker: every
    ``publish`` of the batch returned inside one :meth:`bus.batch()
    <eventbus.bus.base.BaseEventBus.batch>`, which on RabbitMQ waits for the
    broker's confirms and on Redis for its pipeline. A consumer killed at any
    moment re-reads, after its restart (or in the member that takes its
    partitions), everything past its last commit: at most the batches it had
    dispatched and not yet committed are dispatched twice (at-least-once;
    idempotent handlers run them once).

Never skip
    When the dispatch fails (the Celery broker refuses or does not confirm,
    the dead-letter queue cannot be written, the sequence counter's Redis is
    away), the batch counts as not dispatched: nothing past its first record
    is committed, its partitions are rewound to it (``seek``), and it is read
    and dispatched again after a backoff (0.5 s doubling to
    ``retry_backoff_max``), as long as it takes. The consumer keeps polling
    meanwhile, so it stays in its group.

Order
    One partition is dispatched in its order (a batch, in record order, and
    the next batch only after it), so the records of one key (one aggregate)
    reach the bus in order. Ordered handlers take that order from sequence
    numbers, which ``publish`` assigns in dispatch order when the envelope
    carries none; a batch dispatched again in this process keeps the numbers
    it got the first time (no gap for the ordered handler to wait out).

Bad records
    A record that cannot be decoded, names an unknown event type or version,
    or carries invalid data (:mod:`eventbus.kafka.consumer_decode`) becomes a
    dead letter, reason ``undecodable`` (``oversized`` over the bus's payload
    limit), with ``source`` = its topic, partition and offset, and the
    consumer goes on. Its id is derived from the record's place, so a record
    read twice is recorded once. It has no handler: it is not replayable;
    fix the producer (or register the type) and re-produce it.

Shutdown
    :meth:`KafkaConsumer.run` returns when its ``stop`` event is set (the CLI
    sets it on SIGTERM and SIGINT) after the batch in hand was dispatched,
    commits what was dispatched, and leaves the group.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eventbus.deadletter.record import DeadLetter
from eventbus.errors import ConfigurationError, EventError
from eventbus.kafka.consumer_decode import RecordError, dead_letter_of, decode_consumed
from eventbus.kafka.consumer_lag import LagReader
from eventbus.kafka.consumer_offsets import Offsets, TopicPartition
from eventbus.kafka.settings import confluent_kafka_module

if TYPE_CHECKING:
    from eventbus.bus.base import BaseEventBus
    from eventbus.domain.envelope import Envelope
    from eventbus.kafka.consumer_decode import Record
    from eventbus.kafka.consumer_metrics import ConsumerMetrics
    from eventbus.kafka.settings import KafkaSettings

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_POLL_TIMEOUT",
    "DEFAULT_RETRY_BACKOFF_MAX",
    "KafkaConsumer",
]

logger = logging.getLogger(__name__)
#: Where librdkafka's own log goes (the producer's too: :mod:`eventbus.kafka.producer`).
librdkafka_logger = logging.getLogger("eventbus.kafka.librdkafka")

DEFAULT_BATCH_SIZE = 500  #: records dispatched together (one bus.batch(), one commit)
DEFAULT_POLL_TIMEOUT = 1.0  #: seconds a poll waits for the first record of a batch
DEFAULT_RETRY_BACKOFF_MAX = 30.0  #: seconds, at most, between two dispatches of a failed batch
RETRY_BACKOFF_START = 0.5  #: seconds before the first dispatch again of a failed batch

#: librdkafka settings the consumer's promises rest on: a caller cannot override them.
FIXED_CONFIG = {"enable.auto.commit": False, "enable.auto.offset.store": False}


@dataclass
class _Batch:
    """One batch being dispatched: its envelopes in record order, its dead letters."""

    envelopes: list[tuple[Record, Envelope[Any]]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    first: dict[TopicPartition, int] = field(default_factory=dict)
    next: dict[TopicPartition, int] = field(default_factory=dict)

    def add_place(self, record: Record) -> TopicPartition:
        place = (str(record.topic()), int(record.partition() or 0))
        offset = int(record.offset() or 0)
        self.first.setdefault(place, offset)
        self.next[place] = offset + 1
        return place


class KafkaConsumer:
    """Reads ``topics`` as a member of ``group_id`` and dispatches each record on ``bus``.

    ``settings`` says where the cluster is and how to reach it; its
    ``consumer`` settings go to librdkafka as they are (``auto.offset.reset``
    defaults to ``earliest``: a new group starts at the oldest record, not
    past what already waits; ``enable.auto.commit`` is always off).
    ``topic_types`` maps topics of producers that are not eventbus to the
    event type of their records (:mod:`eventbus.kafka.consumer_decode`).
    ``metrics``: where lag and counts go (:class:`ConsumerMetrics`).
    :attr:`totals` counts ``dispatched`` and ``dead_lettered`` records and
    ``failed_batches``. See the module docstring for the guarantees.
    """

    def __init__(
        self,
        bus: BaseEventBus,
        *,
        topics: Sequence[str],
        group_id: str,
        settings: KafkaSettings,
        topic_types: Mapping[str, str] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        poll_timeout: float = DEFAULT_POLL_TIMEOUT,
        retry_backoff_max: float = DEFAULT_RETRY_BACKOFF_MAX,
        metrics: ConsumerMetrics | None = None,
    ) -> None:
        confluent_kafka = confluent_kafka_module()  # MissingDependency: what to install
        if not topics:
            raise ConfigurationError("the Kafka consumer needs at least one topic to read")
        if not group_id:
            raise ConfigurationError("the Kafka consumer needs a consumer group id")
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}")
        self._kafka = confluent_kafka
        self.bus = bus
        self.topics = list(topics)
        self.group_id = group_id
        self.topic_types = dict(topic_types or {})
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.retry_backoff_max = retry_backoff_max
        self.metrics = metrics
        self.totals: Counter[str] = Counter()
        self.worker = f"kafka-consumer@{socket.gethostname()}"
        self.offsets = Offsets()
        # Envelopes of a failed batch, by place, with the sequence publish gave
        # them: dispatched again as they were (no number burnt).
        self._sequenced: dict[tuple[str, int, int], Envelope[Any]] = {}
        self.settings = settings
        self._config = {
            "auto.offset.reset": "earliest",
            **settings.consumer_config(group_id),
            **FIXED_CONFIG,
            "on_commit": self._on_commit,
            # librdkafka's own log (a broker away...) to logging, not to stderr.
            "logger": librdkafka_logger,
        }
        self._client: Any = None
        self._backoff = 0.0
        self._lag = LagReader(metrics, self.offsets, confluent_kafka) if metrics else None

    # -- the loop ------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> Counter[str]:
        """Consume until ``stop`` is set; then commit what was dispatched and leave the group."""
        stop = stop or threading.Event()
        self.open()
        try:
            while not stop.is_set():
                self.step(stop)
        finally:
            self.close()
        return self.totals

    def open(self) -> None:
        """Join the group (the first poll completes the join)."""
        if self._client is not None:
            return
        self._client = self._kafka.Consumer(self._config)
        self._client.subscribe(self.topics, on_revoke=self._on_revoke, on_lost=self._on_lost)

    def close(self) -> None:
        """Commit what was dispatched (synchronously), then leave the group."""
        client, self._client = self._client, None
        if client is None:
            return
        try:
            self._commit(client, synchronous=True)
        finally:
            client.close()

    def step(self, stop: threading.Event | None = None) -> int:
        """Read one batch and dispatch it; return how many records it held."""
        # No local holds the client: a failed dispatch's error may sit in a
        # reference cycle (redis-py's do) with its traceback's frames and their
        # callers', this one included; the client would then outlive close()
        # until the cyclic GC, which in a forked child hangs in librdkafka.
        assert self._client is not None, "open() first"
        records = self._read(self._client)
        if records:
            batch = self._decode(records)
            if self._dispatch(batch):
                self._done(self._client, batch)
            else:
                self._rewind(self._client, batch, stop)
        else:
            self._commit(self._client, synchronous=False)  # (a commit that failed, again)
        if self._lag is not None:
            self._lag.read_all(self._client)
        return len(records)

    def _read(self, client: Any) -> list[Record]:
        # The first record as soon as it comes, then what is already fetched:
        # low latency when records trickle, full batches when they flood.
        first = client.poll(self.poll_timeout)
        if first is None:
            return []
        polled = [first]
        if self.batch_size > 1:
            polled += client.consume(self.batch_size - 1, 0)
        records = []
        for record in polled:
            error = record.error()
            if error is None:
                records.append(record)
            elif error.fatal():
                raise self._kafka.KafkaException(error)
            else:  # informational (partition end, a broker away for a while)
                logger.warning("kafka consumer %s: %s", self.group_id, error)
        return records

    def _decode(self, records: Iterable[Record]) -> _Batch:
        batch = _Batch()
        registry = self.bus.event_registry
        for record in records:
            place = batch.add_place(record)
            key = (*place, int(record.offset() or 0))
            envelope = self._sequenced.get(key)
            if envelope is None:
                try:
                    envelope = decode_consumed(record, registry, self.topic_types)
                except RecordError as exc:
                    batch.dead_letters.append(self._dead_letter(record, exc.kind, str(exc)))
                    continue
            batch.envelopes.append((record, envelope))
        return batch

    def _dispatch(self, batch: _Batch) -> bool:
        """Dead letters written, envelopes published (and confirmed); False when not all were."""
        store = self.bus.dead_letter_store
        refused: list[DeadLetter] = []
        try:
            for letter in batch.dead_letters:
                store.append(letter, again=True)
            with self.bus.batch():
                for record, envelope in batch.envelopes:
                    try:
                        sent = self.bus.publish(envelope)
                    except EventError as exc:
                        # Refused by the bus before anything was sent (over
                        # the size limit): this record only.
                        refused.append(self._dead_letter(record, type(exc), str(exc)))
                        continue
                    self._sequenced[_key(record)] = sent
            for letter in refused:
                store.append(letter, again=True)
        except Exception as exc:
            # The Celery broker, the DLQ or the sequence counter: none of the
            # batch counts as dispatched (some messages may have gone out).
            self.totals["failed_batches"] += 1
            if self.metrics is not None:
                self.metrics.failed()
            logger.warning(
                "kafka consumer %s: dispatch of %d record(s) failed, reading them again "
                "(nothing committed past %s): %s: %s",
                self.group_id,
                len(batch.envelopes) + len(batch.dead_letters),
                _places(batch.first),
                type(exc).__name__,
                exc,
                exc_info=not _expected(exc),
            )
            return False
        for record, _ in batch.envelopes:
            self._sequenced.pop(_key(record), None)
        dead = len(batch.dead_letters) + len(refused)
        self.totals["dispatched"] += len(batch.envelopes) - len(refused)
        self.totals["dead_lettered"] += dead
        if self.metrics is not None:
            self._count(batch, refused)
        return True

    def _done(self, client: Any, batch: _Batch) -> None:
        self._backoff = 0.0
        for place, offset in batch.next.items():
            self.offsets.dispatched(place, offset)
        self._commit(client, synchronous=False)
        if self._lag is not None:
            self._lag.report(client, batch.next)

    def _rewind(self, client: Any, batch: _Batch, stop: threading.Event | None) -> None:
        """Read the batch again from its first record in each partition, after a backoff."""
        assigned = {(tp.topic, tp.partition) for tp in client.assignment()}
        for (topic, partition), offset in batch.first.items():
            if (topic, partition) in assigned:  # (a partition revoked meanwhile is another's)
                # A seek that fails raises out of run(): reading on would skip the
                # batch. close() commits only what was dispatched; a restart
                # resumes from there.
                client.seek(self._kafka.TopicPartition(topic, partition, offset))
        self._backoff = min(max(self._backoff * 2, RETRY_BACKOFF_START), self.retry_backoff_max)
        (stop or threading.Event()).wait(self._backoff)

    # -- offsets -------------------------------------------------------------------

    def _commit(self, client: Any, *, synchronous: bool) -> None:
        pending = self.offsets.uncommitted() if synchronous else self.offsets.to_commit()
        if not pending:
            return
        offsets = [self._kafka.TopicPartition(t, p, o) for (t, p), o in pending.items()]
        try:
            done = client.commit(offsets=offsets, asynchronous=not synchronous)
        except self._kafka.KafkaException as exc:
            # Not committed: a later commit (or the member after this one,
            # which dispatches these records again) covers them.
            logger.warning("kafka consumer %s: commit failed: %s", self.group_id, exc)
            return
        if synchronous and done:
            self._on_commit(None, done)

    def _on_commit(self, error: Any, partitions: Sequence[Any]) -> None:
        failed = []
        for tp in partitions:
            if error is None and tp.error is None and tp.offset >= 0:
                self.offsets.committed((tp.topic, tp.partition), tp.offset)
            else:
                failed.append((tp.topic, tp.partition))
        if failed:
            # Asked again at the next step (what is dispatched stays dispatched).
            self.offsets.commit_failed(failed)
            logger.warning(
                "kafka consumer %s: commit of %s failed: %s",
                self.group_id,
                ", ".join(f"{t}/{p}" for t, p in failed),
                error or next((tp.error for tp in partitions if tp.error), None),
            )

    def _on_revoke(self, client: Any, partitions: Sequence[Any]) -> None:
        # Called inside poll, between batches: what was dispatched is committed
        # now, while this member still owns the partitions.
        self._commit(client, synchronous=True)
        self._forget(partitions)

    def _on_lost(self, client: Any, partitions: Sequence[Any]) -> None:
        # No longer ours: a commit would be refused; the next owner re-reads.
        self._forget(partitions)

    def _forget(self, partitions: Sequence[Any]) -> None:
        places = [(tp.topic, tp.partition) for tp in partitions]
        self.offsets.forget(places)
        gone = set(places)
        self._sequenced = {k: v for k, v in self._sequenced.items() if k[:2] not in gone}
        if self.metrics is not None:
            for topic, partition in places:
                self.metrics.forget(topic, partition)

    # -- dead letters --------------------------------------------------------------

    def _dead_letter(self, record: Record, kind: type[BaseException], why: str) -> DeadLetter:
        logger.error(
            "kafka consumer %s: record %s/%s@%s is a dead letter: %s",
            self.group_id,
            record.topic(),
            record.partition(),
            record.offset(),
            why,
        )
        return dead_letter_of(record, kind, why, worker=self.worker)

    def _count(self, batch: _Batch, refused: list[DeadLetter]) -> None:
        assert self.metrics is not None
        counts: Counter[tuple[str, str]] = Counter()
        for record, _ in batch.envelopes:
            counts[(str(record.topic()), "dispatched")] += 1
        for letter in batch.dead_letters:
            counts[(_topic_of(letter), "dead_lettered")] += 1
        for letter in refused:  # (counted as dispatched above)
            counts[(_topic_of(letter), "dispatched")] -= 1
            counts[(_topic_of(letter), "dead_lettered")] += 1
        for (topic, outcome), n in counts.items():
            if n:
                self.metrics.count(topic, outcome, n)


def _topic_of(letter: DeadLetter) -> str:
    return str((letter.source or {}).get("kafka_topic"))


def _key(record: Record) -> tuple[str, int, int]:
    return (str(record.topic()), int(record.partition() or 0), int(record.offset() or 0))


def _places(first: Mapping[TopicPartition, int]) -> str:
    return ", ".join(f"{t}/{p}@{o}" for (t, p), o in sorted(first.items()))


def _expected(exc: BaseException) -> bool:
    """A broker or store away: no traceback in the log, just the line."""
    from eventbus.errors import DeadLetterError, PublishError, StateStoreError

    return isinstance(exc, (PublishError, DeadLetterError, StateStoreError))
