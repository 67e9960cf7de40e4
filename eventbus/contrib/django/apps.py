"""The Django app config: add ``"eventbus.contrib.django"`` to ``INSTALLED_APPS``.

When Django starts (``manage.py``, the WSGI/ASGI server, a Celery worker
through Celery's Django fixup) :meth:`EventBusConfig.ready` finds or builds
the bus (:mod:`eventbus.contrib.django.conf`), imports the handler modules,
and registers the outbox relay task, ``eventbus.relay_outbox``.
"""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]

__all__ = ["EventBusConfig"]


class EventBusConfig(AppConfig):  # type: ignore[misc]
    """App label ``eventbus``: the outbox model and the ``eventbus`` management command."""

    name = "eventbus.contrib.django"
    label = "eventbus"
    verbose_name = "Event bus"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from eventbus.contrib.django.conf import discover_handlers, get_bus
        from eventbus.contrib.django.relay import register_relay_task

        bus = get_bus()
        register_relay_task(bus)
        discover_handlers()
