"""An app for the state-store error tests: the memory broker, the state URL from the environment.

``eventbus -A tests.unit.state_cli_app:bus ...`` gets a new app and bus at
every access (PEP 562: the module's ``__getattr__``), its state store at
``EVENTBUS_STATE_TEST_URL``, and one ordered handler: a publish of an event
with an aggregate id needs a sequence number from that store.
"""

from __future__ import annotations

import os

from eventbus import EventBus
from tests.integration.helpers import OrderPlaced
from tests.support import make_app, unique

HANDLER = "tests.unit.state_cli_app.ship_in_order"


def make_bus(state_url: str) -> EventBus:
    app = make_app("memory://", eventbus_redis_url=state_url)
    bus = EventBus(app, default_queue=unique("state-errors"))
    bus.subscribe(OrderPlaced, name=HANDLER, handler=lambda envelope: None, ordered=True)
    return bus


def __getattr__(name: str) -> EventBus:
    if name != "bus":
        raise AttributeError(name)
    return make_bus(os.environ["EVENTBUS_STATE_TEST_URL"])
