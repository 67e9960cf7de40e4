"""``EventBusInstrumentor``: OpenTelemetry's instrumentor interface, for every bus at once.

``opentelemetry-instrument`` (OpenTelemetry's zero-code launcher) finds it by
its entry point (``opentelemetry_instrumentor``: ``eventbus``) and calls
``instrument()`` before your code runs, so every bus made afterwards is traced
with no change to your code::

    opentelemetry-instrument celery -A proj worker
    opentelemetry-instrument gunicorn proj.wsgi

By hand: ``EventBusInstrumentor().instrument(tracer_provider=...)``. It needs
``opentelemetry-instrumentation`` (installed with the ``tracing`` extra).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from eventbus.bus.base import BaseEventBus
from eventbus.bus.instrumentation import live_buses, on_every_bus
from eventbus.tracing import instrument, uninstrument

__all__ = ["EventBusInstrumentor"]


class EventBusInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces every bus of the process: those made already and those made later.

    ``instrument(tracer_provider=...)``: where the spans go (default: the
    global provider); ``uninstrument()``: stop tracing every bus.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return ()  # eventbus itself: nothing else to find installed

    def _instrument(self, **kwargs: Any) -> None:
        provider = kwargs.get("tracer_provider")

        def trace_bus(bus: BaseEventBus) -> None:
            instrument(bus, tracer_provider=provider)

        on_every_bus(trace_bus)

    def _uninstrument(self, **kwargs: Any) -> None:
        on_every_bus(None)
        for bus in live_buses():
            uninstrument(bus)
