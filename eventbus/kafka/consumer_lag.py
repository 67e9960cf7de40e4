"""The consumer's lag per partition: the partition's end minus what was dispatched.

Read from the client's cached high watermarks (what the last fetch saw: no
broker round trip) and the consumer's dispatched offsets, into
:class:`~eventbus.kafka.consumer_metrics.ConsumerMetrics` (which needs
prometheus_client; this module does not).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from eventbus.kafka.consumer_offsets import Offsets, TopicPartition

if TYPE_CHECKING:
    from eventbus.kafka.consumer_metrics import ConsumerMetrics

__all__ = ["LAG_INTERVAL", "LagReader"]

LAG_INTERVAL = 1.0  #: seconds between two lag readings of every assigned partition


class LagReader:
    """Sets the lag gauge from the client's cached high watermarks and the dispatched offsets."""

    def __init__(self, metrics: ConsumerMetrics, offsets: Offsets, kafka: ModuleType) -> None:
        self.metrics = metrics
        self.offsets = offsets
        self._kafka = kafka
        self._read_at = 0.0

    def report(self, client: Any, positions: Mapping[TopicPartition, int]) -> None:
        """The lag of these partitions, at these positions (the next record to dispatch)."""
        for (topic, partition), position in positions.items():
            tp = self._kafka.TopicPartition(topic, partition)
            _, high = client.get_watermark_offsets(tp, cached=True)
            if high >= 0:
                self.metrics.set_lag(topic, partition, high - position)

    def read_all(self, client: Any) -> None:
        """Every assigned partition's lag, once a second (an idle one keeps its own)."""
        now = time.monotonic()
        if now - self._read_at < LAG_INTERVAL:
            return
        self._read_at = now
        positions: dict[TopicPartition, int] = {}
        for tp in client.position(client.assignment()):
            place = (tp.topic, tp.partition)
            known = self.offsets.position(place)
            if known is not None:
                positions[place] = known
            elif tp.offset >= 0:
                positions[place] = tp.offset
            else:
                # Nothing read from it yet: an empty partition has no lag; another
                # is unknown until its first fetch (not reported rather than wrong).
                low, high = client.get_watermark_offsets(tp, cached=True)
                if high >= 0 and low == high:
                    positions[place] = high
        self.report(client, positions)
