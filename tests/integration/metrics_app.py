"""The app of the metrics test's worker subprocess, configured from the environment.

``celery -A tests.integration.metrics_app worker`` builds it from
``EVENTBUS_METRICS_TEST_BROKER``, ``..._QUEUE``, ``..._DLQ`` and
``EVENTBUS_METRICS_PORT``. The test process subscribes the same handlers on its
own bus with :func:`subscribe_handlers`, to publish to them.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
from celery import Celery, current_task
from kombu.exceptions import OperationalError

from eventbus import Envelope, EventBus
from tests.integration.helpers import OrderPlaced, OrderShipped
from tests.support import STATE_REDIS_URL, make_app

SHIP = "it.metrics.ship"  #: succeeds, and publishes an OrderShipped (no subscriber)
FLAKY = "it.metrics.flaky"  #: fails its first attempt, succeeds on the retry
DOOMED = "it.metrics.doomed"  #: always fails: one retry, then the dead-letter queue
#: Overruns its hard time limit (Celery reports it twice: on_failure, on_timeout).
TIMED = "it.metrics.timed"
#: Fails its first attempt, whose retry the broker does not take (the message goes
#: back to its queue and runs again), then succeeds on the retry sent the second time.
RETRY_UNSENT = "it.metrics.retry_unsent"
#: Seconds :data:`TIMED` may run.
TIME_LIMIT = 1


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


def subscribe_limit_handlers(bus: EventBus) -> None:
    """Subscribe :data:`TIMED` and :data:`RETRY_UNSENT` to OrderPlaced."""

    def timed(envelope: Envelope[OrderPlaced]) -> None:
        threading.Event().wait(60)  # never set: killed at its time limit

    def retry_unsent(envelope: Envelope[OrderPlaced]) -> None:
        if current_task.request.retries == 0:
            raise GatewayTimeout("first attempt times out")

    once = {"max_retries": 0, "retry_backoff": 1, "retry_jitter": False}
    bus.subscribe(OrderPlaced, handler=timed, name=TIMED, time_limit=TIME_LIMIT, **once)
    retry_fast = {"max_retries": 1, "retry_backoff": 1, "retry_jitter": False}
    bus.subscribe(OrderPlaced, handler=retry_unsent, name=RETRY_UNSENT, **retry_fast)


def refuse_first_retry(app: Celery, key_prefix: str) -> None:
    """The broker takes no first retry of :data:`RETRY_UNSENT` (per task, in any pool process).

    Celery's ``Task.retry`` then raises ``Reject(requeue=False)``, which eventbus
    turns into a re-queue of the message.
    """
    send = app.amqp.send_task_message
    client = redis.Redis.from_url(STATE_REDIS_URL)

    def send_task_message(producer: Any, name: str, message: Any, **options: Any) -> Any:
        headers = message.headers
        retry = name == RETRY_UNSENT and headers.get("retries")
        if retry and client.set(f"{key_prefix}retry-refused:{headers['id']}", 1, nx=True, ex=300):
            raise OperationalError("the broker is away (refused by the test)")
        return send(producer, name, message, **options)

    app.amqp.send_task_message = send_task_message


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
    if os.environ.get("EVENTBUS_METRICS_TEST_HANDLERS") == "limits":
        subscribe_limit_handlers(bus)
        refuse_first_retry(app, os.environ["EVENTBUS_METRICS_TEST_QUEUE"] + ":")
    else:
        subscribe_handlers(bus)
