from eventbus import Event


class ItemAdded(Event):
    event_type = "contract.item_added"

    sku: str
    quantity: int


class ItemRemoved(Event):
    event_type = "contract.item_removed"

    sku: str
