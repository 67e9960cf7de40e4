"""Apps for the ``eventbus outbox`` CLI tests: an in-memory bus, and a Celery app with a bus."""

from __future__ import annotations

from eventbus import EventBus
from tests.outbox.conftest import RecordingBus
from tests.outbox.events import EVENTS, OrderPlaced
from tests.support import make_app

#: ``-A tests.outbox.cli_apps:memory_bus``: its broker can be "down".
memory_bus = RecordingBus()

#: ``-A tests.outbox.cli_apps:celery_app``: on kombu's in-memory transport; the
#: tests set its eventbus_outbox_url.
celery_app = make_app("memory://", default_queue="outbox-cli-tests")
celery_bus = EventBus(celery_app, event_registry=EVENTS)


@celery_bus.subscribe(OrderPlaced, name="tests.outbox.cli_apps.on_placed")
def on_placed(envelope: object) -> None:
    """Runs in no test: nothing consumes the in-memory queue."""
