"""The event bus on a Celery app: one task per handler, one message per handler.

Publishing an event with K subscribers sends K task messages through one
producer from the app's pool; on Redis they go out in one pipelined round
trip (kombu's ``Producer.batch()``). Each handler task uses Celery's own
autoretry (exponential backoff, jitter); what happens inside the worker (a
terminal failure becomes a dead letter) lives in :mod:`eventbus.celery.worker`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import TYPE_CHECKING, Any

from celery.exceptions import Reject
from kombu.entity import Queue
from kombu.exceptions import KombuError

from eventbus.broker_errors import URL_ERRORS, describe_broker_error, url_of
from eventbus.bus.base import DEFAULT_MAX_PAYLOAD_BYTES, BaseEventBus, Subscription
from eventbus.celery import queue_types
from eventbus.celery.channel_kept import channel_kept
from eventbus.celery.dead_letter_before_ack import request_class
from eventbus.celery.deadletter.factory import store_for_app
from eventbus.celery.deferral import Deferred, defer
from eventbus.celery.internals.bound_queues import bound_queues
from eventbus.celery.internals.compat import optimising
from eventbus.celery.internals.confirms import confirmed
from eventbus.celery.internals.replication import replicated
from eventbus.celery.internals.sent_events import BATCH_MAX as SENT_EVENTS_BATCH_MAX
from eventbus.celery.internals.sent_events import SentEvents
from eventbus.celery.internals.worker_queues import argsrepr_maxsize
from eventbus.celery.queue_types import QueueType
from eventbus.celery.transport_selection import bind_transport, check_transport
from eventbus.deadletter.store import DEFAULT_DEAD_LETTER_QUEUE, DeadLetterStore
from eventbus.domain.envelope import Envelope
from eventbus.domain.events import EventRegistry
from eventbus.domain.options import HandlerOptions
from eventbus.errors import (
    ConfigurationError,
    EnvelopeDecodeError,
    PublishError,
    SubscriptionError,
)
from eventbus.guarantees.delivery import DUPLICATE, Deferral
from eventbus.redaction import safe_cause

if TYPE_CHECKING:
    from celery import Celery

    from eventbus.bus.instrumentation import HandlerRun
    from eventbus.guarantees.state import State

__all__ = ["Deferred", "EventBus", "bus_for_app"]

logger = logging.getLogger(__name__)

#: Redis operations a :meth:`EventBus.batch` buffers before it flushes (a message
#: and its task-sent event are two).
BATCH_MAX_MESSAGES = 1000

#: kombu's Redis visibility_timeout when none is configured, in seconds.
REDIS_DEFAULT_VISIBILITY_TIMEOUT = 3600

_BUSES: weakref.WeakKeyDictionary[Any, EventBus] = weakref.WeakKeyDictionary()


def bus_for_app(app: Celery) -> EventBus | None:
    """The :class:`EventBus` created on this Celery app, if any."""
    return _BUSES.get(app)


#: Who needs the state, for its errors.
STATE_PURPOSE = "idempotent and ordered handlers, and sequence numbers,"


class EventBus(BaseEventBus):
    """Domain events on Celery.

    ``app`` is your Celery app; handler tasks are built on its ``Task`` class,
    so Django's and Flask's task classes keep working. ``default_queue`` is
    where handlers without a ``queue`` option go (default: the
    ``eventbus_default_queue`` setting, else Celery's ``task_default_queue``);
    ``dead_letter_queue`` names the DLQ (default: ``eventbus_dead_letter_queue``,
    else ``eventbus.dlq``).

    On RabbitMQ the broker confirms every publish, waited for once per event
    (:mod:`eventbus.celery.internals.confirms`; ``eventbus_publish_confirms = False`` opts
    out); ``eventbus_confirm_timeout`` (seconds, default 10) bounds the wait. On
    Redis, ``eventbus_redis_wait_replicas = N`` makes a publish return once N
    replicas have its messages (``WAIT``, at most ``eventbus_redis_wait_timeout``
    seconds, default 1; :mod:`eventbus.celery.internals.replication`).
    """

    def __init__(
        self,
        app: Celery,
        *,
        default_queue: str | None = None,
        dead_letter_queue: str | None = None,
        event_registry: EventRegistry | None = None,
    ) -> None:
        super().__init__(event_registry=event_registry)
        self.app = app
        self._default_queue = default_queue
        self._dead_letter_queue = dead_letter_queue
        self._store: DeadLetterStore | None = None
        self._publish_errors: tuple[type[BaseException], ...] | None = None
        self._broker_dead_lettering: bool | None = None
        self._state: State | None = None
        self._batches = threading.local()  # the thread's open batch(), if any
        self._transport_checked = False
        # First, so that a worker picks its transport before anything connects.
        bind_transport(app)
        from eventbus.celery.worker import WorkerHooks

        self._worker_hooks = WorkerHooks(self)
        _BUSES[app] = self
        from eventbus.celery.replay_task import register_replay_task

        #: ``eventbus.replay_dead_letters``: replay from Flower or any task sender.
        self.replay_task = register_replay_task(self)
        from eventbus.celery.relay_task import register_relay_task

        #: ``eventbus.relay_outbox``: publish the outbox's pending rows (Celery beat).
        self.relay_task = register_relay_task(self)

    # -- configuration -----------------------------------------------------

    @property
    def default_queue(self) -> str:
        conf = self.app.conf
        return str(
            self._default_queue or conf.get("eventbus_default_queue") or conf.task_default_queue
        )

    @property
    def dead_letter_queue(self) -> str:
        """The dead-letter queue's name."""
        return str(
            self._dead_letter_queue
            or self.app.conf.get("eventbus_dead_letter_queue")
            or DEFAULT_DEAD_LETTER_QUEUE
        )

    def _setting(self, name: str, default: Any) -> Any:
        value = self.app.conf.get(f"eventbus_{name}")
        return default if value is None else value

    @property
    def state(self) -> State:
        """Idempotency claims, sequence counters, positions: Redis (``guarantees.state``)."""
        if self._state is None:
            from eventbus.guarantees.state import state_from_config

            self._state = state_from_config(self.app.conf, purpose=STATE_PURPOSE)
        return self._state

    def state_description(self) -> str:
        """Where :attr:`state` lives; checks its settings without making a Redis client."""
        if self._state is not None:
            return self._state.description
        from eventbus.guarantees.state import describe_state

        return describe_state(self.app.conf, purpose=STATE_PURPOSE)

    @property
    def max_payload_bytes(self) -> int:
        configured = self.app.conf.get("eventbus_max_payload_bytes")
        return DEFAULT_MAX_PAYLOAD_BYTES if configured is None else int(configured)

    @property
    def queues(self) -> list[str]:
        """The handler queues a worker must consume (``celery worker -Q ...``)."""
        return sorted(
            {sub.options.queue or self.default_queue for sub in self._subscriptions.values()}
        )

    @property
    def dead_letter_store(self) -> DeadLetterStore:
        if self._store is None:
            self._store = store_for_app(self.app, self.dead_letter_queue)
        return self._store

    def _driver(self) -> str | None:
        """The broker's kombu driver (``amqp``, ``redis``...); None for a URL kombu cannot use."""
        try:
            with self.app.connection_for_write() as conn:  # no I/O: reads the URL
                return str(conn.transport.driver_type)
        except URL_ERRORS:
            # A URL kombu cannot use (unknown scheme, malformed): the bus is
            # still made, so that whatever uses the broker (publish, the DLQ,
            # the CLI) can say what is wrong instead of the app's import.
            return None

    @property
    def broker_dead_lettering(self) -> bool:
        """Whether handler queues carry RabbitMQ's dead-letter exchange (to the DLQ).

        On by default on RabbitMQ (``eventbus_broker_dead_lettering``): a
        message the broker itself drops from a handler queue (rejected by a
        consumer, expired, over a length or delivery limit) lands in the DLQ.
        """
        if self._broker_dead_lettering is None:
            enabled = self.app.conf.get("eventbus_broker_dead_lettering", True)
            driver = self._driver()
            if driver is None:
                return False
            self._broker_dead_lettering = bool(enabled) and driver == "amqp"
        return self._broker_dead_lettering

    @property
    def queue_type(self) -> QueueType:
        """``eventbus_queue_type``: classic or quorum handler queues and DLQ (RabbitMQ)."""
        return queue_types.queue_type(self.app.conf)

    def handler_queue(self, name: str) -> Queue | str:
        """How a handler queue is declared: a name, or on RabbitMQ the queue with its DLX.

        With ``eventbus_queue_type = "quorum"``: a quorum queue with a delivery
        limit (:mod:`eventbus.celery.queue_types`); a setting that cannot work
        (another broker, no dead-letter exchange, Celery's default queue) raises
        :class:`~eventbus.errors.ConfigurationError`.
        """
        conf = self.app.conf
        if self.queue_type == "quorum" and (driver := self._driver()) is not None:
            queue_types.check_quorum_setup(
                conf, driver=driver, broker_dead_lettering=self.broker_dead_lettering
            )
            if name == conf.task_default_queue:
                raise ConfigurationError(
                    f"eventbus_queue_type is 'quorum', but handler queue {name!r} is Celery's "
                    "default queue (task_default_queue), which Celery declares for the app's "
                    "other tasks (task_default_queue_type) without a delivery limit or "
                    "dead-letter exchange: give the handlers a queue of their own "
                    "(eventbus_default_queue, or the queue option of subscribe)"
                )
            queue_types.check_queue_names({name, *self.queues})
        if not self.broker_dead_lettering or name == conf.task_default_queue:
            # Celery's default queue is shared with the app's other tasks, which
            # declare it plainly: an inequivalent declaration would fail theirs.
            return name
        return queue_types.handler_queue(name, conf=conf, dead_letter_queue=self.dead_letter_queue)

    def declare_queues(self, names: Collection[str] | None = None) -> None:
        """Declare the DLQ and the handler queues (of ``names``, default all) on the broker now.

        A queue or exchange that exists with other arguments (a classic queue,
        now ``eventbus_queue_type = "quorum"``) raises
        :class:`~eventbus.errors.ConfigurationError`, naming it and the setting.
        """
        self.dead_letter_store.declare()
        wanted = [name for name in self.queues if names is None or name in names]
        declared = [self.handler_queue(name) for name in wanted]
        queues = [queue for queue in declared if isinstance(queue, Queue)]
        if not queues:
            return
        with self.app.connection_for_write() as conn:
            for queue in queues:
                channel = conn.channel()  # one each: a refused declaration closes it
                try:
                    queue.bind(channel).declare()
                except conn.channel_errors as exc:
                    mismatch = queue_types.declaration_mismatch(exc, self.app.conf)
                    if mismatch is not None:
                        raise mismatch from exc
                    raise
                finally:
                    with suppress(*conn.connection_errors, *conn.channel_errors):
                        channel.close()

    def _resolve_options(self, given: Mapping[str, Any]) -> HandlerOptions:
        options = HandlerOptions.resolve(given, self.app.conf)
        visibility = (self.app.conf.broker_transport_options or {}).get("visibility_timeout")
        if visibility is None and str(self.app.conf.broker_url or "").startswith("redis"):
            visibility = REDIS_DEFAULT_VISIBILITY_TIMEOUT
        if visibility is not None and options.retry_backoff_max >= visibility:
            # On Redis a retry waiting longer than the visibility timeout is
            # delivered a second time while the first copy still waits.
            raise SubscriptionError(
                f"retry_backoff_max ({options.retry_backoff_max}s) must stay below the "
                f"broker's visibility_timeout ({visibility}s)"
            )
        return options

    # -- tasks -------------------------------------------------------------

    def _attach(self, subscription: Subscription) -> None:
        options = subscription.options
        guard = subscription.guard
        assert guard is not None
        event_registry = self.event_registry
        permanent, retry_on = options.permanent_errors, options.retry_on
        hooks = self._worker_hooks

        def run(task: Any, envelope: object = None, *args: object, **kwargs: object) -> str | None:
            instrumentation = self.instrumentation
            if instrumentation is None:
                return execute(task, envelope, args, kwargs, None)
            request = task.request
            with instrumentation.running(
                subscription, envelope, attempt=(request.retries or 0) + 1, task_id=request.id
            ) as handler_run:
                return execute(task, envelope, args, kwargs, handler_run)

        def execute(
            task: Any,
            envelope: object,
            args: tuple[object, ...],
            kwargs: dict[str, object],
            handler_run: HandlerRun | None,
        ) -> str | None:
            request = task.request
            retries = request.retries or 0

            def will_retry(exc: BaseException) -> bool:
                # What Celery's autoretry will do with this exception.
                if isinstance(exc, Reject):
                    return bool(exc.requeue)  # never autoretried: re-queued, or recorded
                return (
                    isinstance(exc, retry_on)
                    and not isinstance(exc, permanent)
                    and retries < task.max_retries
                )

            try:
                if args or kwargs:
                    raise EnvelopeDecodeError("a handler task takes exactly one envelope argument")
                result = guard(
                    Envelope.from_wire(envelope, event_registry),
                    owner=str(request.id),
                    attempt=retries + 1,
                    will_retry=will_retry,
                )
            except Deferral as deferral:
                if handler_run is not None:
                    handler_run.outcome("deferred")
                raise defer(task, deferral) from None
            except Reject:
                # The handler's own: Celery re-queues the message, or the task's
                # Request records it before the ack (a dropping reject).
                if handler_run is not None:
                    handler_run.outcome("rejected")
                raise
            except Exception as exc:
                if will_retry(exc):
                    if handler_run is not None:
                        handler_run.outcome("retry")
                    raise
                # Terminal: record it before the ack (re-queued if it cannot be).
                try:
                    hooks.dead_letter_in_task(task, subscription, exc)
                except Reject:
                    if handler_run is not None:
                        handler_run.outcome("rejected")  # not written: back to its queue
                    raise
                if handler_run is not None:
                    handler_run.outcome("dead_lettered")
                raise
            if handler_run is not None:
                handler_run.outcome("duplicate" if result == DUPLICATE else "success")
            return result

        module, _, short = subscription.name.rpartition(".")
        run.__name__ = run.__qualname__ = short
        run.__module__ = module or __name__
        run.__doc__ = getattr(subscription.handler, "__doc__", None)

        task_options: dict[str, Any] = {
            "name": subscription.name,
            "bind": True,
            "shared": False,  # registered on this app only
            "autoretry_for": options.retry_on,
            # A Reject (eventbus's own when a dead letter could not be written:
            # re-queue) is never turned into a retry, which would count an attempt.
            "dont_autoretry_for": (*options.permanent_errors, Reject),
            "max_retries": options.max_retries,
            "retry_backoff": options.retry_backoff or False,
            "retry_backoff_max": options.retry_backoff_max,
            "retry_jitter": options.retry_jitter,
            # At-least-once: ack after the handler ran; a lost worker's
            # message goes back to the queue.
            "acks_late": True,
            "reject_on_worker_lost": True,
            # A terminal failure (a hard time limit too) is a dead letter, then an
            # ack: never a reject, which RabbitMQ would dead-letter a second time.
            "acks_on_failure": True,
            "acks_on_timeout": True,
            # Failures Celery reports in the worker's main process: the record
            # is written (off the event loop) before the ack.
            "Request": request_class(self.app.Task.Request, hooks),
            "ignore_result": True,
            "typing": False,  # run() checks its own argument (and dead-letters a bad one)
            "queue": self.handler_queue(options.queue or self.default_queue),
            "time_limit": options.time_limit,
            "soft_time_limit": options.soft_time_limit,
            "rate_limit": options.rate_limit,
        }
        if not options.retry_backoff:
            task_options["retry_kwargs"] = {"countdown": 0}
        subscription.task = self.app.task(**task_options)(run)

    # -- publishing --------------------------------------------------------

    @contextmanager
    def batch(self, max_size: int = BATCH_MAX_MESSAGES) -> Iterator[None]:
        # (Documented on BaseEventBus.batch.) One producer for the block, in a
        # kombu Producer.batch() (flushed every ``max_size`` Redis operations,
        # task-sent events included) and one confirm window on RabbitMQ; the
        # per-event blocks of _dispatch nest into them and wait for nothing.
        if getattr(self._batches, "open", None) is not None or self.app.conf.task_always_eager:
            yield
            return
        state = _Batch()
        try:
            with (
                self._producer() as producer,
                self._confirmed(producer),
                self._replicated(producer),
                producer.batch(max_size),
            ):
                state.producer = producer
                state.sent_events = SentEvents(self.app)
                self._batches.open = state
                try:
                    yield
                finally:
                    self._batches.open = None
                if state.failure is not None:
                    raise state.failure
                # The task-sent events of the batch's messages not sent yet, with
                # them (Celery's dispatcher buffers a failed send). A batch that
                # raised sends none: its caller publishes its events again.
                state.sent_events.send(producer)
        except self._retryable_publish_errors() as exc:
            mismatch = queue_types.declaration_mismatch(exc, self.app.conf)
            why = f"{type(exc).__name__}: {exc}; publish them again (some may have been delivered)"
            raise PublishError(
                f"a batch of {state.events} event(s) was not sent, or not confirmed: "
                f"{why if mismatch is None else mismatch}"
            ) from exc
        # Sent (and confirmed): now they count as published. A block that
        # raised counts none: its caller publishes them again.
        self.published.update(state.published)

    def _batch_published(self) -> Counter[str] | None:
        batch: _Batch | None = getattr(self._batches, "open", None)
        return None if batch is None else batch.published

    def _dispatch(self, envelope: Envelope[Any], subscriptions: Sequence[Subscription]) -> None:
        args = (self._wire(envelope),)
        # Celery formats each message's arguments for Flower and the logs;
        # the K messages of one event carry the same envelope: format it once.
        argsrepr = _argsrepr(args, argsrepr_maxsize(self.app))
        if self.app.conf.task_always_eager:
            for sub in subscriptions:
                sub.task.apply(args)
            return
        batch: _Batch | None = getattr(self._batches, "open", None)
        if batch is not None:
            self._dispatch_in_batch(batch, envelope, args, argsrepr, subscriptions)
            return
        policy = self.app.conf.task_publish_retry_policy or {}
        max_retries = int(policy.get("max_retries", 3) or 0)
        interval = float(policy.get("interval_start", 0) or 0)
        step = float(policy.get("interval_step", 0.2) or 0)
        interval_max = float(policy.get("interval_max", 1) or 0)
        attempt = 0
        while True:
            sent: list[str] = []
            try:
                # On Redis all K messages (and their task-sent events, in one
                # message: eventbus.celery.internals.sent_events) go out in one pipeline; other
                # transports publish at once. On RabbitMQ the broker confirms
                # them, waited for once per event.
                with (
                    self._producer() as producer,
                    self._confirmed(producer),
                    # After the messages went out (the batch flushed): on Redis,
                    # with eventbus_redis_wait_replicas, wait for the replicas.
                    self._replicated(producer),
                    # One message gains nothing from a batch (on Redis a
                    # pipeline object per event costs more than it saves).
                    producer.batch() if len(subscriptions) > 1 else nullcontext(),
                    # A connection kombu lost and replaced mid-send: retried here.
                    channel_kept(producer, self._retryable_publish_errors()),
                ):
                    self._send_messages(producer, args, argsrepr, subscriptions, sent)
                return
            except self._retryable_publish_errors() as exc:
                mismatch = queue_types.declaration_mismatch(exc, self.app.conf)
                if mismatch is not None:  # a queue declared otherwise before: no retry helps
                    raise PublishError(
                        f"could not publish {envelope.event_type} {envelope.event_id}: {mismatch}",
                        sent=tuple(sent),
                    ) from exc
                # Celery already retried each message by its policy; a batch
                # flush is never retried inside kombu, so retry the event
                # here. A flush that failed half-way may have delivered some
                # messages: a retry can duplicate them (at-least-once).
                if attempt >= max_retries:
                    raise PublishError(
                        f"could not publish {envelope.event_type} {envelope.event_id} "
                        f"after {attempt + 1} attempt(s): {type(exc).__name__}: {exc}",
                        sent=tuple(sent),
                    ) from exc
                time.sleep(min(interval + step * attempt, interval_max))
                attempt += 1

    def _send_messages(
        self,
        producer: Any,
        args: tuple[dict[str, Any]],
        argsrepr: str,
        subscriptions: Sequence[Subscription],
        sent: list[str],
        batch_events: SentEvents | None = None,
    ) -> None:
        """One message per handler on ``producer`` (names appended to ``sent``), then
        their task-sent events as one message (:mod:`eventbus.celery.internals.sent_events`).

        In a batch (``batch_events``, the batch's collector) the task-sent events
        are kept for the batch: sent once :data:`SENT_EVENTS_BATCH_MAX` are kept.
        """
        sent_events = SentEvents(self.app) if batch_events is None else batch_events
        for sub, queue in bound_queues(self.app, producer, subscriptions):
            sub.task.apply_async(
                args,
                producer=producer,
                argsrepr=argsrepr,
                kwargsrepr="{}",
                **sent_events.options(),
                **queue,
            )
            sent.append(sub.name)
        if batch_events is None or sent_events.kept >= SENT_EVENTS_BATCH_MAX:
            sent_events.send(producer)

    def _producer(self) -> AbstractContextManager[Any]:
        """A producer from the app's pool, once the broker transport was found to fit its URL."""
        if not self._transport_checked:
            check_transport(self.app)  # ConfigurationError: a transport that cannot serve the URL
            self._transport_checked = True
        return self.app.producer_or_acquire()  # type: ignore[no-any-return]

    def _confirmed(self, producer: Any) -> AbstractContextManager[None]:
        """Confirms of the block's publishes on RabbitMQ (``celery.internals.confirms``)."""
        conf = self.app.conf
        return confirmed(
            producer,
            timeout=conf.get("eventbus_confirm_timeout"),
            enabled=conf.get("eventbus_publish_confirms", True),
            batched=optimising(conf, "batched_confirms"),
            coalesce=optimising(conf, "coalesced_writes"),
        )

    def _replicated(self, producer: Any) -> AbstractContextManager[None]:
        """Replicas of the block's publishes on Redis (``celery.internals.replication``)."""
        conf = self.app.conf
        return replicated(
            producer,
            int(conf.get("eventbus_redis_wait_replicas") or 0),
            conf.get("eventbus_redis_wait_timeout"),
        )

    def _dispatch_in_batch(
        self,
        batch: _Batch,
        envelope: Envelope[Any],
        args: tuple[dict[str, Any]],
        argsrepr: str,
        subscriptions: Sequence[Subscription],
    ) -> None:
        # No retry here: a failed batch is retried as a whole by its caller.
        if batch.failure is not None:
            raise PublishError(
                f"not publishing {envelope.event_type} {envelope.event_id}: "
                f"this batch already failed ({batch.failure})"
            )
        batch.events += 1
        try:
            with channel_kept(batch.producer, self._retryable_publish_errors()):
                self._send_messages(
                    batch.producer, args, argsrepr, subscriptions, [], batch.sent_events
                )
        except self._retryable_publish_errors() as exc:
            batch.failure = exc
            raise PublishError(
                f"could not publish {envelope.event_type} {envelope.event_id} in a batch: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _retryable_publish_errors(self) -> tuple[type[BaseException], ...]:
        if self._publish_errors is None:
            try:
                with self.app.connection_for_write() as conn:
                    errors = conn.connection_errors + conn.channel_errors
            except URL_ERRORS as exc:
                # Asked while a publish failed: the broker URL itself is unusable
                # (unknown scheme, malformed), which no retry fixes.
                url = url_of(self.app.conf.broker_url)
                raise PublishError(
                    f"cannot publish: {describe_broker_error(exc, [url])}"
                ) from safe_cause(exc, [url])
            self._publish_errors = (KombuError, OSError, *errors)
        return self._publish_errors

    # -- ownership (for the worker hooks and metrics) ------------------------

    def subscription_of(self, task: object) -> Subscription | None:
        """The subscription whose handler task ``task`` is, if it is one of this bus's."""
        # Signals are process-wide: two apps may each have a handler of this name.
        if getattr(task, "app", None) is not self.app:
            return None
        return self._subscriptions.get(getattr(task, "name", None) or "")

    def owns(self, task: object) -> bool:
        """Whether ``task`` is a handler task of this bus (on its app, by its name)."""
        return self.subscription_of(task) is not None

    def has_handler(self, name: object) -> bool:
        return isinstance(name, str) and name in self._subscriptions


class _Batch:
    """The state of one thread's open :meth:`EventBus.batch`."""

    __slots__ = ("events", "failure", "producer", "published", "sent_events")

    def __init__(self) -> None:
        self.producer: Any = None
        self.sent_events: SentEvents | None = None  # the batch's task-sent events
        self.events = 0
        self.failure: BaseException | None = None
        #: Events of the block by type: published once the block was sent.
        self.published: Counter[str] = Counter()


def _argsrepr(args: tuple[dict[str, Any]], maxsize: int) -> str:
    """What Flower and the logs show of a handler message's argument, at most ``maxsize``.

    Celery's ``saferepr`` guards against any object; an envelope's wire dict is
    plain JSON data of bounded size (``eventbus_max_payload_bytes``), for which
    the built-in ``repr`` is safe and several times faster.
    """
    text = repr(args)
    return text if len(text) <= maxsize else text[: max(0, maxsize - 3)] + "..."
