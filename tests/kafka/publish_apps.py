"""``eventbus -A tests.kafka.publish_apps:kafka_bus ...``: a KafkaEventBus from the environment.

Its cluster is ``EVENTBUS_KAFKA_BOOTSTRAP_SERVERS`` (set by the test before the
CLI imports this module), its topic ``EVENTBUS_TEST_KAFKA_TOPIC``.
"""

from __future__ import annotations

import os

from eventbus.kafka import KafkaEventBus, KafkaSettings, TopicNaming
from tests.outbox.events import EVENTS

kafka_bus = KafkaEventBus(
    KafkaSettings.from_env(),
    topics=TopicNaming.fixed(os.environ["EVENTBUS_TEST_KAFKA_TOPIC"]),
    event_registry=EVENTS,
)
