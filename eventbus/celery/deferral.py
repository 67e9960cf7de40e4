"""A delivery sent back to its queue to wait (its turn, or another delivery's claim).

A module of its own so that metrics can tell a deferral from a retry without
importing the bus.
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import Retry

from eventbus.guarantees.delivery import Deferral

__all__ = ["Deferred", "defer"]


class Deferred(Retry):  # type: ignore[misc]
    """A delivery sent back to its queue to run later; it spends none of its retries.

    Celery shows it as a retry (state RETRY in Flower, with the reason);
    metrics count it as ``deferred``.
    """


def defer(task: Any, deferral: Deferral) -> Deferred:
    """Send the running message again with a countdown, keeping its retry count."""
    request = task.request
    signature = task.signature_from_request(request, countdown=deferral.countdown)
    signature.apply_async()
    return Deferred(deferral.reason, when=deferral.countdown, sig=signature)
