"""The app the ``eventbus dlq`` subprocess loads in tests/integration/test_cli_dlq.py.

``python -m eventbus.cli -A tests.integration.cli_broker_app dlq ...`` builds it
from ``EVENTBUS_CLI_TEST_BROKER``, ``EVENTBUS_CLI_TEST_QUEUE`` and
``EVENTBUS_CLI_TEST_DLQ``. The test process subscribes the same handler on its
own bus with :func:`subscribe_handler`, for its worker to dead-letter events.
"""

from __future__ import annotations

import os

from eventbus import Envelope, EventBus, PermanentHandlerError
from tests.integration.helpers import OrderPlaced
from tests.support import make_app

REJECT = "it.cli.reject_order"  #: fails every event permanently: straight to the DLQ


def subscribe_handler(bus: EventBus) -> None:
    """Subscribe the handler that rejects every OrderPlaced."""

    def reject_order(envelope: Envelope[OrderPlaced]) -> None:
        raise PermanentHandlerError(f"order {envelope.data.order_id} rejected")

    bus.subscribe(OrderPlaced, handler=reject_order, name=REJECT)


if os.environ.get("EVENTBUS_CLI_TEST_BROKER"):
    # Configured like the test's own app (tests/integration/conftest.py Env), so
    # both declare the handler queue the same way.
    app = make_app(os.environ["EVENTBUS_CLI_TEST_BROKER"])
    bus = EventBus(
        app,
        default_queue=os.environ["EVENTBUS_CLI_TEST_QUEUE"],
        dead_letter_queue=os.environ["EVENTBUS_CLI_TEST_DLQ"],
    )
    subscribe_handler(bus)
