"""The Celery app factory shared by the benchmark apps.

Every benchmark app is configured exactly like a deployment: from the repo's
``celeryconfig`` (json, acks_late, prefetch 4, task-sent and task events on),
with only the broker URL (and what the caller passes) overridden. This module
imports nothing but Celery, so ``bench.raw_app`` stays free of eventbus.
"""

from __future__ import annotations

from typing import Any

from celery import Celery


def make_app(main: str, broker_url: str, **overrides: Any) -> Celery:
    app = Celery(main, set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=broker_url, **overrides)
    return app
