"""The event bus on a Celery app: one task per handler, one message per handler.

Publishing an event with K subscribers sends K task messages through one
producer from the app's pool; on Redis they go out in one pipelined round
trip (kombu's ``Producer.batch()``). Each handler task uses Celery's own
autoretry (exponential backoff, jitter); a terminal failure of any kind
is caught by the ``task_failure`` signal and written to the dead-letter queue.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from celery import bootsteps, signals
from celery.exceptions import TimeLimitExceeded, WorkerLostError
from celery.utils.saferepr import saferepr
from kombu.exceptions import KombuError

from eventbus.bus import BaseEventBus, Subscription
from eventbus.deadletter.record import MAX_RAW_BODY, DeadLetter, DeadLetterReason
from eventbus.deadletter.store import DEFAULT_DEAD_LETTER_QUEUE, DeadLetterStore, store_for_app
from eventbus.envelope import Envelope
from eventbus.errors import (
    DeadLetterError,
    EnvelopeDecodeError,
    PublishError,
    SubscriptionError,
)
from eventbus.events import EventRegistry
from eventbus.options import HandlerOptions

if TYPE_CHECKING:
    from celery import Celery
    from kombu.message import Message

__all__ = ["EventBus", "bus_for_app"]

logger = logging.getLogger(__name__)

#: kombu's Redis visibility_timeout when none is configured, in seconds.
REDIS_DEFAULT_VISIBILITY_TIMEOUT = 3600

_BUSES: weakref.WeakKeyDictionary[Any, EventBus] = weakref.WeakKeyDictionary()


def bus_for_app(app: Celery) -> EventBus | None:
    """The :class:`EventBus` created on this Celery app, if any."""
    return _BUSES.get(app)


class EventBus(BaseEventBus):
    """Domain events on Celery.

    ``app`` is your Celery app; handler tasks are built on its ``Task`` class,
    so Django's and Flask's task classes keep working. ``default_queue`` is
    where handlers without a ``queue`` option go (default: the
    ``eventbus_default_queue`` setting, else Celery's ``task_default_queue``);
    ``dead_letter_queue`` names the DLQ (default: ``eventbus_dead_letter_queue``,
    else ``eventbus.dlq``).
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
        uid = f"eventbus-{id(self)}"
        signals.task_failure.connect(self._on_task_failure, dispatch_uid=uid)
        signals.task_rejected.connect(self._on_message_rejected, dispatch_uid=uid)
        signals.task_unknown.connect(self._on_unknown_task, dispatch_uid=uid)
        signals.worker_init.connect(self._on_worker_init, dispatch_uid=uid)
        app.steps["consumer"].add(_dead_letter_undecodable_step(self))
        _BUSES[app] = self
        from eventbus.deadletter.task import register_replay_task

        #: ``eventbus.replay_dead_letters``: replay from Flower or any task sender.
        self.replay_task = register_replay_task(self)

    # -- configuration -----------------------------------------------------

    @property
    def default_queue(self) -> str:
        conf = self.app.conf
        return str(
            self._default_queue or conf.get("eventbus_default_queue") or conf.task_default_queue
        )

    @property
    def dead_letter_queue(self) -> str:
        return str(
            self._dead_letter_queue
            or self.app.conf.get("eventbus_dead_letter_queue")
            or DEFAULT_DEAD_LETTER_QUEUE
        )

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
        call = subscription.call
        event_registry = self.event_registry

        def run(task: Any, envelope: object = None, *args: object, **kwargs: object) -> None:
            if args or kwargs:
                raise EnvelopeDecodeError("a handler task takes exactly one envelope argument")
            call(Envelope.from_wire(envelope, event_registry))

        module, _, short = subscription.name.rpartition(".")
        run.__name__ = run.__qualname__ = short
        run.__module__ = module or __name__
        run.__doc__ = getattr(subscription.handler, "__doc__", None)

        task_options: dict[str, Any] = {
            "name": subscription.name,
            "bind": True,
            "shared": False,  # registered on this app only
            "autoretry_for": options.retry_on,
            "dont_autoretry_for": options.permanent_errors,
            "max_retries": options.max_retries,
            "retry_backoff": options.retry_backoff or False,
            "retry_backoff_max": options.retry_backoff_max,
            "retry_jitter": options.retry_jitter,
            # At-least-once: ack after the handler ran; a lost worker's
            # message goes back to the queue.
            "acks_late": True,
            "reject_on_worker_lost": True,
            "ignore_result": True,
            "typing": False,  # run() checks its own argument (and dead-letters a bad one)
            "queue": options.queue or self.default_queue,
            "time_limit": options.time_limit,
            "soft_time_limit": options.soft_time_limit,
            "rate_limit": options.rate_limit,
        }
        if not options.retry_backoff:
            task_options["retry_kwargs"] = {"countdown": 0}
        subscription.task = self.app.task(**task_options)(run)

    # -- publishing --------------------------------------------------------

    def _dispatch(self, envelope: Envelope[Any], subscriptions: Sequence[Subscription]) -> None:
        payload = envelope.to_wire()
        args = (payload,)
        # Celery formats each message's arguments for Flower and the logs;
        # the K messages of one event carry the same envelope: format it once.
        argsrepr = saferepr(
            args, self.app.amqp.argsrepr_maxsize, maxlevels=self.app.conf.task_repr_maxlevels
        )
        if self.app.conf.task_always_eager:
            for sub in subscriptions:
                sub.task.apply(args)
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
                # On Redis all K messages (and their task-sent events) go out
                # in one pipeline; other transports publish at once.
                with self.app.producer_or_acquire() as producer, producer.batch():
                    for sub in subscriptions:
                        sub.task.apply_async(
                            args, producer=producer, argsrepr=argsrepr, kwargsrepr="{}"
                        )
                        sent.append(sub.name)
                return
            except self._retryable_publish_errors() as exc:
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

    def _retryable_publish_errors(self) -> tuple[type[BaseException], ...]:
        if self._publish_errors is None:
            with self.app.connection_for_write() as conn:
                errors = conn.connection_errors + conn.channel_errors
            self._publish_errors = (KombuError, OSError, *errors)
        return self._publish_errors

    # -- worker side: dead-lettering ---------------------------------------

    def _owns_task(self, sender: object) -> Subscription | None:
        # Signals are process-wide: two apps may each have a handler of this name.
        if getattr(sender, "app", None) is not self.app:
            return None
        return self._subscriptions.get(getattr(sender, "name", None) or "")

    def _on_task_failure(
        self,
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        args: Any = None,
        einfo: Any = None,
        **_: Any,
    ) -> None:
        sub = self._owns_task(sender)
        if sub is None or exception is None:
            return
        request = sender.request
        record = DeadLetter.from_exception(
            exception,
            handler=sub.name,
            reason=self._reason(sub, exception),
            attempts=(request.retries or 0) + 1,
            envelope=args[0] if args else None,
            traceback=getattr(einfo, "traceback", None),
            task_id=task_id,
            queue=(request.delivery_info or {}).get("routing_key"),
            worker=request.hostname,
        )
        self._write_dead_letter(record)

    @staticmethod
    def _reason(sub: Subscription, exc: BaseException) -> DeadLetterReason:
        if isinstance(exc, EnvelopeDecodeError):
            return "undecodable"
        if isinstance(exc, TimeLimitExceeded):
            return "time_limit"
        if isinstance(exc, WorkerLostError):
            return "worker_lost"
        options = sub.options
        if isinstance(exc, options.permanent_errors) or not isinstance(exc, options.retry_on):
            return "permanent_error"
        return "retries_exhausted"

    def _write_dead_letter(self, record: DeadLetter) -> None:
        try:
            self.dead_letter_store.append(record)
        except DeadLetterError:
            # Celery swallows receiver errors; say loudly what was not kept.
            logger.critical("DEAD LETTER NOT WRITTEN: %s", record.model_dump_json(), exc_info=True)
        else:
            logger.error("dead-lettered %s", record.summary())

    def _is_handler_queue(self, message: Message) -> bool:
        routing_key = (message.delivery_info or {}).get("routing_key")
        return routing_key in self.queues

    def dead_letter_message(
        self, message: Message, exc: BaseException, reason: DeadLetterReason = "undecodable"
    ) -> None:
        """Record a raw message the worker could not turn into a task run."""
        if not self._is_handler_queue(message):
            return
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_name = headers.get("task")
        handler = task_name if task_name in self._subscriptions else None
        record = _raw_record(exc, message, body, reason, handler)
        self._write_dead_letter(record)

    def _on_message_rejected(
        self,
        sender: Any = None,
        message: Message | None = None,
        exc: BaseException | None = None,
        **_: Any,
    ) -> None:
        if message is not None and getattr(sender, "app", None) is self.app:
            self.dead_letter_message(
                message, exc or EnvelopeDecodeError("not a task message"), "rejected"
            )

    def _on_unknown_task(
        self,
        sender: Any = None,
        message: Message | None = None,
        exc: BaseException | None = None,
        name: str | None = None,
        **_: Any,
    ) -> None:
        if message is not None and getattr(sender, "app", None) is self.app:
            self.dead_letter_message(
                message,
                EnvelopeDecodeError(f"no handler task named {name!r} on this worker"),
                "rejected",
            )

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        app = getattr(sender, "app", None)
        if app is not self.app:
            return
        queues = app.amqp.queues
        # Only when the worker was started without -Q: then it consumes every
        # queue it knows, and should know the handlers' queues too.
        if queues._consume_from is None:
            for name in self.queues:
                if name not in queues:
                    queues.select_add(name)
        if self.dead_letter_queue in queues.consume_from:
            # A worker consuming the DLQ would take every record off it.
            logger.warning("not consuming the dead-letter queue %r", self.dead_letter_queue)
            queues.deselect([self.dead_letter_queue])


def _raw_record(
    exc: BaseException, message: Message, body: bytes, reason: DeadLetterReason, handler: str | None
) -> DeadLetter:
    headers = message.headers if isinstance(message.headers, dict) else {}
    return DeadLetter(
        handler=handler,
        reason=reason,
        attempts=1,
        exception_type=type(exc).__name__,
        exception_message=f"{exc} (content-type {message.content_type!r})",
        task_id=headers.get("id"),
        queue=(message.delivery_info or {}).get("routing_key"),
        raw_body=body[:MAX_RAW_BODY].decode("utf-8", "replace"),
        raw_size=len(body),
    )


def _dead_letter_undecodable_step(bus: EventBus) -> type[bootsteps.StartStopStep]:
    """A consumer step that sends undecodable messages to the DLQ before Celery acks them."""

    class DeadLetterUndecodable(bootsteps.StartStopStep):  # type: ignore[misc]
        name = f"eventbus.DeadLetterUndecodable.{id(bus)}"

        def __init__(self, consumer: Any, **kwargs: Any) -> None:
            super().__init__(consumer, **kwargs)
            original = consumer.on_decode_error

            def on_decode_error(message: Message, exc: BaseException) -> None:
                bus.dead_letter_message(message, exc, "undecodable")
                original(message, exc)  # logs and acks: the message is now in the DLQ

            # Runs when the blueprint is applied, before the Tasks step reads it.
            consumer.on_decode_error = on_decode_error

    return DeadLetterUndecodable
