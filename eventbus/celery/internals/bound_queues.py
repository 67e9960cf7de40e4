"""Handler queues bound to a producer's channel once, for the publish path.

Celery sends each task message with ``declare=[queue]``, and kombu's
``maybe_declare`` binds an unbound queue to the channel (a copy of the queue
and its exchange, ~40 us here) before it finds it in the connection's cache
of declared entities: on every message. Passing ``apply_async`` the queue
already bound to the producer's channel skips that copy.

It reads the producer's private ``_channel`` (not to resolve a channel
promise): checked once (:mod:`.compat`, feature ``bound_queues``, an
optimisation); without it, or with ``eventbus_optimizations = False``, no
queue option is given and Celery routes and binds as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kombu.entity import Queue
from kombu.utils import functional as kombu_functional

from eventbus.celery.internals.compat import optimising

if TYPE_CHECKING:
    from celery import Celery

    from eventbus.bus.base import Subscription

__all__ = ["bound_queues"]

#: Attribute of a producer's channel: its bound copies of handler queues.
_BOUND_QUEUES = "_eventbus_bound_queues"


def bound_queues(
    app: Celery, producer: Any, subscriptions: Sequence[Subscription]
) -> list[tuple[Subscription, dict[str, Any]]]:
    """Each handler task's queue bound to the producer's channel, as ``apply_async`` options.

    The queue is the one Celery would route the task to (its ``queue``
    option; a name as Celery's router resolves it), bound once per channel;
    everything else is unchanged: the declaration (cached per connection),
    the retry, the signals. A queue Celery's router could not resolve, or a
    producer not connected yet, gets no option: Celery routes as usual.
    """
    if not optimising(app.conf, "bound_queues"):
        return [(sub, {}) for sub in subscriptions]
    channel = getattr(producer, "_channel", None)
    if isinstance(channel, kombu_functional.ChannelPromise):
        # A pooled producer gets its connection's default channel as a
        # promise (RabbitMQ's confirms have resolved it already): once
        # connected, it is the channel kombu's publish resolves next.
        connection = producer.connection
        channel = producer.channel if connection is not None and connection.connected else None
    if channel is None:
        return [(sub, {}) for sub in subscriptions]
    cache: dict[str, tuple[Any, Any]] | None = getattr(channel, _BOUND_QUEUES, None)
    if cache is None:
        cache = {}
        try:
            setattr(channel, _BOUND_QUEUES, cache)  # lives and dies with the channel
        except AttributeError:
            return [(sub, {}) for sub in subscriptions]
    options: list[tuple[Subscription, dict[str, Any]]] = []
    queues = None
    for sub in subscriptions:
        queue = sub.task.queue
        if not isinstance(queue, Queue):
            if queues is None:
                queues = app.amqp.router.queues
            queue = queues.get(queue) if isinstance(queue, str) else None
            if queue is None:  # Celery's router decides (creates it, or refuses)
                options.append((sub, {}))
                continue
        known = cache.get(sub.name)
        if known is None or known[0] is not queue:
            known = cache[sub.name] = (queue, queue.bind(channel))
        options.append((sub, {"queue": known[1]}))
    return options
