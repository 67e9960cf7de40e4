"""A worker's event loop does not sleep while it has callbacks ready to run.

kombu's event loop (``Hub.create_loop``, kombu 5.7) runs the callbacks queued
with ``hub.call_soon()``, then waits for a socket in a poll whose timeout
comes from the timers: up to 10 s. A callback that the loop's own thread
queues while those callbacks run is left for the next turn, and ``call_soon``
does not wake the poll when called from the loop's thread (its comment
expects the loop to look at the queue before polling again; it does not):
the callback waits out the poll. The same delay, for what the loop's timers
and ``on_tick`` callbacks queue, is celery/celery#7718, with the fix proposed
in celery/kombu#1587 ("hub: tick delay fix"), not merged.

Celery 5.7 sends a task's late acknowledgement with ``hub.call_soon()``
(``Consumer.call_soon_ack``), and the socket reader of the AMQP transport
re-queues itself with it after each message it reads. In a ``--pool solo``
worker on RabbitMQ (handler tasks are ``acks_late``) the task runs inside
that reader: when the reader, run from the queue, hands over the last message
the broker has sent, the acknowledgements wait in the queue; the broker,
with the prefetch count of messages unacknowledged, sends nothing more; the
poll waits out its 10 s. A worker took 10 s, 20 s... to drain a queue it
drains in a fraction of a second otherwise
(``tests/integration/test_worker_loop.py``).

:class:`ReadyCallbacksFirst`, a consumer step eventbus adds to a worker, makes
the loop's poll return at once while callbacks are queued: they run on the
next turn, before the loop waits again. Nothing queues itself on every turn
(the socket reader only after a read that got a message), so the loop does
not spin.

It reads the hub's private ``_ready``: checked once (:mod:`.compat`, feature
``worker_loop``, an optimisation); without it, or with
``eventbus_optimizations = False``, kombu's own loop runs.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from eventbus.celery.internals.compat import optimising

__all__ = ["ReadyCallbacksFirst"]

#: Attribute of a kombu poller whose ``poll`` this module wrapped.
_WRAPPED = "_eventbus_ready_callbacks_first"


class ReadyCallbacksFirst(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step: the worker's event loop does not wait while callbacks are queued."""

    name = "eventbus.ReadyCallbacksFirst"

    def start(self, consumer: Any) -> None:
        # Runs at each (re)start of the consumer, before its event loop takes
        # the poller's poll: kombu makes a new poller when it resets the hub
        # after a lost connection.
        hub = consumer.hub
        # None: no event loop (gevent, eventlet)
        if hub is not None and optimising(consumer.app.conf, "worker_loop"):
            poll_at_once_while_ready(hub)


def poll_at_once_while_ready(hub: Any) -> None:
    """Make ``hub``'s poll not wait while the hub has callbacks queued (``call_soon``)."""
    poller = hub.poller
    if getattr(poller, _WRAPPED, False) or not isinstance(getattr(hub, "_ready", None), set):
        return  # done already, or a kombu whose hub keeps its queue otherwise
    poll = poller.poll

    def poll_unless_ready(timeout: float | None) -> Any:
        # The loop runs what is queued on its next turn, right after this poll.
        return poll(0 if hub._ready else timeout)

    poller.poll = poll_unless_ready
    setattr(poller, _WRAPPED, True)
