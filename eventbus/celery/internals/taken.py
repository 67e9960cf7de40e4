"""The queue a message was taken from, as the transport that took it knows it.

A Redis element carries its own ``delivery_info``: its routing key is
whatever its producer wrote, and an element pushed onto a handler queue's
list may claim another queue's. eventbus's Redis transport
(:mod:`eventbus.celery.internals.redis_transport`) knows which list it popped, and notes that
queue on the message it delivers (:func:`note_taken_from`); an EventBus
worker screens a message by that queue (:func:`taken_from`), not by the
routing key it claims. Other transports note nothing (AMQP routes a message
to a queue by its routing key: a handler queue's binding takes its own name).
"""

from __future__ import annotations

__all__ = ["TAKEN_FROM", "note_taken_from", "taken_from"]

#: The attribute of a kombu message that names the queue it was taken from.
TAKEN_FROM = "eventbus_taken_from"


def note_taken_from(message: object, queue: str) -> None:
    """Note on ``message`` (a kombu message) that it was taken from ``queue``."""
    setattr(message, TAKEN_FROM, queue)


def taken_from(message: object) -> str | None:
    """The queue ``message`` was taken from, if its transport noted it."""
    queue = getattr(message, TAKEN_FROM, None)
    return queue if isinstance(queue, str) else None
