"""An app whose broker never completes a connection, for the CLI's fail-fast tests.

``eventbus -A tests.unit.closed_broker_app:bus ...`` gets a new app and bus
at every access (PEP 562), on ``EVENTBUS_FAIL_FAST_TEST_BROKER``, with a
connect timeout of 20 s (kombu's own retry would keep trying for that long)
and the example configuration's publish retry policy (celeryconfig.py).
"""

from __future__ import annotations

import os

import celeryconfig
from eventbus import EventBus
from tests.integration.helpers import OrderPlaced
from tests.support import make_app, unique

HANDLER = "tests.unit.closed_broker_app.ship"


def __getattr__(name: str) -> EventBus:
    if name != "bus":
        raise AttributeError(name)
    app = make_app(
        os.environ["EVENTBUS_FAIL_FAST_TEST_BROKER"],
        broker_connection_timeout=20,
        task_publish_retry_policy=celeryconfig.task_publish_retry_policy,
    )
    bus = EventBus(app, default_queue=unique("fail-fast"), dead_letter_queue=unique("ff-dlq"))
    bus.subscribe(OrderPlaced, name=HANDLER, handler=lambda envelope: None)
    return bus
