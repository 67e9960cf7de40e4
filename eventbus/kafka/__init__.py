"""Kafka: publish events to Kafka topics, and feed Kafka topics into Celery handlers.

Needs ``pip install "eventbus[kafka]"`` (confluent-kafka). The codec, the topic
naming and the settings import without it; what talks to a broker raises
:class:`~eventbus.errors.MissingDependency` (a ``ConfigurationError`` and an
``ImportError``) naming that command when it is missing.

Publishing::

    from eventbus.kafka import KafkaEventBus, KafkaSettings

    kafka_bus = KafkaEventBus(KafkaSettings(bootstrap_servers="kafka:9092"))
    kafka_bus.publish(OrderPlaced(total=42), aggregate_id=order.id, aggregate_type="Order")
    # returned: the broker has the record (acks=all); else PublishError

Pieces:

* :mod:`eventbus.kafka.settings`: :class:`KafkaSettings` (servers, security,
  producer and consumer options, the delivery timeout).
* :mod:`eventbus.kafka.topics`: :class:`TopicNaming` (topic per event type,
  per aggregate type, or fixed).
* :mod:`eventbus.kafka.records`: the record codec (envelope <-> key, JSON
  value, headers), shared by both directions.
* :mod:`eventbus.kafka.producer`: :class:`KafkaProducer`, records sent and
  acknowledged, or :class:`~eventbus.errors.PublishError`, within the timeout.
* :mod:`eventbus.kafka.bus`: :class:`KafkaEventBus`, a bus that publishes to
  Kafka (validation and envelope as every bus; the outbox relay takes it).

confluent-kafka is imported inside this package only (``tests/unit/test_layout.py``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eventbus.kafka.bus import KafkaEventBus
    from eventbus.kafka.producer import KafkaProducer
    from eventbus.kafka.records import (
        HEADER_CORRELATION_ID,
        HEADER_EVENT_ID,
        HEADER_EVENT_TYPE,
        HEADER_EVENT_VERSION,
        KafkaRecord,
        decode_plain_record,
        decode_record,
        encode_record,
        header_values,
        is_envelope_record,
    )
    from eventbus.kafka.settings import DEFAULT_DELIVERY_TIMEOUT, KafkaSettings
    from eventbus.kafka.topics import TopicNaming

__all__ = [
    "DEFAULT_DELIVERY_TIMEOUT",
    "HEADER_CORRELATION_ID",
    "HEADER_EVENT_ID",
    "HEADER_EVENT_TYPE",
    "HEADER_EVENT_VERSION",
    "KafkaEventBus",
    "KafkaProducer",
    "KafkaRecord",
    "KafkaSettings",
    "TopicNaming",
    "decode_plain_record",
    "decode_record",
    "encode_record",
    "header_values",
    "is_envelope_record",
]

# Loaded on first use: the codec and settings need no Kafka client; the
# producer (and the consumer) import confluent-kafka, or say what to install.
_EXPORTS = {
    "KafkaEventBus": "eventbus.kafka.bus",
    "KafkaProducer": "eventbus.kafka.producer",
    "HEADER_CORRELATION_ID": "eventbus.kafka.records",
    "HEADER_EVENT_ID": "eventbus.kafka.records",
    "HEADER_EVENT_TYPE": "eventbus.kafka.records",
    "HEADER_EVENT_VERSION": "eventbus.kafka.records",
    "KafkaRecord": "eventbus.kafka.records",
    "decode_plain_record": "eventbus.kafka.records",
    "decode_record": "eventbus.kafka.records",
    "encode_record": "eventbus.kafka.records",
    "header_values": "eventbus.kafka.records",
    "is_envelope_record": "eventbus.kafka.records",
    "DEFAULT_DELIVERY_TIMEOUT": "eventbus.kafka.settings",
    "KafkaSettings": "eventbus.kafka.settings",
    "TopicNaming": "eventbus.kafka.topics",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'eventbus.kafka' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
