"""The app of the worker that test_transport_selection starts as a process of its own.

Its broker URL, ``broker_transport`` and queue come from the environment
(``TRANSPORT_APP_*``), so each test runs ``celery -A tests.integration.transport_app
worker`` on the configuration it is about.
"""

from __future__ import annotations

import os

from celery import Celery

from eventbus import Envelope, EventBus
from tests.integration.helpers import OrderPlaced

queue = os.environ.get("TRANSPORT_APP_QUEUE", "it.transport-app")
app = Celery("transport-app", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("TRANSPORT_APP_BROKER_URL"),
    broker_transport=os.environ.get("TRANSPORT_APP_BROKER_TRANSPORT") or None,
    broker_connection_timeout=3,
    broker_connection_retry_on_startup=True,
    accept_content=["json"],
    task_serializer="json",
    worker_enable_remote_control=False,
    worker_send_task_events=False,
)
bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")


@bus.subscribe(OrderPlaced, name="it.transport_app.noop")
def noop(envelope: Envelope[OrderPlaced]) -> None:
    """Never runs: the worker of the test must not get this far."""
