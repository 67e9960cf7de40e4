"""Todo handlers: statistics, a flaky notification gateway, and a picky search index.

``notify_assignee`` fails transiently (its gateway times out twice per event),
so its retries with growing backoff show in the worker log and in Flower.
``index_for_search`` fails permanently on a marked input (a title containing
``#poison``), so that event lands in the dead-letter queue; set
``search_index.accept_marked = True`` (the "fix") and replay it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from eventbus import Envelope, PermanentHandlerError
from handlers.celery import bus
from handlers.events import TodoCompleted, TodoCreated

logger = logging.getLogger(__name__)

POISON_MARK = "#poison"

#: Counts per event type, as a dashboard would keep them.
STATISTICS: Counter[str] = Counter()
_stats_lock = threading.Lock()


# ordered: a todo's "completed" is never counted before its "created", even with
# several workers (each todo is an aggregate; its events carry sequence numbers).
@bus.subscribe(TodoCreated, TodoCompleted, ordered=True)
def update_statistics(envelope: Envelope[TodoCreated | TodoCompleted]) -> None:
    """Count created and completed todos, each todo's events in order."""
    with _stats_lock:
        STATISTICS[envelope.event_type] += 1


class GatewayTimeout(ConnectionError):
    """The push-notification gateway did not answer in time."""


class FlakyGateway:
    """A notification gateway that times out on the first two tries of each message."""

    failures_per_message = 2

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.delivered: list[str] = []
        self._lock = threading.Lock()

    def push(self, key: str, text: str) -> None:
        with self._lock:
            self.attempts[key] += 1
            if self.attempts[key] <= self.failures_per_message:
                raise GatewayTimeout(f"gateway timed out (try {self.attempts[key]})")
            self.delivered.append(text)


gateway = FlakyGateway()


# Retry only what a retry can fix; backoff 1s, 2s, 4s... without jitter so the
# demo shows the doubling (production handlers keep the jitter default).
@bus.subscribe(
    TodoCreated, retry_on=(ConnectionError,), max_retries=4, retry_backoff=1, retry_jitter=False
)
def notify_assignee(envelope: Envelope[TodoCreated]) -> None:
    """Push a notification about a new todo to its assignee."""
    todo = envelope.data
    gateway.push(str(envelope.event_id), f"{todo.assignee or 'everyone'}: new todo {todo.title!r}")


class SearchIndex:
    """Indexes todo titles; refuses marked input until the 'fix' is deployed."""

    def __init__(self) -> None:
        self.documents: dict[str, str] = {}
        self.accept_marked = False

    def handle(self, envelope: Envelope[TodoCreated]) -> None:
        title = envelope.data.title
        if POISON_MARK in title and not self.accept_marked:
            raise PermanentHandlerError(f"cannot index title {title!r}: contains {POISON_MARK}")
        self.documents[envelope.aggregate_id or str(envelope.event_id)] = title


search_index = SearchIndex()
bus.subscribe(TodoCreated, handler=search_index, name="handlers.todo.index_for_search")
