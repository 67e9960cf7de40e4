"""A raw Celery app whose 5 tasks validate the example handlers' payloads with pydantic.

bench_rss's baseline: what a team would write without eventbus to run the
example handlers (``handlers/todo.py``, ``handlers/user.py``) with typed
events. Each task takes the envelope wire dict the bus sends and, as the
handler's does before calling it, validates ``payload["data"]`` into the
event's model (``bench.raw_models``: the same models as
``handlers/events.py`` on plain ``BaseModel``, checked equal by
``bench/test_raw_models.py``), then does the handler's trivial work on the
model. It imports neither eventbus nor the handlers; same ``celeryconfig``
settings, kombu's own Redis transport (raw Celery as deployed).

``BENCH_BROKER_URL`` selects the broker, ``BENCH_QUEUE`` the tasks' queue.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from typing import Any

from bench.raw_models import MODELS, TodoCreated, UserRegistered
from bench.settings import make_app

logger = logging.getLogger(__name__)

QUEUE = os.environ.get("BENCH_QUEUE", "bench.raw_pydantic_app")
app = make_app(
    "bench-raw-pydantic-app",
    os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/14"),
    stock_transport=True,
)

STATISTICS: Counter[str] = Counter()
SENT_EMAILS: list[str] = []
DELIVERED: list[str] = []
DOCUMENTS: dict[str, str] = {}
AUDIT: dict[str, str] = {}
_lock = threading.Lock()


@app.task(name="bench.raw_pydantic_app.update_statistics", queue=QUEUE, shared=False)
def update_statistics(payload: dict[str, Any]) -> None:
    # handlers.todo.update_statistics takes TodoCreated and TodoCompleted.
    MODELS[payload["event_type"]].model_validate(payload["data"])
    with _lock:
        STATISTICS[payload["event_type"]] += 1


@app.task(name="bench.raw_pydantic_app.notify_assignee", queue=QUEUE, shared=False)
def notify_assignee(payload: dict[str, Any]) -> None:
    todo = TodoCreated.model_validate(payload["data"])
    with _lock:
        DELIVERED.append(f"{todo.assignee or 'everyone'}: new todo {todo.title!r}")


@app.task(name="bench.raw_pydantic_app.index_for_search", queue=QUEUE, shared=False)
def index_for_search(payload: dict[str, Any]) -> None:
    todo = TodoCreated.model_validate(payload["data"])
    DOCUMENTS[payload.get("aggregate_id") or payload["event_id"]] = todo.title


@app.task(name="bench.raw_pydantic_app.send_welcome_email", queue=QUEUE, shared=False)
def send_welcome_email(payload: dict[str, Any]) -> None:
    user = UserRegistered.model_validate(payload["data"])
    SENT_EMAILS.append(user.email)
    logger.info("welcome email sent to %s (event %s)", user.email, payload["event_id"])


@app.task(name="bench.raw_pydantic_app.audit_log", queue=QUEUE, shared=False)
def audit_log(payload: dict[str, Any]) -> None:
    user = UserRegistered.model_validate(payload["data"])
    with _lock:
        AUDIT[payload["event_id"]] = (
            f"{payload['occurred_at']} {payload['event_type']} user={user.user_id}"
        )
