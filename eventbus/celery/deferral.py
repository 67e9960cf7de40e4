"""A delivery sent back to its queue to wait (its turn, or another delivery's claim).

A module of its own so that metrics can tell a deferral from a retry without
importing the bus.
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import Retry

from eventbus.celery.queue_types import whole_seconds
from eventbus.guarantees.delivery import Deferral

__all__ = ["Deferred", "defer"]


class Deferred(Retry):  # type: ignore[misc]
    """A delivery sent back to its queue to run later; it spends none of its retries.

    Celery shows it as a retry (state RETRY in Flower, with the reason);
    metrics count it as ``deferred``.
    """


def defer(task: Any, deferral: Deferral) -> Deferred:
    """Send the running message again with a countdown, keeping its retry count.

    On quorum queues the countdown is whole seconds, at least one: Celery's
    native delayed delivery cannot send less (:func:`~eventbus.celery.queue_types.whole_seconds`).
    """
    request = task.request
    countdown = whole_seconds(deferral.countdown, task.app.conf)
    signature = task.signature_from_request(request, countdown=countdown)
    signature.apply_async()
    return Deferred(deferral.reason, when=countdown, sig=signature)
