"""The contract harness: a bus (in-memory, Celery on Redis or RabbitMQ) and its worker."""

from __future__ import annotations

import threading
from collections import Counter
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from celery import signals

from eventbus import BaseEventBus, EventBus, InMemoryEventBus
from tests.support import (
    delete_queues,
    delete_state,
    make_app,
    require_broker,
    running_worker,
    unique,
    wait_for,
)


class Harness:
    """A bus plus the means to run its handlers and wait for them."""

    def __init__(self, kind: str, **settings: Any) -> None:
        self.kind = kind
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.finished: Counter[str] = Counter()  # handler task runs that returned (Celery)
        if kind == "memory":
            self.bus: BaseEventBus = InMemoryEventBus()
            self.app = None
        else:
            url = require_broker(kind)
            self.queue, self.dlq = unique("contract"), unique("contract-dlq")
            self.app = make_app(url, **settings)
            self.bus = EventBus(self.app, default_queue=self.queue, dead_letter_queue=self.dlq)
            signals.task_success.connect(self._on_success, weak=False, dispatch_uid=self.queue)

    def _on_success(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is self.app:
            with self.lock:
                self.finished[sender.name] += 1

    def wait_finished(self, handler: str, runs: int) -> None:
        """Wait until ``runs`` deliveries to ``handler`` returned (ran or were skipped)."""
        if self.app is not None:
            self.wait(lambda: self.finished[handler] >= runs, f"{runs} runs of {handler}")

    def record(self, handler: str, envelope: Any) -> None:
        with self.lock:
            self.calls.append((handler, str(envelope.event_id)))

    def count(self, handler: str) -> int:
        with self.lock:
            return sum(1 for name, _ in self.calls if name == handler)

    def worker(self) -> AbstractContextManager[None]:
        if self.app is None:
            return nullcontext()
        return running_worker(self.app, [self.queue])

    def wait(self, predicate: Any, what: str) -> None:
        wait_for(predicate, timeout=30, message=what)

    def close(self) -> None:
        if self.app is not None:
            signals.task_success.disconnect(dispatch_uid=self.queue)
            delete_queues(self.app, self.queue, self.dlq)
            delete_state(self.app)
