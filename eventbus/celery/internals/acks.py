"""A busy RabbitMQ worker acknowledges a run of finished messages with one ``basic.ack``.

Celery acknowledges each message on its own (``Message.ack`` ->
``basic_ack(tag)``): one AMQP frame, one socket write, one broker-side ack per
message. A write on loopback also runs the broker's TCP receive path in the
writing process: in a py-spy profile of an eventbus worker draining no-op
handlers on RabbitMQ (prefork, ``bench/profiles``), those acks were 15% of
the worker's main process, 24% of a worker with Celery's defaults.

A late ack reaches the task consumer's channel from the event loop's ready
callbacks (Celery's ``call_soon_ack``). With this step the channel holds it
while the loop is busy: before the loop polls its sockets, held acks go out
when nothing is ready to be read or written (the poll would wait), when half
the prefetch count of them wait (the broker sends no more than its prefetch
count of unacknowledged messages), or when the first of them waits
:data:`MAX_HOLD_SECONDS`. They go out as one ``basic.ack`` with ``multiple``
set for a run of delivery tags that are all settled, from the channel's
first tag on; any other held ack (a message whose predecessor still runs) on
its own, as before. An idle worker acks as soon as Celery would.

Why ``multiple`` cannot acknowledge a message that is not done: it settles
every unacknowledged delivery of the channel up to its tag, and delivery tags
count the channel's deliveries from 1 without gaps. The step uses it only up
to a tag below which every tag was settled through this channel (acked or
rejected; rejects go out at once, after the held acks); a tag it never saw
settled (a running task, a delivery to another consumer) stops the run there.
Tracking gives up (every ack goes out as Celery sends it) past
:data:`MAX_TRACKED` settled tags above an unsettled one.

An ack asked from another thread than the loop's, with ``multiple`` set, or
once the loop closes (kombu's ``on_close``: the acks Celery queued run after
it) goes out at once, after the held ones. A held ack that cannot be sent
(the connection is lost) is logged as Celery logs it ("Couldn't ack"): the
broker delivers the message again, as it does any unacknowledged message of a
lost connection. The consumer logs, as it stops, how many acks went out in
how many frames.

It wraps the hub's poller's ``poll`` (as :mod:`.worker_loop` does), uses the
hub's ``on_close`` and wraps the channel's ``basic_ack``/``basic_reject``:
checked once (:mod:`.compat`, feature ``coalesced_acks``, an optimisation);
without them, on another transport than py-amqp, with
``eventbus_coalesced_acks = False`` or with ``eventbus_optimizations = False``,
Celery's own acks run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from eventbus.celery.internals.compat import optimising, switched_on

__all__ = ["MAX_TRACKED", "AckCoalescer", "CoalescedAcks"]

logger = logging.getLogger(__name__)

#: Settled tags kept above the lowest unsettled one before tracking gives up.
MAX_TRACKED = 65_536
#: The setting that turns the step off (False), and its environment variable.
SETTING = "eventbus_coalesced_acks"
ENV = "EVENTBUS_COALESCED_ACKS"
#: The longest a busy loop holds an ack (seconds).
MAX_HOLD_SECONDS = 0.005


class AckCoalescer:
    """Holds one channel's acks until :meth:`flush`; sends a settled run as one ack.

    ``ack(tag, multiple)`` and ``reject(tag, requeue)`` are the channel's own
    ``basic_ack`` and ``basic_reject``; ``on_error(exc, tags)`` is told of an
    ack that could not be sent. Only the thread that created it holds acks.
    """

    def __init__(
        self,
        ack: Callable[..., Any],
        reject: Callable[..., Any],
        on_error: Callable[[BaseException, list[int]], None],
    ) -> None:
        self._ack = ack
        self._reject = reject
        self._on_error = on_error
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        #: Every delivery tag up to this one was settled (sent, or held in _held).
        self._settled_to = 0
        #: Settled tags above the first unsettled one.
        self._settled_above: set[int] = set()
        #: Acks asked for and not sent yet, in the order asked.
        self._held: list[int] = []
        #: False: every ack and reject goes out at once (closing, or tracking gave up).
        self.holding = True
        #: basic.ack frames sent, and acks they carried (for tests and the bench).
        self.frames = 0
        self.acks = 0
        #: When the first of the held acks was asked for (time.monotonic()).
        self.held_since = 0.0

    @property
    def held(self) -> int:
        """Acks asked for and not sent yet."""
        return len(self._held)

    # -- the channel's basic_ack and basic_reject -----------------------------

    def basic_ack(self, delivery_tag: int, multiple: bool = False, **kwargs: Any) -> Any:
        if multiple or kwargs or not self.holding or threading.get_ident() != self._loop_thread:
            self.flush()
            self._settle(delivery_tag, multiple)
            self.frames += 1
            self.acks += 1
            return self._ack(delivery_tag, multiple, **kwargs)
        self._settle(delivery_tag, False)
        if not self._held:
            self.held_since = time.monotonic()
        self._held.append(delivery_tag)
        return None

    def basic_reject(self, delivery_tag: int, requeue: bool, **kwargs: Any) -> Any:
        # The held acks go first: a reject never overtakes an ack asked before it.
        self.flush()
        self._settle(delivery_tag, False)
        return self._reject(delivery_tag, requeue, **kwargs)

    # -- sending ---------------------------------------------------------------

    def flush(self) -> None:
        """Send the held acks: a settled run as one ``multiple`` ack, the rest one by one."""
        if not self._held or threading.get_ident() != self._loop_thread:
            return
        held, self._held = self._held, []
        with self._lock:
            settled_to = self._settled_to
        in_run = [tag for tag in held if tag <= settled_to]
        alone = [tag for tag in held if tag > settled_to]
        unsent = held
        try:
            if len(in_run) > 1:
                # Every tag up to settled_to is settled: the unacknowledged ones
                # among them are exactly the held ones (rejects and other acks
                # went out already), and the highest is unacknowledged.
                self._send(max(in_run), True, len(in_run))
                unsent = alone
            else:
                alone = in_run + alone
            for done, tag in enumerate(alone):
                self._send(tag, False, 1)
                unsent = alone[done + 1 :]
        except Exception as exc:
            # The connection is gone (or the channel closed): what is not acked
            # is delivered again. Celery logs its own failed acks the same way.
            self._on_error(exc, list(unsent))

    def _send(self, tag: int, multiple: bool, count: int) -> None:
        self._ack(tag, multiple)
        self.frames += 1
        self.acks += count

    # -- which tags are settled -------------------------------------------------

    def _settle(self, tag: int, up_to: bool) -> None:
        with self._lock:
            if up_to:
                if tag > self._settled_to:
                    self._settled_to = tag
                    self._settled_above = {t for t in self._settled_above if t > tag}
            elif tag > self._settled_to:
                self._settled_above.add(tag)
            settled_to, above = self._settled_to, self._settled_above
            while settled_to + 1 in above:
                settled_to += 1
                above.discard(settled_to)
            self._settled_to = settled_to
            if len(above) > MAX_TRACKED:
                # One tag never settles (a delivery this worker never acks):
                # stop keeping count, and hold nothing from now on.
                self.holding = False
                above.clear()


class CoalescedAcks(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step: a busy worker's acks go out together (py-amqp)."""

    name = "eventbus.CoalescedAcks"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self._undo: Callable[[], None] | None = None

    def start(self, consumer: Any) -> None:
        hub = consumer.hub
        task_consumer = getattr(consumer, "task_consumer", None)
        if hub is None or task_consumer is None:
            return  # no event loop (gevent, eventlet, solo without a hub)
        channel = task_consumer.channel
        conf = consumer.app.conf
        if not switched_on(conf, SETTING, ENV) or not _is_py_amqp(channel):
            return
        if not optimising(conf, "coalesced_acks"):
            return
        prefetch = int(getattr(consumer, "initial_prefetch_count", 0) or 0)
        self._undo = coalesce_acks(hub, channel, max(1, prefetch // 2) if prefetch else 64)

    def stop(self, consumer: Any) -> None:
        if self._undo is not None:
            undo, self._undo = self._undo, None
            undo()

    shutdown = stop


def coalesce_acks(hub: Any, channel: Any, hold: int = 1) -> Callable[[], None]:
    """Hold ``channel``'s acks until ``hub``'s loop would wait; returns the undo.

    Held acks go out before the loop polls with nothing ready to do, or once
    ``hold`` of them (or :data:`MAX_HOLD_SECONDS`) are waiting. Call it from
    the loop's thread, before the loop starts (it takes the poller's poll then).
    """

    def on_error(exc: BaseException, tags: list[int]) -> None:
        logger.critical("Couldn't ack %r, reason:%r", tags, exc, exc_info=True)

    coalescer = AckCoalescer(channel.basic_ack, channel.basic_reject, on_error)
    channel.basic_ack = coalescer.basic_ack
    channel.basic_reject = coalescer.basic_reject
    channel.eventbus_acks = coalescer  # (the tests and the bench read its counts)
    poller = hub.poller
    poll = poller.poll
    clock = time.monotonic

    def poll_after_acks(timeout: float | None) -> Any:
        held = coalescer.held
        if held:
            if held < hold and clock() < coalescer.held_since + MAX_HOLD_SECONDS:
                # Busy: the acks wait for this turn's events, if there are any.
                events = poll(0)
                if events:
                    return events
            coalescer.flush()
        return poll(timeout)

    def on_close(_hub: Any = None) -> None:
        # kombu runs the callbacks queued (Celery's acks) after these: they go at once.
        coalescer.flush()
        coalescer.holding = False

    def undo() -> None:
        on_close()
        logger.info(
            "eventbus: %d acks went out in %d basic.ack frames", coalescer.acks, coalescer.frames
        )
        hub.on_close.discard(on_close)
        if poller.__dict__.get("poll") is poll_after_acks:
            poller.poll = poll
        for name in ("basic_ack", "basic_reject", "eventbus_acks"):
            channel.__dict__.pop(name, None)

    poller.poll = poll_after_acks
    hub.on_close.add(on_close)
    return undo


def _is_py_amqp(channel: Any) -> bool:
    try:
        from amqp.channel import Channel  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - py-amqp is kombu's dependency
        return False
    return isinstance(channel, Channel)
