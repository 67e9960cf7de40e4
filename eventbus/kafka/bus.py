"""The Kafka bus: ``publish`` writes each event to a Kafka topic, for other services.

:class:`KafkaEventBus` is a bus like the others up to the point of sending: the
same validation (invalid data raises before anything is sent), the same
envelope, the same ``batch()``, and the outbox relay and the CLI's publish take
it. What it sends is one record per event (:mod:`eventbus.kafka.records`): on
the topic its :class:`~eventbus.kafka.TopicNaming` names (default: one per
event type), keyed by the aggregate id, the JSON envelope as the value, the
event's type, version, id and correlation id as headers.

``publish`` returns once the broker acknowledged the record (``acks=all``,
idempotent producer) or raises :class:`~eventbus.errors.PublishError` within
``delivery_timeout`` (:class:`~eventbus.kafka.KafkaSettings`). In a
``batch()`` every ``publish`` only produces, and the block waits once for all.

It has no handlers of its own: subscribing on it is an error. Handlers stay
Celery tasks on an :class:`~eventbus.EventBus`; ``eventbus kafka consume``
feeds them from the topics (the consume direction). Publishing to the topic
and consuming it back is how a service's own handlers and other services see
the same events, in the same order, with one write: no dual write to Kafka
and to Celery that could half-fail.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from eventbus.bus.base import DEFAULT_MAX_PAYLOAD_BYTES, BaseEventBus, Subscription
from eventbus.errors import ConfigurationError, PayloadTooLarge, PublishError, SubscriptionError
from eventbus.kafka.producer import Deliveries, KafkaProducer
from eventbus.kafka.records import encode_record
from eventbus.kafka.settings import KafkaSettings
from eventbus.kafka.topics import TopicNaming

if TYPE_CHECKING:
    from eventbus.deadletter.store import DeadLetterStore
    from eventbus.domain.envelope import Envelope
    from eventbus.domain.events import EventRegistry
    from eventbus.guarantees.state import State

__all__ = ["KafkaEventBus"]


class KafkaEventBus(BaseEventBus):
    """Publishes events to Kafka topics (see the module docstring).

    ``settings``: the cluster (:class:`~eventbus.kafka.KafkaSettings`).
    ``topics``: the topic naming (default: one topic per event type).
    ``max_payload_bytes``: the largest envelope published (default 256 KiB, as
    every bus; keep it under the topic's ``max.message.bytes``).
    ``state`` and ``assign_sequences``: give every aggregate's events
    sequence numbers at publish (from the state's sequencer, e.g. Redis);
    off by default, as the record key already keeps one aggregate's events
    in order in its partition. ``producer`` shares a :class:`KafkaProducer`
    between buses (default: one of its own).

    Build it from Celery (or Django ``CELERY_``) settings with :meth:`from_config`.
    """

    def __init__(
        self,
        settings: KafkaSettings | None = None,
        *,
        topics: TopicNaming | None = None,
        event_registry: EventRegistry | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        state: State | None = None,
        assign_sequences: bool = False,
        producer: KafkaProducer | None = None,
    ) -> None:
        super().__init__(event_registry=event_registry)
        if producer is None:
            if settings is None:
                raise ConfigurationError(
                    "KafkaEventBus needs KafkaSettings (or a KafkaProducer): "
                    "KafkaEventBus(KafkaSettings(bootstrap_servers='host:9092'))"
                )
            producer = KafkaProducer(settings)
        elif settings is not None and settings != producer.settings:
            raise ConfigurationError("KafkaEventBus: pass settings or a producer, not both")
        if topics is not None and not isinstance(topics, TopicNaming):
            raise ConfigurationError(
                f"topics must be a TopicNaming, got {type(topics).__name__}: e.g. "
                "TopicNaming.per_aggregate_type() or TopicNaming.fixed('events')"
            )
        if (
            isinstance(max_payload_bytes, bool)
            or not isinstance(max_payload_bytes, int)
            or max_payload_bytes < 0
        ):
            raise ConfigurationError(
                f"max_payload_bytes must be an int >= 0, got {max_payload_bytes!r}"
            )
        if assign_sequences and state is None:
            raise ConfigurationError(
                "assign_sequences needs a state store (state=...) to number aggregates' events"
            )
        self.producer = producer
        self.topics = topics or TopicNaming()
        self._max_payload_bytes = max_payload_bytes
        self._state = state
        self._assign_sequences = bool(assign_sequences)
        self._batches = threading.local()

    @classmethod
    def from_config(
        cls, conf: Mapping[str, Any], *, event_registry: EventRegistry | None = None
    ) -> KafkaEventBus:
        """A bus from a Celery app's ``conf`` (or any mapping of lowercase settings).

        Reads ``eventbus_kafka_*`` (:meth:`KafkaSettings.from_mapping
        <eventbus.kafka.KafkaSettings.from_mapping>`), ``eventbus_kafka_topics``
        (``event_type``, ``aggregate_type`` or ``topic:NAME``),
        ``eventbus_kafka_topic_prefix`` and ``eventbus_max_payload_bytes``.
        """
        naming = conf.get("eventbus_kafka_topics") or "event_type"
        prefix = conf.get("eventbus_kafka_topic_prefix") or ""
        limit = conf.get("eventbus_max_payload_bytes")
        return cls(
            KafkaSettings.from_mapping(conf),
            topics=TopicNaming.parse(str(naming), prefix=str(prefix)),
            event_registry=event_registry,
            max_payload_bytes=DEFAULT_MAX_PAYLOAD_BYTES if limit is None else int(limit),
        )

    def __repr__(self) -> str:
        return f"KafkaEventBus({self.producer.settings.describe()}, topics={self.topics!r})"

    def close(self, timeout: float | None = None) -> None:
        """Wait for records still in flight (after a failed batch), then drop the producer."""
        self.producer.close(timeout)

    # -- what the base bus asks for -------------------------------------------

    @property
    def max_payload_bytes(self) -> int:
        return self._max_payload_bytes

    @property
    def assign_sequences(self) -> bool:
        return self._assign_sequences

    @property
    def state(self) -> State:
        if self._state is None:
            raise ConfigurationError(
                "this KafkaEventBus has no state store: pass state=... to number events"
            )
        return self._state

    @property
    def dead_letter_store(self) -> DeadLetterStore:
        raise ConfigurationError(
            "a KafkaEventBus runs no handlers and has no dead letters: they are on the "
            "Celery EventBus whose handlers consume the topics (eventbus kafka consume)"
        )

    @property
    def dead_letter_queue(self) -> str:
        return "none (a KafkaEventBus runs no handlers)"

    def _attach(self, subscription: Subscription) -> None:
        raise SubscriptionError(
            f"cannot subscribe {subscription.name} on a KafkaEventBus: it publishes to Kafka "
            "and runs no handlers; subscribe it on the Celery EventBus, which "
            "`eventbus kafka consume` feeds from the topics"
        )

    def _dispatch(self, envelope: Envelope[Any], subscriptions: Sequence[Subscription]) -> None:
        raise AssertionError("a KafkaEventBus has no subscriptions")  # (_attach refuses them)

    # -- publishing ------------------------------------------------------------

    def destination(self, envelope: Envelope[Any]) -> str:
        return f"Kafka topic {self.topics.topic_for(envelope)}"

    def _emit(self, envelope: Envelope[Any], subscriptions: Sequence[Subscription]) -> None:
        # Everything that can refuse the event (size, topic name, metadata that
        # is not JSON) runs before anything is produced. The size is the
        # record's value itself (the JSON made once).
        record = encode_record(envelope, self.topics)
        limit = self._max_payload_bytes
        if limit and len(record.value) > limit:
            raise PayloadTooLarge(envelope.event_type, len(record.value), limit)
        batch: _Batch | None = getattr(self._batches, "open", None)
        if batch is None:
            self.producer.send((record,))
            return
        if batch.failure is not None:
            raise PublishError(
                f"not publishing {envelope.event_type} {envelope.event_id}: "
                f"this batch already failed ({batch.failure})"
            )
        try:
            self.producer.produce(record, batch.deliveries)
        except PublishError as exc:
            batch.failure = exc
            raise

    @contextmanager
    def batch(self) -> Iterator[None]:
        # (Documented on BaseEventBus.batch.) Each publish in the block produces
        # its record without waiting; the block waits once, at its end, for
        # every acknowledgement. An exception in the block does not wait: the
        # records produced before it still go out (librdkafka sends them).
        if getattr(self._batches, "open", None) is not None:
            yield
            return
        state = _Batch()
        self._batches.open = state
        try:
            yield
        finally:
            self._batches.open = None
        if state.failure is not None:
            raise PublishError(
                f"a batch of {state.deliveries.produced} record(s) was not all produced: "
                f"{state.failure}; publish them again (some may have been written)"
            ) from state.failure
        try:
            self.producer.wait(state.deliveries)
        except PublishError as exc:
            raise PublishError(
                f"a batch of {state.deliveries.produced} record(s) was not all acknowledged: "
                f"{exc}; publish them again (some may have been written)"
            ) from None
        # All acknowledged: now they count as published (none of a block that raised).
        self.published.update(state.published)

    def _batch_published(self) -> Counter[str] | None:
        batch: _Batch | None = getattr(self._batches, "open", None)
        return None if batch is None else batch.published


class _Batch:
    """The state of one thread's open :meth:`KafkaEventBus.batch`."""

    __slots__ = ("deliveries", "failure", "published")

    def __init__(self) -> None:
        self.deliveries = Deliveries()
        self.failure: PublishError | None = None
        #: Events of the block by type: published once every record was acknowledged.
        self.published: Counter[str] = Counter()
