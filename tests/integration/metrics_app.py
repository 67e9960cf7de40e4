"""The app of the metrics test's worker subprocess, configured from the environment.

``celery -A tests.integration.metrics_app worker`` builds it from
``EVENTBUS_METRICS_TEST_BROKER``, ``..._QUEUE``, ``..._DLQ`` and
``EVENTBUS_METRICS_PORT``. The test process subscribes the same handlers on its
own bus with :func:`subscribe_handlers`, to publish to them.
"""

from __future__ import annotations

import os

from celery import current_task

from eventbus import Envelope, EventBus
from tests.integration.helpers import OrderPlaced, OrderShipped
from tests.support import make_app

SHIP = "it.metrics.ship"  #: succeeds, and publishes an OrderShipped (no subscriber)
FLAKY = "it.metrics.flaky"  #: fails its first attempt, succeeds on the retry
DOOMED = "it.metrics.doomed"  #: always fails: one retry, then the dead-letter queue


class GatewayTimeout(ConnectionError):
    """A transient failure."""


def subscribe_handlers(bus: EventBus) -> None:
    """Subscribe the three handlers of the metrics test to OrderPlaced."""

    def ship(envelope: Envelope[OrderPlaced]) -> None:
        bus.publish(OrderShipped(order_id=envelope.data.order_id, carrier="post"))

    def flaky(envelope: Envelope[OrderPlaced]) -> None:
        # The retry may run in the other pool process: ask Celery which attempt this is.
        if current_task.request.retries == 0:
            raise GatewayTimeout("first attempt times out")

    def doomed(envelope: Envelope[OrderPlaced]) -> None:
        raise ValueError(f"order {envelope.data.order_id} cannot be processed")

    retry_fast = {"max_retries": 1, "retry_backoff": 1, "retry_jitter": False}
    bus.subscribe(OrderPlaced, handler=ship, name=SHIP)
    bus.subscribe(OrderPlaced, handler=flaky, name=FLAKY, **retry_fast)
    bus.subscribe(OrderPlaced, handler=doomed, name=DOOMED, **retry_fast)


if os.environ.get("EVENTBUS_METRICS_TEST_BROKER"):
    # Configured as the test's Env configures its own app, so both declare the
    # handler queue alike (on RabbitMQ, with its dead-letter exchange).
    app = make_app(
        os.environ["EVENTBUS_METRICS_TEST_BROKER"],
        worker_hijack_root_logger=True,  # the worker's log is the test's evidence
        eventbus_metrics_port=int(os.environ["EVENTBUS_METRICS_PORT"]),
        eventbus_metrics_addr="127.0.0.1",
        eventbus_metrics_cache_seconds=0.2,  # the test reads the DLQ depth soon after a write
        # An idle AMQP event loop notices a SIGTERM only when its poll times out;
        # a heartbeat tick every 0.5 s makes the worker stop promptly.
        broker_heartbeat=1,
    )
    bus = EventBus(
        app,
        default_queue=os.environ["EVENTBUS_METRICS_TEST_QUEUE"],
        dead_letter_queue=os.environ["EVENTBUS_METRICS_TEST_DLQ"],
    )
    subscribe_handlers(bus)
