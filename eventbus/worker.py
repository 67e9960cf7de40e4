"""What an :class:`~eventbus.EventBus` does inside a Celery worker.

* Every terminal failure of a handler task becomes exactly one dead letter:
  Celery's ``task_failure`` signal fires for exhausted retries, permanent
  errors, hard time limits, and lost workers whose message is not re-queued.
* A message on a handler queue that never becomes a task run (not JSON, a
  pickle, which is never unpickled, not a task message, an unknown task) is
  dead-lettered and acked by a consumer step, instead of Celery's log-and-drop.
* At start: the worker also consumes the handler queues when started without
  ``-Q``, never consumes the dead-letter queue, declares it, and (RabbitMQ)
  uses the handler queues' dead-letter-exchange declaration.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import bootsteps, signals
from celery.exceptions import TimeLimitExceeded, WorkerLostError

from eventbus.deadletter.record import MAX_RAW_BODY, DeadLetter, DeadLetterReason
from eventbus.errors import DeadLetterError, EnvelopeDecodeError

if TYPE_CHECKING:
    from kombu.message import Message

    from eventbus.bus import Subscription
    from eventbus.celery_bus import EventBus

__all__ = ["WorkerHooks", "dead_letter_reason"]

logger = logging.getLogger(__name__)


class WorkerHooks:
    """Connects one bus to Celery's worker signals and consumer."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        uid = f"eventbus-{id(bus)}"
        # Signals hold these bound methods weakly; the bus holds this object.
        signals.task_failure.connect(self.on_task_failure, dispatch_uid=uid)
        signals.worker_init.connect(self.on_worker_init, dispatch_uid=uid)
        bus.app.steps["consumer"].add(_unusable_message_step(self))

    # -- terminal failures of handler tasks -----------------------------------

    def on_task_failure(
        self,
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        args: Any = None,
        einfo: Any = None,
        **_: Any,
    ) -> None:
        sub = self.bus.subscription_of(sender)
        if sub is None or exception is None:
            return
        request = sender.request
        record = DeadLetter.from_exception(
            exception,
            handler=sub.name,
            reason=dead_letter_reason(sub, exception),
            attempts=(request.retries or 0) + 1,
            envelope=args[0] if args else None,
            traceback=getattr(einfo, "traceback", None),
            task_id=task_id,
            queue=(request.delivery_info or {}).get("routing_key"),
            worker=request.hostname,
        )
        self.write(record)

    def write(self, record: DeadLetter) -> bool:
        try:
            self.bus.dead_letter_store.append(record)
        except DeadLetterError:
            # Celery swallows receiver errors; say loudly what was not kept.
            logger.critical("DEAD LETTER NOT WRITTEN: %s", record.model_dump_json(), exc_info=True)
            return False
        logger.error("dead-lettered %s", record.summary())
        return True

    # -- messages that never become a task run ------------------------------

    def dead_letter_message(
        self, message: Message, exc: BaseException, reason: DeadLetterReason
    ) -> bool:
        """Record a raw message from a handler queue; False if it is not ours or not written."""
        if (message.delivery_info or {}).get("routing_key") not in self.bus.queues:
            return False
        body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_name = headers.get("task")
        return self.write(
            DeadLetter(
                handler=task_name if self.bus.has_handler(task_name) else None,
                reason=reason,
                attempts=1,
                exception_type=type(exc).__name__,
                exception_message=f"{exc} (content-type {message.content_type!r})",
                task_id=headers.get("id"),
                queue=(message.delivery_info or {}).get("routing_key"),
                raw_body=body[:MAX_RAW_BODY].decode("utf-8", "replace"),
                raw_size=len(body),
            )
        )

    # -- worker start ---------------------------------------------------------

    def on_worker_init(self, sender: Any = None, **_: Any) -> None:
        bus, app = self.bus, getattr(sender, "app", None)
        if app is not bus.app:
            return
        queues = app.amqp.queues
        # Only when the worker was started without -Q: then it consumes every
        # queue it knows, and should know the handlers' queues too.
        # The consumer declares what it consumes: make that the handler
        # queues' own declaration (on RabbitMQ, with the dead-letter exchange).
        consuming = queues.consume_from
        for name in bus.queues:
            declared = bus.handler_queue(name)
            if name not in queues:
                # Started without -Q, the worker consumes every queue it
                # knows: it should know the handler queues too.
                if queues._consume_from is None:
                    queues.select_add(declared)
            elif not isinstance(declared, str):
                queues[name] = declared
                if name in consuming:
                    consuming[name] = declared
        if bus.dead_letter_queue in queues.consume_from:
            # A worker consuming the DLQ would take every record off it.
            logger.warning("not consuming the dead-letter queue %r", bus.dead_letter_queue)
            queues.deselect([bus.dead_letter_queue])
        try:
            bus.dead_letter_store.declare()
        except Exception:  # the broker may still be starting; the first write declares it
            logger.warning("could not declare the dead-letter queue yet", exc_info=True)
        # Metrics are opt-in: with no port set, eventbus.metrics is never imported.
        if app.conf.get("eventbus_metrics_port"):
            from eventbus.metrics_worker import start_worker_metrics

            start_worker_metrics(bus)


def dead_letter_reason(sub: Subscription, exc: BaseException) -> DeadLetterReason:
    """Why a handler task's failure is terminal."""
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


def _unusable_message_step(hooks: WorkerHooks) -> type[bootsteps.StartStopStep]:
    """A consumer step: messages on handler queues that Celery would drop go to the DLQ."""

    class DeadLetterUnusableMessages(bootsteps.StartStopStep):  # type: ignore[misc]
        name = f"eventbus.DeadLetterUnusableMessages.{id(hooks)}"

        def __init__(self, consumer: Any, **kwargs: Any) -> None:
            super().__init__(consumer, **kwargs)
            # Runs when the blueprint is applied, before the Tasks step reads
            # these callbacks. Written record: ack. Not ours, or not written:
            # Celery's own handling (log and ack, or reject: on RabbitMQ the
            # handler queue's dead-letter exchange then keeps the message).
            decode = consumer.on_decode_error
            unknown_message = consumer.on_unknown_message
            unknown_task = consumer.on_unknown_task
            invalid_task = consumer.on_invalid_task

            def on_decode_error(message: Message, exc: BaseException) -> None:
                hooks.dead_letter_message(message, exc, "undecodable")
                decode(message, exc)  # logs and acks

            def on_unknown_message(body: Any, message: Message) -> None:
                exc = EnvelopeDecodeError("not a Celery task message (no task header)")
                handled_or(unknown_message, body, message)(message, exc, "rejected")

            def on_unknown_task(body: Any, message: Message, exc: BaseException) -> None:
                name = (message.headers or {}).get("task")
                reason = EnvelopeDecodeError(f"no handler task named {name!r} on this worker")
                handled_or(unknown_task, body, message, exc)(message, reason, "rejected")

            def on_invalid_task(body: Any, message: Message, exc: BaseException) -> None:
                handled_or(invalid_task, body, message, exc)(message, exc, "rejected")

            def handled_or(
                fallback: Callable[..., None], *args: Any
            ) -> Callable[[Message, BaseException, DeadLetterReason], None]:
                def handle(message: Message, exc: BaseException, why: DeadLetterReason) -> None:
                    if hooks.dead_letter_message(message, exc, why):
                        message.ack()
                    else:
                        fallback(*args)

                return handle

            consumer.on_decode_error = on_decode_error
            consumer.on_unknown_message = on_unknown_message
            consumer.on_unknown_task = on_unknown_task
            consumer.on_invalid_task = on_invalid_task

    return DeadLetterUnusableMessages
