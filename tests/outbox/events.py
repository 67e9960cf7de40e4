"""The outbox tests' event types, in a registry of their own."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from eventbus import Envelope, Event, EventRegistry, create_event

EVENTS = EventRegistry()


class OrderPlaced(Event, registry=EVENTS):
    event_type = "outbox_test.order_placed"

    order: str
    total: int = Field(ge=0)


class OrderShipped(Event, registry=EVENTS):
    event_type = "outbox_test.order_shipped"

    order: str


def placed(order: str, total: int = 10, **fields: Any) -> Envelope[Any]:
    """A new order.placed envelope of aggregate Order ``order``."""
    return create_event(
        OrderPlaced,
        {"order": order, "total": total},
        aggregate_id=order,
        aggregate_type="Order",
        event_registry=EVENTS,
        **fields,
    )
