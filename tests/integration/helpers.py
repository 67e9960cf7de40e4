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
from typing import Any, TypeVar

from pydantic import Field

from eventbus import Envelope, Event

T = TypeVar("T")

#: Upper bound for anything the worker must do once; success returns at once.
DEFAULT_TIMEOUT = 20.0


class OrderPlaced(Event):
    event_type = "it.order.placed"

    order_id: str
    quantity: int = Field(ge=1)


class OrderShipped(Event):
    event_type = "it.order.shipped"

    order_id: str
    carrier: str


# -- waiting without sleeping a guessed amount ----------------------------------


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Fails the test with ``message`` (a string or a callable describing the
    current state) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for: {text}")
        time.sleep(interval)  # poll


def assert_stays(
    predicate: Callable[[], object],
    *,
    duration: float = 0.5,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> None:
    """Assert that ``predicate`` holds on every poll for ``duration`` seconds."""
    deadline = time.monotonic() + duration
    while True:
        if not predicate():
            text = message() if callable(message) else message
            raise AssertionError(f"stopped holding: {text}")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)  # poll


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
