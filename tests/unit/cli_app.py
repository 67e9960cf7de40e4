"""A tiny app for the CLI tests: an in-memory bus with one failing handler."""

from typing import Any

from eventbus import InMemoryEventBus
from tests.contract.events import ItemAdded

bus = InMemoryEventBus()
received: list[Any] = []
broken = {"on": True}


@bus.subscribe(ItemAdded)
def record(envelope: Any) -> None:
    received.append(envelope)


@bus.subscribe(ItemAdded, max_retries=0)
def reserve_stock(envelope: Any) -> None:
    if broken["on"]:
        raise LookupError(f"no stock for {envelope.data.sku}")
    received.append(("reserved", envelope.data.sku))
