"""A raw Celery app with 5 plain tasks equivalent to the example handlers (for bench_rss).

It imports neither eventbus nor pydantic: bench_rss shows its worker for
reference (the "plain raw" column); the baseline ``celery -A handlers worker``
is held to is ``bench.raw_pydantic_app``, which validates with pydantic. Same
``celeryconfig`` settings; the tasks do the same trivial work on the
envelope's wire dict.

``BENCH_BROKER_URL`` selects the broker, ``BENCH_QUEUE`` the tasks' queue.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from typing import Any

from bench.settings import make_app

logger = logging.getLogger(__name__)

QUEUE = os.environ.get("BENCH_QUEUE", "bench.raw_app")
app = make_app(
    "bench-raw-app",
    os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/14"),
    stock_transport=True,  # raw Celery as deployed: kombu's own Redis transport
)

STATISTICS: Counter[str] = Counter()
SENT_EMAILS: list[str] = []
DELIVERED: list[str] = []
DOCUMENTS: dict[str, str] = {}
AUDIT: dict[str, str] = {}
_lock = threading.Lock()


@app.task(name="bench.raw_app.update_statistics", queue=QUEUE, shared=False)
def update_statistics(payload: dict[str, Any]) -> None:
    with _lock:
        STATISTICS[payload["event_type"]] += 1


@app.task(name="bench.raw_app.notify_assignee", queue=QUEUE, shared=False)
def notify_assignee(payload: dict[str, Any]) -> None:
    data = payload["data"]
    with _lock:
        DELIVERED.append(f"{data.get('assignee') or 'everyone'}: new todo {data['title']!r}")


@app.task(name="bench.raw_app.index_for_search", queue=QUEUE, shared=False)
def index_for_search(payload: dict[str, Any]) -> None:
    DOCUMENTS[payload.get("aggregate_id") or payload["event_id"]] = payload["data"]["title"]


@app.task(name="bench.raw_app.send_welcome_email", queue=QUEUE, shared=False)
def send_welcome_email(payload: dict[str, Any]) -> None:
    SENT_EMAILS.append(payload["data"]["email"])
    logger.info(
        "welcome email sent to %s (event %s)", payload["data"]["email"], payload["event_id"]
    )


@app.task(name="bench.raw_app.audit_log", queue=QUEUE, shared=False)
def audit_log(payload: dict[str, Any]) -> None:
    with _lock:
        AUDIT[payload["event_id"]] = (
            f"{payload['occurred_at']} {payload['event_type']} user={payload['data']['user_id']}"
        )
