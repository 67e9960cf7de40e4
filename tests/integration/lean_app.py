"""The app of test_lean_worker: a prefork worker whose bus has an idempotent handler.

Run with ``python -c 'from tests.integration.lean_app import run; run()'`` (not
through the ``celery`` command, whose plugins, flower's among them, load redis-py
into every process).
``LEAN_QUEUE`` names the handler queue, ``LEAN_REPORT`` the file where the
main process writes, once the worker is ready, the modules it has loaded, and
where the handler appends the event ids it ran.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from celery import signals
from celery.concurrency import get_implementation

from eventbus import Envelope, Event, EventBus
from tests.support import BROKER_URLS, make_app

QUEUE = os.environ.get("LEAN_QUEUE", "eventbus.test.lean")
REPORT = Path(os.environ.get("LEAN_REPORT", "lean-report"))

app = make_app(BROKER_URLS["rabbitmq"], default_queue=QUEUE)
bus = EventBus(app)


class LeanPing(Event):
    event_type = "test.lean.ping"
    n: int


@bus.subscribe(LeanPing, idempotent=True)
def remember(envelope: Envelope[LeanPing]) -> None:
    with REPORT.with_suffix(".runs").open("a") as runs:
        runs.write(f"{envelope.event_id}\n")


@signals.worker_ready.connect
def report_modules(**_: Any) -> None:
    loaded = sorted(name for name in sys.modules if name == "redis" or name.startswith("redis."))
    REPORT.write_text(json.dumps({"pid": os.getpid(), "redis_modules": loaded}))


def run() -> None:
    """Start the worker (prefork, one child) on :data:`QUEUE`."""
    app.set_current()
    app.Worker(
        pool_cls=get_implementation("prefork"),
        concurrency=1,
        queues=[QUEUE],
        loglevel="WARNING",
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
    ).start()
