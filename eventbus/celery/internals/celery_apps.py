"""The Celery apps of this process configured from a given object (Django's settings).

Celery keeps every app it created (``celery._state._get_active_apps``, private)
and each app remembers what ``config_from_object`` was given
(``Celery._config_source``, private). eventbus's Django integration finds
the app of Celery's Django guide so: the one configured from
``"django.conf:settings"``. Without those names it finds none: the
integration then builds an app from the ``CELERY_`` settings (and says so
with the one compatibility warning; ``EVENTBUS_CELERY_APP`` names an app
explicitly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventbus.celery.internals.compat import available

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["apps_configured_from"]


def apps_configured_from(source: str) -> list[Celery]:
    """The live apps of this process configured with ``config_from_object(source)``."""
    if not available("django_app"):
        return []
    from celery import _state

    return [
        app
        for app in list(_state._get_active_apps())
        if getattr(app, "_config_source", None) == source
    ]
