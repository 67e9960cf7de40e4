"""The demo's own example app: what ``eventbus demo`` runs, and nothing else.

The repository's top-level ``handlers/`` (with ``celeryconfig.py``) is the
example app of the compose stack, the tests and the README; it is not
installed: a top-level ``handlers`` module in site-packages would shadow a
user's own, or be shadowed by it. The demo tells its story on this app
instead, built afresh by :func:`create_demo_app`, under names no user's app
has:

- event types ``demo.*`` (``demo.user.registered``, ``demo.todo.created``),
- handler tasks ``eventbus.demo.*``,
- the handler queue ``QUEUE`` (``eventbus demo --queue``, default
  ``eventbus.demo``), its dead letters on ``QUEUE.dlq`` and its state keys
  under ``QUEUE:`` (``eventbus.demo.dlq`` and ``eventbus.demo:``),

so a demo pointed at a real broker never touches a user's queues, dead
letters or idempotency and ordering state, whatever ``EVENTBUS_QUEUE``,
``EVENTBUS_DLQ`` or ``EVENTBUS_REDIS_PREFIX`` say. Of the environment it reads
where that state lives (``EVENTBUS_REDIS_URL``; else the broker when it is
Redis, else this process's memory) and ``EVENTBUS_REDIS_TRANSPORT``.

Its handlers: a welcome email (idempotent) and an audit log for a new user;
todo statistics (ordered per todo), a notification whose gateway times out
twice per event (retried with a doubling backoff), and a search index that
refuses a title marked ``#poison`` (a permanent error: dead-lettered at once)
until :attr:`SearchIndex.accept_marked` is set, the "fix".
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from celery import Celery
from pydantic import Field

from eventbus.celery.bus import EventBus
from eventbus.domain.envelope import Envelope
from eventbus.domain.events import Event
from eventbus.errors import PermanentHandlerError

__all__ = [
    "DEMO_QUEUE",
    "DemoApp",
    "TodoCreated",
    "UserRegistered",
    "create_demo_app",
]

#: The demo's handler queue; its DLQ and state prefix derive from it.
DEMO_QUEUE = "eventbus.demo"
HANDLER_PREFIX = "eventbus.demo."  #: of every demo handler's task name
POISON_MARK = "#poison"  #: a todo title holding it is refused by the search index


class UserRegistered(Event):
    event_type = "demo.user.registered"

    user_id: str
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    name: str = Field(min_length=1)


class TodoCreated(Event):
    event_type = "demo.todo.created"

    title: str = Field(min_length=1, max_length=200)
    priority: Literal["low", "normal", "high"] = "normal"
    assignee: str | None = None


class GatewayTimeout(ConnectionError):
    """The push-notification gateway did not answer in time."""


@dataclass
class FlakyGateway:
    """A notification gateway that times out on the first two tries of each event."""

    failures_per_event: int = 2
    attempts: Counter[str] = field(default_factory=Counter)
    delivered: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, envelope: Envelope[TodoCreated]) -> None:
        key = str(envelope.event_id)
        with self.lock:
            self.attempts[key] += 1
            if self.attempts[key] <= self.failures_per_event:
                raise GatewayTimeout(f"gateway timed out (try {self.attempts[key]})")
            todo = envelope.data
            self.delivered.append(f"{todo.assignee or 'everyone'}: new todo {todo.title!r}")


@dataclass
class SearchIndex:
    """Indexes todo titles; refuses a marked title until the fix is deployed."""

    accept_marked: bool = False
    documents: dict[str, str] = field(default_factory=dict)

    def handle(self, envelope: Envelope[TodoCreated]) -> None:
        title = envelope.data.title
        if POISON_MARK in title and not self.accept_marked:
            raise PermanentHandlerError(f"cannot index title {title!r}: contains {POISON_MARK}")
        self.documents[envelope.aggregate_id or str(envelope.event_id)] = title


@dataclass
class Records:
    """What the other handlers did: emails sent, audit entries, statistics."""

    emails: list[str] = field(default_factory=list)
    audit: dict[str, str] = field(default_factory=dict)
    statistics: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send_welcome_email(self, envelope: Envelope[UserRegistered]) -> None:
        with self.lock:
            self.emails.append(envelope.data.email)

    def audit_log(self, envelope: Envelope[UserRegistered]) -> None:
        with self.lock:  # keyed by event id: a redelivery overwrites, never duplicates
            self.audit[str(envelope.event_id)] = f"{envelope.event_type} {envelope.data.user_id}"

    def update_statistics(self, envelope: Envelope[TodoCreated]) -> None:
        with self.lock:
            self.statistics[envelope.event_type] += 1


@dataclass
class DemoApp:
    """The demo's Celery app and bus, and the stand-ins for the systems its handlers call."""

    app: Celery
    bus: EventBus
    gateway: FlakyGateway
    search_index: SearchIndex
    records: Records


def create_demo_app(broker_url: str, queue: str = DEMO_QUEUE) -> DemoApp:
    """A new demo app on ``broker_url``: handlers on ``queue``, dead letters on ``queue.dlq``."""
    app = Celery("eventbus-demo", set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        broker_connection_retry_on_startup=True,
        # AMQP heartbeats wake the worker's event loop every 2 s, so it sees the
        # demo's stop request promptly.
        broker_heartbeat=2,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        # Flower, when one watches the broker, shows the demo's tasks too.
        worker_send_task_events=True,
        task_send_sent_event=True,
        eventbus_redis_url=os.environ.get("EVENTBUS_REDIS_URL") or None,
        eventbus_redis_prefix=f"{queue}:",
        eventbus_redis_transport=os.environ.get("EVENTBUS_REDIS_TRANSPORT") or "eventbus",
    )
    bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")
    demo = DemoApp(app, bus, FlakyGateway(), SearchIndex(), Records())
    records = demo.records

    def name(handler: str) -> str:
        return HANDLER_PREFIX + handler

    # idempotent: a redelivered or replayed event does not send a second email.
    bus.subscribe(
        UserRegistered,
        handler=records.send_welcome_email,
        name=name("send_welcome_email"),
        idempotent=True,
    )
    bus.subscribe(UserRegistered, handler=records.audit_log, name=name("audit_log"))
    # ordered: each todo's events are counted in sequence order, even with many workers.
    bus.subscribe(
        TodoCreated, handler=records.update_statistics, name=name("update_statistics"), ordered=True
    )
    # Retry only what a retry can fix; 1 s, 2 s, 4 s... without jitter, so the
    # demo shows the doubling (production handlers keep the jitter default).
    bus.subscribe(
        TodoCreated,
        handler=demo.gateway,
        name=name("notify_assignee"),
        retry_on=(ConnectionError,),
        max_retries=4,
        retry_backoff=1,
        retry_jitter=False,
    )
    bus.subscribe(TodoCreated, handler=demo.search_index, name=name("index_for_search"))
    return demo
