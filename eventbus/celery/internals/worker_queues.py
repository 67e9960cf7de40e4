"""What a worker's queues say of how it was started, and what Celery writes in a task's headers.

Celery's ``Queues`` (``app.amqp.queues``) keeps the queues selected with
``-Q`` in ``_consume_from``: None when the worker was started without ``-Q``
and consumes every queue it knows. eventbus adds the handler queues to what
such a worker consumes. If Celery no longer has that attribute, the public
``consume_from`` answers almost as well: a worker without ``-Q`` consumes
every queue it knows (one started with ``-Q`` naming every known queue is
taken for one without, and also consumes the handler queues).

Celery cuts the ``argsrepr`` and ``kwargsrepr`` headers of a task message at
``AMQP.argsrepr_maxsize`` and ``kwargsrepr_maxsize`` bytes (undocumented
class attributes); the payload limit allows headers that much. Without them,
Celery 5.7's own figure: 1024 bytes each.
"""

from __future__ import annotations

from typing import Any

from eventbus.celery.internals.compat import available

__all__ = ["REPR_MAXSIZE", "argsrepr_maxsize", "consumes_every_queue", "repr_allowance"]

#: Celery 5.7's ``argsrepr_maxsize`` and ``kwargsrepr_maxsize``.
REPR_MAXSIZE = 1024


def consumes_every_queue(queues: Any) -> bool:
    """Whether a worker with these ``app.amqp.queues`` was started without ``-Q``."""
    if available("consume_handler_queues"):
        return queues._consume_from is None
    return set(queues.consume_from) == set(queues)


def repr_allowance(app: Any) -> int:
    """Bytes of ``argsrepr`` plus ``kwargsrepr`` Celery writes at most in a task's headers."""
    amqp = app.amqp
    if available("payload_allowance"):
        return int(amqp.argsrepr_maxsize or 0) + int(amqp.kwargsrepr_maxsize or 0)
    return 2 * REPR_MAXSIZE


def argsrepr_maxsize(app: Any) -> int:
    """Bytes of ``argsrepr`` Celery writes at most (publish formats it as Celery would)."""
    if available("payload_allowance"):
        return int(app.amqp.argsrepr_maxsize or 0)
    return REPR_MAXSIZE
