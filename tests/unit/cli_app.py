"""A tiny app for the CLI tests: an in-memory bus with failing handlers."""

from typing import Any

from eventbus import InMemoryEventBus, PermanentHandlerError
from tests.contract.events import ItemAdded, ItemRemoved

bus = InMemoryEventBus()
received: list[Any] = []
reserved: list[Any] = []  # envelopes reserve_stock handled without failing
broken = {"on": True}


@bus.subscribe(ItemAdded)
def record(envelope: Any) -> None:
    received.append(envelope)


@bus.subscribe(ItemAdded, max_retries=0)
def reserve_stock(envelope: Any) -> None:
    if broken["on"]:
        raise LookupError(f"no stock for {envelope.data.sku}")
    received.append(("reserved", envelope.data.sku))
    reserved.append(envelope)


@bus.subscribe(ItemRemoved, max_retries=0)
def release_stock(envelope: Any) -> None:
    if broken["on"]:
        raise PermanentHandlerError(f"warehouse refuses to release {envelope.data.sku}")
    received.append(("released", envelope.data.sku))
