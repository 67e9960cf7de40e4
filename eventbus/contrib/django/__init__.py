"""Django integration: the bus from your settings, publishing after commit, the outbox.

::

    INSTALLED_APPS = [..., "eventbus.contrib.django"]
    EVENTBUS_CELERY_APP = "proj.celery:app"   # optional, see eventbus.contrib.django.conf

    # todos/handlers.py (imported when Django starts)
    from eventbus.contrib.django import bus

    @bus.subscribe(TodoCreated)
    def notify(envelope: Envelope[TodoCreated]) -> None: ...

    # todos/views.py
    with transaction.atomic():
        todo = Todo.objects.create(title=title)
        publish_on_commit(TodoCreated(title=title), aggregate_id=todo.pk)   # after COMMIT
        # or, committed with the todo and relayed by `manage.py eventbus outbox relay`:
        publish_via_outbox(TodoCreated(title=title), aggregate_id=todo.pk)

Importing this package imports neither Django's models nor the bus: ``bus``
and ``OutboxMessage`` load on first use (after Django's settings are set).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from eventbus.contrib.django.publish import publish_on_commit, publish_via_outbox

if TYPE_CHECKING:
    from eventbus.celery.bus import EventBus
    from eventbus.contrib.django.conf import get_bus
    from eventbus.contrib.django.models import OutboxMessage
    from eventbus.contrib.django.relay import (
        OutboxStatus,
        RelayResult,
        outbox_status,
        relay_outbox,
    )

    bus: EventBus

__all__ = [
    "OutboxMessage",
    "OutboxStatus",
    "RelayResult",
    "bus",
    "get_bus",
    "outbox_status",
    "publish_on_commit",
    "publish_via_outbox",
    "relay_outbox",
]

_EXPORTS = {
    "get_bus": "eventbus.contrib.django.conf",
    "OutboxMessage": "eventbus.contrib.django.models",
    "OutboxStatus": "eventbus.contrib.django.relay",
    "RelayResult": "eventbus.contrib.django.relay",
    "outbox_status": "eventbus.contrib.django.relay",
    "relay_outbox": "eventbus.contrib.django.relay",
}


def __getattr__(name: str) -> Any:
    if name == "bus":
        from eventbus.contrib.django.conf import get_bus as _get_bus

        return _get_bus()  # cached there, found or built on first use
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
