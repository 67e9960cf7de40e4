"""Relays side by side on PostgreSQL (SELECT ... FOR UPDATE SKIP LOCKED); prints JSON.

``python django_pg_relays.py HOST PORT USER DBNAME SCHEMA``: Django on that
database with ``search_path`` set to SCHEMA (created and dropped by the test),
60 outbox rows, then 3 threads relaying them at once in batches of 5 on one
in-memory bus whose handler takes a moment. Prints how often each event was
handled and what each relay reported.
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter
from typing import Any

import django
from django.conf import settings

HOST, PORT, USER, NAME, SCHEMA = sys.argv[1:6]
settings.configure(
    INSTALLED_APPS=["eventbus.contrib.django"],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": HOST,
            "PORT": PORT,
            "USER": USER,
            "NAME": NAME,
            "OPTIONS": {"options": f"-c search_path={SCHEMA}"},
        }
    },
    USE_TZ=True,
    CELERY_BROKER_URL="memory://",
)
django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from eventbus import Envelope, Event, InMemoryEventBus  # noqa: E402
from eventbus.contrib.django import publish_via_outbox, relay_outbox  # noqa: E402


class Numbered(Event):
    event_type = "pg_cases.numbered"
    n: int


def main() -> dict[str, Any]:
    call_command("migrate", verbosity=0)
    bus = InMemoryEventBus()
    handled: Counter[int] = Counter()
    runs_by_relay: Counter[str] = Counter()
    lock = threading.Lock()
    all_relaying = threading.Event()

    def handle(envelope: Envelope[Numbered]) -> None:
        with lock:
            handled[envelope.data.n] += 1
            runs_by_relay[threading.current_thread().name] += 1
            if len(runs_by_relay) == 3:
                all_relaying.set()
        # Each relay holds its first batch (its rows locked) until all three
        # are publishing at once: they overlap, each on rows the others skipped.
        if not all_relaying.wait(timeout=20):
            raise RuntimeError("the three relays never published at the same time")

    bus.subscribe(Numbered, name="pg_cases.handle")(handle)
    with transaction.atomic():
        for n in range(60):
            publish_via_outbox(Numbered(n=n), bus=bus)

    results: list[dict[str, Any]] = []
    start = threading.Barrier(3)

    def relay() -> None:
        from django.db import connection as own  # this thread's connection

        try:
            start.wait()
            result = relay_outbox(bus=bus, batch_size=5).as_dict()
            with lock:
                results.append(result)
        finally:
            own.close()

    threads = [threading.Thread(target=relay, name=f"relay-{i}") for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return {
        "skip_locked": connection.features.has_select_for_update_skip_locked,
        "overlapped": all_relaying.is_set(),
        "handled": len(handled),
        "twice": sorted(n for n, count in handled.items() if count > 1),
        "relays": sorted(result["published"] for result in results),
        "pending_left": [result["pending_left"] for result in results],
    }


if __name__ == "__main__":
    out = main()
    connection.close()
    print(json.dumps(out))
