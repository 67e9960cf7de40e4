"""``celery -A eventbus.contrib.django worker``: the worker of a project without its own app.

When no Celery app of yours reads Django's settings (see
:mod:`eventbus.contrib.django.conf`), eventbus builds one from the ``CELERY_``
settings; this module sets Django up (``DJANGO_SETTINGS_MODULE`` must be set)
and exposes that app, so Celery's ``-A`` finds it.
"""

from __future__ import annotations

import django  # type: ignore[import-untyped]

from eventbus.contrib.django.conf import get_bus

__all__ = ["app", "bus"]

django.setup()  # runs the app config's ready(): the bus, its handlers, the relay task

bus = get_bus()
app = bus.app
