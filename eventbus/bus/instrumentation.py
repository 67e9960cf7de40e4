"""The hook a bus offers to an observer of its publishes, replays and handler runs.

A bus's :attr:`~eventbus.bus.base.BaseEventBus.instrumentation` is ``None``
unless something (:func:`eventbus.tracing.instrument`) sets it: then
``publish``, a dead letter's replay and every handler run go through it. With
none set a bus pays one attribute read per publish and per handler run, and
imports nothing. This module names the shape only: it imports no tracing
library (the layers below the integrations never do).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from eventbus.bus.base import BaseEventBus, Subscription
    from eventbus.deadletter.record import DeadLetter
    from eventbus.domain.envelope import Envelope

__all__ = [
    "OUTCOMES",
    "HandlerRun",
    "Instrumentation",
    "Send",
    "bus_made",
    "live_buses",
    "on_every_bus",
]

#: What a bus does to send an envelope to subscriptions, returning the envelope sent.
Send = Callable[["Envelope[Any]", "Sequence[Subscription]"], "Envelope[Any]"]

#: The outcomes a handler run reports (as the metrics' ``outcome`` label, plus
#: ``rejected``: the handler raised Celery's ``Reject``, or its dead letter
#: could not be written and the message goes back to its queue).
OUTCOMES = ("success", "retry", "dead_lettered", "duplicate", "deferred", "rejected")


class HandlerRun(Protocol):
    """One handler run, as the instrumentation sees it."""

    def outcome(self, outcome: str, error: BaseException | None = None) -> None:
        """How the run ended (one of :data:`OUTCOMES`), and the exception it ended with.

        ``error``: for a failure the run caught itself (an exception that leaves
        the block is seen there).
        """


class Instrumentation(Protocol):
    """Wraps a bus's publishes, replays and handler runs (each method's ``send`` does the work).

    ``publish`` and ``replay`` return the envelope actually sent: they may add
    metadata (a trace context) before calling ``send``.
    """

    def publish(
        self, envelope: Envelope[Any], subscriptions: Sequence[Subscription], send: Send
    ) -> Envelope[Any]:
        """Publish ``envelope`` to ``subscriptions`` (zero or more) through ``send``."""

    def replay(
        self, envelope: Envelope[Any], record: DeadLetter, subscription: Subscription, send: Send
    ) -> Envelope[Any]:
        """Re-publish a dead letter's ``envelope`` to its handler through ``send``."""

    def running(
        self, subscription: Subscription, wire: object, *, attempt: int, task_id: str | None
    ) -> AbstractContextManager[HandlerRun]:
        """A block around one handler run of ``wire`` (the envelope as received, unchecked)."""

    def dead_lettered(self, record: DeadLetter) -> None:
        """``record`` was written, in the process and thread that wrote it (never raises)."""


# -- every bus, present and future (an instrumentor's way: opentelemetry-instrument) --

_buses: weakref.WeakSet[BaseEventBus] = weakref.WeakSet()
_on_every_bus: Callable[[BaseEventBus], None] | None = None
_lock = threading.Lock()


def on_every_bus(callback: Callable[[BaseEventBus], None] | None) -> None:
    """Call ``callback`` on every bus made so far and on each bus made from now on.

    ``None`` stops calling it on new buses (what it did to existing ones stays).
    """
    global _on_every_bus
    with _lock:
        _on_every_bus = callback
        buses = list(_buses)
    if callback is not None:
        for bus in buses:
            callback(bus)


def live_buses() -> list[BaseEventBus]:
    """The buses of this process that still exist."""
    with _lock:
        return list(_buses)


def bus_made(bus: BaseEventBus) -> None:
    """Called by every bus as it is made (its own attributes set): kept weakly, and given
    to the callback of :func:`on_every_bus`."""
    with _lock:
        _buses.add(bus)
        callback = _on_every_bus
    if callback is not None:
        callback(bus)
