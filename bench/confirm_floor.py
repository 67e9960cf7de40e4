"""The floor of a confirmed publish on RabbitMQ: py-amqp alone, one confirm wait per event.

The publish benchmark's "confirm-floor" reference (issue 16): per event, the
5 handler messages and one more (eventbus's task-sent events) published with
py-amqp's ``basic_publish`` on one channel in confirm mode, persistent, to the
raw-defaults queue (durable, declared by Celery), then one wait until the
broker confirmed them all. No Celery, no kombu on the way, no envelope: what
is left is the client's framing and the broker's confirm round trip, which
for persistent messages on a durable queue includes writing them to disk.
If this floor is below 0.9x raw Celery's defaults (which confirm nothing),
no confirmed publisher reaches 0.9x one event at a time on that broker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import amqp
from amqp import spec
from kombu import Connection

#: Messages per event: 5 handler messages and the task-sent events' message.
MESSAGES_PER_EVENT = 6


@dataclass
class ConfirmFloor:
    connection: Any
    channel: Any
    queue: str
    acked: int = 0  # the newest tag the broker confirmed (RabbitMQ confirms in order)
    sent: int = 0
    nacked: list[int] = field(default_factory=list)

    def _on_ack(self, tag: int, multiple: bool = False) -> None:
        self.acked = max(self.acked, tag)

    def _on_nack(self, tag: int, multiple: bool = False) -> None:
        self.nacked.append(tag)
        self.acked = max(self.acked, tag)

    def publish(self, payloads: list[dict[str, Any]]) -> None:
        channel, queue = self.channel, self.queue
        for payload in payloads:
            body = json.dumps(payload)
            for _ in range(MESSAGES_PER_EVENT):
                channel.basic_publish(
                    amqp.Message(body, delivery_mode=2, content_type="application/json"),
                    exchange="",
                    routing_key=queue,
                )
            self.sent += MESSAGES_PER_EVENT
            while self.acked < self.sent:
                channel.wait([spec.Basic.Ack, spec.Basic.Nack], timeout=10)
        if self.nacked:
            raise RuntimeError(f"the broker nacked {len(self.nacked)} message(s)")

    def close(self) -> None:
        self.connection.release()


def build(url: str, queue: str) -> ConfirmFloor:
    """On a connection of its own; ``queue`` must exist (raw-defaults declares it)."""
    connection = Connection(url)
    connection.connect()
    channel = connection.connection.channel()
    channel.queue_declare(queue, passive=True)
    channel.confirm_select()
    floor = ConfirmFloor(connection=connection, channel=channel, queue=queue)
    channel.events["basic_ack"].add(floor._on_ack)
    channel.events["basic_nack"].add(floor._on_nack)
    return floor
