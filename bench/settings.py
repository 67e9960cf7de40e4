"""The Celery app factory shared by the benchmark apps.

Every benchmark app is configured exactly like a deployment: from the repo's
``celeryconfig`` (json, acks_late, prefetch 4, task-sent and task events on),
with only the broker URL (and what the caller passes) overridden. This module
imports nothing but Celery, so ``bench.raw_app`` stays free of eventbus.
"""

from __future__ import annotations

from typing import Any

from celery import Celery


def make_app(
    main: str, broker_url: str, *, stock_transport: bool = False, **overrides: Any
) -> Celery:
    """An app configured from ``celeryconfig`` on ``broker_url``.

    The transport follows the URL: eventbus's on Redis, the URL's own
    elsewhere, kombu's own with ``stock_transport`` (what a plain Celery
    deployment runs).
    """
    app = Celery(main, set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=broker_url, **overrides)
    if stock_transport or not broker_url.startswith("redis://"):
        app.conf.broker_transport = None
        if stock_transport:  # (unset, an EventBus's worker would pick eventbus's)
            app.conf.eventbus_redis_transport = "kombu"
    elif "broker_transport" not in overrides:
        app.conf.broker_transport = "eventbus.celery.internals.redis_transport:Transport"
    return app
