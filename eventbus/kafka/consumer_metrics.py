"""The Kafka consumer's Prometheus metrics: lag per partition, records by outcome.

- ``eventbus_kafka_consumer_lag{group,topic,partition}``: records of the
  partition not yet dispatched into Celery: the partition's end (its high
  watermark, as the last fetch saw it) minus the consumer's position after
  its last dispatched batch. Set after every batch, and once a second for
  every assigned partition; a partition taken away from this member
  disappears from the family.
- ``eventbus_kafka_records_total{group,topic,outcome}``: records read, by
  outcome: ``dispatched`` (its handler messages accepted by the Celery
  broker) or ``dead_lettered`` (undecodable, unknown type or version, invalid
  data: written to the dead-letter queue).
- ``eventbus_kafka_dispatch_failures_total{group}``: batches whose dispatch
  failed (the Celery broker refused them, or a dead letter could not be
  written) and were read again after a backoff: nothing was committed past them.

``eventbus kafka consume --metrics-port PORT`` serves them on
``http://ADDR:PORT/metrics``; in your own process, pass a registry.
"""

from __future__ import annotations

from contextlib import suppress

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

__all__ = ["ConsumerMetrics"]


class ConsumerMetrics:
    """The consumer's metrics on ``registry`` (default: prometheus_client's own)."""

    def __init__(self, group: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.group = group
        self.lag = Gauge(
            "eventbus_kafka_consumer_lag",
            "Records of a partition not yet dispatched into Celery (high watermark - position).",
            ["group", "topic", "partition"],
            registry=registry,
        )
        self.records = Counter(
            "eventbus_kafka_records",
            "Kafka records read, by outcome (dispatched, dead_lettered).",
            ["group", "topic", "outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "eventbus_kafka_dispatch_failures",
            "Batches whose dispatch failed and were read again after a backoff.",
            ["group"],
            registry=registry,
        )

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self.lag.labels(self.group, topic, str(partition)).set(max(0, lag))

    def forget(self, topic: str, partition: int) -> None:
        """The partition was taken away from this member: its lag is another's now."""
        with suppress(KeyError):  # never reported
            self.lag.remove(self.group, topic, str(partition))

    def count(self, topic: str, outcome: str, n: int = 1) -> None:
        self.records.labels(self.group, topic, outcome).inc(n)

    def failed(self) -> None:
        self.failures.labels(self.group).inc()
