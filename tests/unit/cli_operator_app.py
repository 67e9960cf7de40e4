"""An app for the operator CLI tests: an event at schema v2 (with its v1 upcaster), hostile names.

``-A tests.unit.cli_operator_app`` (an in-memory bus) or
``-A tests.unit.cli_operator_app:celery_app`` (an EventBus on kombu's memory
transport, for what only the Celery bus has: queues). Its own registry keeps
these types out of the process-wide one.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from eventbus import Envelope, Event, EventBus, EventRegistry, InMemoryEventBus
from tests.support import make_app

REGISTRY = EventRegistry()
#: ESC (a colour change), BEL, and a C1 CSI: what must never reach a terminal raw.
HOSTILE = "\x1b[31m\x07\x9b2J"


class ShipmentBooked(Event, registry=REGISTRY):
    """v2: the weight is in kilograms; v1 sent ``weight_grams``."""

    event_type = "op.shipment_booked"
    event_version = 2

    carrier: str = Field(min_length=1)
    weight_kg: float


@REGISTRY.upcaster(ShipmentBooked, from_version=1)
def _grams_to_kilograms(data: dict[str, Any]) -> dict[str, Any]:
    grams = data.pop("weight_grams")
    return {**data, "weight_kg": grams / 1000}


class Hostile(Event, registry=REGISTRY):
    event_type = "op.hostile" + HOSTILE


bus = InMemoryEventBus(event_registry=REGISTRY)
booked: list[Envelope[Any]] = []
BOOK = "tests.unit.cli_operator_app.book"
HOSTILE_HANDLER = "op.handler" + HOSTILE


@bus.subscribe(ShipmentBooked, max_retries=0)
def book(envelope: Envelope[ShipmentBooked]) -> None:
    booked.append(envelope)


@bus.subscribe(Hostile, name=HOSTILE_HANDLER, max_retries=0)
def hostile(envelope: Envelope[Hostile]) -> None:
    raise ValueError("boom " + HOSTILE)


#: The same handler on a Celery app (kombu's memory transport): handler queues.
celery_app = make_app("memory://", default_queue="op-default")
celery_bus = EventBus(celery_app, event_registry=REGISTRY)
celery_bus.subscribe(ShipmentBooked, handler=book, name=BOOK)
celery_bus.subscribe(ShipmentBooked, handler=book, name=BOOK + "_elsewhere", queue="op-other")
