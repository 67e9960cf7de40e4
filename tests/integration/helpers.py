"""Shared pieces of the integration tests: event types, a recorder, polling helpers.

The event classes are defined once, here: an Event subclass registers itself
globally by its type name, and a second class claiming the same name raises
DuplicateEventType. Their type names start with ``it.`` so they cannot clash
with the example app's events.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from eventbus import Envelope, Event
from tests.support import DEFAULT_TIMEOUT, assert_stays, wait_for

__all__ = ["DEFAULT_TIMEOUT", "OrderPlaced", "OrderShipped", "Recorder", "assert_stays", "wait_for"]


class OrderPlaced(Event):
    event_type = "it.order.placed"

    order_id: str
    quantity: int = Field(ge=1)


class OrderShipped(Event):
    event_type = "it.order.shipped"

    order_id: str
    carrier: str


# Waiting without sleeping a guessed amount lives in tests/support.py.

# -- what the handlers did ---------------------------------------------------------


@dataclass(frozen=True)
class Call:
    handler: str
    event_id: str
    event_type: str
    at: float  # time.monotonic() when the handler started
    envelope: Envelope[Any]


class Recorder:
    """Thread-safe log of handler runs (handlers run in the worker's thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []

    def record(self, handler: str, envelope: Envelope[Any]) -> None:
        with self._lock:
            self._calls.append(
                Call(
                    handler, str(envelope.event_id), envelope.event_type, time.monotonic(), envelope
                )
            )

    def calls(self, handler: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if handler is None or c.handler == handler]

    def count(self, handler: str | None = None) -> int:
        return len(self.calls(handler))

    def pairs(self) -> Counter[tuple[str, str]]:
        """How often each (handler, event_id) ran."""
        return Counter((c.handler, c.event_id) for c in self.calls())

    def handler(
        self, label: str, fail: Callable[[Call], BaseException | None] | None = None
    ) -> Callable[[Envelope[Any]], None]:
        """A handler recording each run as ``label``; ``fail(call)`` may return an error."""

        def handle(envelope: Envelope[Any]) -> None:
            self.record(label, envelope)
            if fail is not None:
                error = fail(self.calls(label)[-1])
                if error is not None:
                    raise error

        handle.__name__ = handle.__qualname__ = label.replace(".", "_")
        return handle


# -- a pickle payload that tells if anyone unpickled it ------------------------------

UNPICKLED: list[str] = []


def _tripwire(token: str) -> str:
    UNPICKLED.append(token)
    return token


class Tripwire:
    """Pickles to a call of :func:`_tripwire`: unpickling it leaves a trace in UNPICKLED."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __reduce__(self) -> tuple[Any, ...]:
        return (_tripwire, (self.token,))
