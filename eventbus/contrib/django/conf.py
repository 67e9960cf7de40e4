"""The bus of a Django project: which Celery app it runs on, and where its handlers live.

The Celery app, first match wins:

1. ``EVENTBUS_CELERY_APP = "proj.celery:app"``: that app (or an :class:`EventBus`
   found there). Configure it the Django way yourself, as Celery's guide does:
   ``app.config_from_object("django.conf:settings", namespace="CELERY")``.
2. The one Celery app configured from ``django.conf:settings``: the ``proj/celery.py``
   of Celery's "First steps with Django", imported by ``proj/__init__.py``. Two
   such apps are ambiguous: name one with ``EVENTBUS_CELERY_APP``.
3. None: eventbus builds one from your ``CELERY_`` settings, and
   ``celery -A eventbus.contrib.django worker`` runs it.

The bus is that app's :class:`EventBus` if it has one, else a new one on it.
Eventbus's own settings come through the same namespace:
``CELERY_EVENTBUS_MAX_RETRIES = 3``.

Handlers register at import, so every process that publishes or consumes
imports them when Django starts (the app config's ``ready()``): the modules
named in ``EVENTBUS_AUTODISCOVER`` (default ``("events", "handlers")``) of every
installed app, as Celery's ``autodiscover_tasks`` does with ``tasks``, and
those listed in ``EVENTBUS_HANDLER_MODULES``.
"""

from __future__ import annotations

import importlib
import logging
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from eventbus.errors import ConfigurationError

if TYPE_CHECKING:
    from celery import Celery

    from eventbus.celery.bus import EventBus

__all__ = [
    "DEFAULT_AUTODISCOVER",
    "DJANGO_CONFIG_SOURCE",
    "discover_handlers",
    "get_bus",
]

logger = logging.getLogger(__name__)

#: Default of ``EVENTBUS_AUTODISCOVER``: modules imported from every installed app.
DEFAULT_AUTODISCOVER = ("events", "handlers")
#: What ``config_from_object`` is given when a Celery app reads Django's settings.
DJANGO_CONFIG_SOURCE = "django.conf:settings"

_lock = threading.Lock()
_bus: EventBus | None = None
_built_apps: weakref.WeakSet[Celery] = weakref.WeakSet()  # not the user's: never "found"


def get_bus() -> EventBus:
    """The project's bus, found or built on first use (Django's settings must be configured)."""
    global _bus
    if _bus is None:
        with _lock:
            if _bus is None:
                _bus = _find_bus()
    return _bus


def _find_bus() -> EventBus:
    from django.conf import settings  # type: ignore[import-untyped]

    from eventbus.bus.base import BaseEventBus
    from eventbus.celery.bus import EventBus, bus_for_app

    spec = getattr(settings, "EVENTBUS_CELERY_APP", None)
    if spec:
        target = _import_object(str(spec))
        if isinstance(target, EventBus):
            return target
        if isinstance(target, BaseEventBus):
            raise ConfigurationError(
                f"EVENTBUS_CELERY_APP = {spec!r} names {type(target).__name__}, "
                "not a Celery app or the EventBus of one"
            )
        if not hasattr(target, "conf") or not hasattr(target, "task"):
            raise ConfigurationError(
                f"EVENTBUS_CELERY_APP = {spec!r} is neither a Celery app nor an EventBus"
            )
        app: Celery = target
        how = f"EVENTBUS_CELERY_APP ({spec})"
    else:
        found = _django_configured_apps()
        if len(found) > 1:
            names = ", ".join(sorted(a.main or "?" for a in found))
            raise ConfigurationError(
                f"several Celery apps read Django's settings ({names}); "
                "name yours with EVENTBUS_CELERY_APP = 'proj.celery:app'"
            )
        if found:
            app, how = found[0], "the Celery app configured from Django's settings"
        else:
            app, how = _build_app(settings), "a Celery app built from the CELERY_ settings"
    bus = bus_for_app(app) or EventBus(app)
    logger.debug("eventbus: the bus runs on %s: %r", how, app)
    return bus


def _import_object(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"EVENTBUS_CELERY_APP: cannot import {module_name!r}: {exc}"
        ) from exc
    for name in [attr] if attr else ["app", "celery", "bus"]:
        value = getattr(module, name, None)
        if value is not None:
            return value
    raise ConfigurationError(
        f"EVENTBUS_CELERY_APP: {module_name!r} has no {attr or 'app, celery or bus'} attribute"
    )


def _django_configured_apps() -> list[Celery]:
    from eventbus.celery.internals.celery_apps import apps_configured_from

    # The one of Celery's Django guide was configured with
    # config_from_object("django.conf:settings", ...).
    return [app for app in apps_configured_from(DJANGO_CONFIG_SOURCE) if app not in _built_apps]


def _build_app(settings: Any) -> Celery:
    from celery import Celery

    main = str(getattr(settings, "SETTINGS_MODULE", "") or "django").partition(".")[0]
    app = Celery(main)
    app.config_from_object(DJANGO_CONFIG_SOURCE, namespace="CELERY")
    _built_apps.add(app)
    return app


def discover_handlers(
    names: Sequence[str] | None = None, modules: Sequence[str] | None = None
) -> None:
    """Import the handler modules: ``names`` of every installed app, then ``modules``.

    Defaults: the settings ``EVENTBUS_AUTODISCOVER`` and ``EVENTBUS_HANDLER_MODULES``.
    An app without such a module is skipped; an error inside one propagates.
    """
    from django.conf import settings
    from django.utils.module_loading import autodiscover_modules  # type: ignore[import-untyped]

    if names is None:
        names = tuple(getattr(settings, "EVENTBUS_AUTODISCOVER", DEFAULT_AUTODISCOVER))
    if modules is None:
        modules = tuple(getattr(settings, "EVENTBUS_HANDLER_MODULES", ()))
    if isinstance(names, str) or isinstance(modules, str):
        raise ConfigurationError(
            "EVENTBUS_AUTODISCOVER and EVENTBUS_HANDLER_MODULES are lists of module names"
        )
    if names:
        autodiscover_modules(*names)
    for module in modules:
        importlib.import_module(module)
