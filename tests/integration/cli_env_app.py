"""A bus made afresh from the environment each time the CLI asks for it.

``eventbus -A tests.integration.cli_env_app:bus ...`` run in-process (click's
``CliRunner``, its ``env=``) gets a new app and bus on
``EVENTBUS_CLI_TEST_BROKER`` at every invocation (PEP 562: the module's
``__getattr__``), so one test process tries many broker URLs. Its handler
queue and DLQ come from ``EVENTBUS_CLI_TEST_QUEUE``/``EVENTBUS_CLI_TEST_DLQ``
(default: names of their own, never declared).
"""

from __future__ import annotations

import os

from celery import Celery

from eventbus import Envelope, EventBus, PermanentHandlerError
from tests.integration.helpers import OrderPlaced
from tests.support import make_app, unique

HANDLER = "it.cli_env.reject_order"  #: fails every event permanently: straight to the DLQ


def reject_order(envelope: Envelope[OrderPlaced]) -> None:
    raise PermanentHandlerError(f"order {envelope.data.order_id} rejected")


def quick_app(broker_url: str) -> Celery:
    """A test app that tries a broker that does not answer twice, at once, not for seconds."""
    app = make_app(broker_url)
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0,
    }
    return app


def __getattr__(name: str) -> EventBus:
    if name != "bus":
        raise AttributeError(name)
    app = quick_app(os.environ["EVENTBUS_CLI_TEST_BROKER"])
    bus = EventBus(
        app,
        default_queue=os.environ.get("EVENTBUS_CLI_TEST_QUEUE") or unique("it.cli-env"),
        dead_letter_queue=os.environ.get("EVENTBUS_CLI_TEST_DLQ") or unique("it.cli-env.dlq"),
    )
    bus.subscribe(OrderPlaced, handler=reject_order, name=HANDLER)
    return bus
