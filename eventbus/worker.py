"""What an :class:`~eventbus.EventBus` does inside a Celery worker.

* Every terminal failure of a handler task becomes exactly one dead letter,
  written before its message is acknowledged: by the task itself (exhausted
  retries, permanent errors), or for failures Celery reports in the worker's
  main process (hard time limits, ``Reject(requeue=False)``, lost workers
  whose message is not re-queued) by the handler task's ``Request``
  (:mod:`eventbus.dead_letter_before_ack`) through a writer thread
  (:mod:`eventbus.dead_letter_writer`). A record's id comes from its delivery
  (task id, handler, attempt): written twice, it is one record.
* A message on a handler queue that never becomes a task run (not JSON, a
  pickle, which is never unpickled, not a task message, an unknown task) is
  dead-lettered and acked by a consumer step, instead of Celery's log-and-drop.
* So is a handler task message over ``eventbus_max_payload_bytes``
  ("oversized"), or one Celery would choke on building its request (a body
  that is not ``[args, kwargs, embed]``, keyword arguments, linked tasks,
  garbled headers: "rejected"), before the request is built: the handler
  never runs it, whatever the pool, and the worker never stops over it.
* Celery's task events go out in batches, on a timer (:mod:`eventbus.task_events`).
* The worker's event loop does not wait in its poll while callbacks (late
  acks) are queued (:mod:`eventbus.worker_loop`).
* At start: the worker also consumes the handler queues when started without
  ``-Q``, never consumes the dead-letter queue, declares it, and (RabbitMQ)
  uses the handler queues' dead-letter-exchange declaration.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import bootsteps, signals
from celery.exceptions import InvalidTaskError, Reject, TimeLimitExceeded, WorkerLostError
from kombu.exceptions import ContentDisallowed, DecodeError

from eventbus.dead_letter_before_ack import reported_by_request, writer_step
from eventbus.dead_letter_writer import DeadLetterWriter, delivery_record_id
from eventbus.deadletter.record import MAX_RAW_BODY, DeadLetter, DeadLetterReason
from eventbus.errors import (
    DeadLetterError,
    EnvelopeDecodeError,
    OrderingError,
    PayloadTooLarge,
    SequenceGap,
)
from eventbus.task_events import BatchedTaskEvents
from eventbus.worker_loop import ReadyCallbacksFirst

if TYPE_CHECKING:
    from kombu.message import Message

    from eventbus.bus import Subscription
    from eventbus.celery_bus import EventBus

__all__ = ["WorkerHooks", "dead_letter_reason"]

logger = logging.getLogger(__name__)

#: Seconds a handler task waits before re-queueing a message whose dead letter
#: could not be written (the broker is likely restarting).
REQUEUE_PAUSE = 1.0


class WorkerHooks:
    """Connects one bus to Celery's worker signals and consumer."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        #: Writes the records of failures reported in the worker's main process.
        self.writer = DeadLetterWriter(lambda: bus.dead_letter_store)
        uid = f"eventbus-{id(bus)}"
        # Signals hold these bound methods weakly; the bus holds this object.
        signals.task_failure.connect(self.on_task_failure, dispatch_uid=uid)
        signals.worker_init.connect(self.on_worker_init, dispatch_uid=uid)
        bus.app.steps["consumer"].add(writer_step(self.writer))
        bus.app.steps["consumer"].add(_unusable_message_step(self))
        # One per app (a set of step classes), whatever the number of buses on it.
        bus.app.steps["consumer"].add(BatchedTaskEvents)
        # kombu's event loop waits up to 10 s with callbacks (late acks) queued.
        bus.app.steps["consumer"].add(ReadyCallbacksFirst)

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
        if reported_by_request(sender, exception, einfo):
            return  # reported in the worker's main process: its Request writes the record
        request = sender.request
        if getattr(request, "eventbus_dead_lettered", False):
            return  # the task wrote its record itself (dead_letter_in_task)
        # A failure the task reports outside its handler's run: written here,
        # in the task's process, before its result goes back (and the ack).
        record = self.record_for(
            sender, sub, exception, args, getattr(einfo, "traceback", None), task_id
        )
        self.write(record)

    def dead_letter_in_task(self, task: Any, sub: Subscription, exc: BaseException) -> None:
        """Write a handler's terminal failure from inside its task, before the ack.

        The record is written while the message is still unacked: if the write
        fails (the broker went away in between), the message is re-queued and
        the handler runs again later, instead of being acked with no record.
        A message delivered again may have been recorded before: the store
        then looks for the record before it writes (the record id is the same).
        """
        request = task.request
        record = self.record_for(task, sub, exc, request.args, None, request.id)
        redelivered = bool((request.delivery_info or {}).get("redelivered"))
        try:
            self.bus.dead_letter_store.append(record, again=redelivered)
        except DeadLetterError as err:
            logger.warning(
                "dead letter %s not written (%s): its message goes back to its queue, and "
                "the handler runs again",
                record.summary(),
                err,
            )
            time.sleep(REQUEUE_PAUSE)  # not a hot loop while the broker recovers
            raise Reject(
                f"dead letter not written: {exc!r}; message re-queued", requeue=True
            ) from err
        logger.error("dead-lettered %s", record.summary())
        request.eventbus_dead_lettered = True

    def record_for(
        self,
        task: Any,
        sub: Subscription,
        exception: BaseException,
        args: Any,
        tb: str | None,
        task_id: str | None,
    ) -> DeadLetter:
        """The record of a failure reported inside the task (``task.request`` is its delivery)."""
        request = task.request
        return self._record(
            sub,
            exception,
            args,
            tb,
            task_id=task_id,
            retries=request.retries,
            queue=(request.delivery_info or {}).get("routing_key"),
            worker=request.hostname,
        )

    def record_of_request(
        self, request: Any, exception: BaseException, traceback: str | None
    ) -> DeadLetter | None:
        """The record of a failure Celery reported for a worker's ``Request`` (main process)."""
        sub = self.bus.subscription_of(request.task)
        if sub is None:
            return None
        return self._record(
            sub,
            exception,
            request.args,
            traceback,
            task_id=request.id,
            retries=request.request_dict.get("retries"),
            queue=(request.delivery_info or {}).get("routing_key"),
            worker=request.hostname,
        )

    def _record(
        self,
        sub: Subscription,
        exception: BaseException,
        args: Any,
        tb: str | None,
        *,
        task_id: str | None,
        retries: int | None,
        queue: str | None,
        worker: str | None,
    ) -> DeadLetter:
        attempts = (retries or 0) + 1
        return DeadLetter.from_exception(
            exception,
            id=delivery_record_id(sub.name, task_id, attempts),
            handler=sub.name,
            reason=dead_letter_reason(sub, exception),
            attempts=attempts,
            envelope=args[0] if args else None,
            traceback=tb,
            task_id=task_id,
            queue=queue,
            worker=worker,
        )

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
        task_name, task_id = headers.get("task"), headers.get("id")
        return self.write(
            DeadLetter(
                handler=task_name if self.bus.has_handler(task_name) else None,
                reason=reason,
                attempts=1,
                exception_type=type(exc).__name__,
                exception_message=f"{exc} (content-type {message.content_type!r})",
                # Any JSON value may stand in a hostile header.
                task_id=None if task_id is None else str(task_id)[:200],
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
    if isinstance(exc, Reject):
        return "rejected"
    if isinstance(exc, OrderingError):
        return "sequence_gap" if isinstance(exc, SequenceGap) else "late_event"
    options = sub.options
    if isinstance(exc, options.permanent_errors) or not isinstance(exc, options.retry_on):
        return "permanent_error"
    return "retries_exhausted"


def _unusable_message_step(hooks: WorkerHooks) -> type[bootsteps.StartStopStep]:
    """A consumer step: messages on handler queues that Celery would drop go to the DLQ."""

    class DeadLetterUnusableMessages(bootsteps.StartStopStep):  # type: ignore[misc]
        name = f"eventbus.DeadLetterUnusableMessages.{id(hooks)}"

        def start(self, consumer: Any) -> None:
            bus = hooks.bus
            if any(sub.options.idempotent or sub.options.ordered for sub in bus.subscriptions()):
                # Refuse to start rather than fail every message: the
                # ConfigurationError names the missing setting.
                logger.info("eventbus: idempotency and ordering state in %s", bus.state.description)

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

            # Handler task messages are checked in the consumer, before the
            # task's strategy builds a request: whatever the pool, a message
            # that is oversized or not a task message never reaches it, and
            # never raises out of the consumer (Celery then stops the worker,
            # and the redelivered message stops the next one). Celery
            # rebuilds the strategies at each (re)connection and reload, so
            # wrap them each time it does.
            update_strategies = consumer.update_strategies

            def update_checked_strategies() -> None:
                update_strategies()
                for sub in hooks.bus.subscriptions():
                    strategy = consumer.strategies.get(sub.name)
                    if strategy is not None:
                        consumer.strategies[sub.name] = checked(strategy)

            def checked(strategy: Callable[..., None]) -> Callable[..., None]:
                limit = hooks.bus.max_payload_bytes

                def checked_strategy(message: Message, payload: Any, *args: Any) -> None:
                    over = _oversized(message, limit) if limit else None
                    if over is not None:
                        dead_letter_oversized(message, PayloadTooLarge(over[1], over[0], limit))
                        return
                    # InvalidTaskError goes to on_invalid_task: dead-lettered, acked.
                    problem = None if payload is not None else _task_message_problem(message)
                    if problem:
                        raise InvalidTaskError(problem)
                    try:
                        strategy(message, payload, *args)
                    except (InvalidTaskError, ContentDisallowed, DecodeError):
                        raise  # the consumer's own callbacks take these
                    except Exception as exc:
                        # Anything else a hostile message finds would stop the
                        # worker ("Unrecoverable error"): reject it instead.
                        if isinstance(exc, consumer.connection_errors + consumer.channel_errors):
                            raise
                        raise InvalidTaskError(f"{type(exc).__name__}: {exc}") from exc

                return checked_strategy

            def dead_letter_oversized(message: Message, exc: PayloadTooLarge) -> None:
                if hooks.dead_letter_message(message, exc, "oversized"):
                    message.ack()
                    return
                # Not written (or not from a handler queue): never run it.
                # RabbitMQ hands the rejected message to the dead-letter
                # exchange; Redis drops it (logged).
                logger.error("rejected %s: %s", _describe(message), exc)
                message.reject_log_error(logger, consumer.connection_errors, requeue=False)

            consumer.update_strategies = update_checked_strategies

    return DeadLetterUnusableMessages


#: Bytes a task message may carry beyond its envelope's limit: Celery's
#: ``[args, kwargs, embed]`` list around it (about 70 bytes from publish).
MESSAGE_WRAPPER_MARGIN = 1024


def _oversized(message: Message, limit: int) -> tuple[int, str] | None:
    """The size putting a task message over ``limit`` and its event type, or None.

    Publish measures the envelope as compact JSON; Celery's serializer adds a
    space after every ``,`` and ``:`` (at most half as much again) and the
    task list around it. A body within the limit passes unread; one beyond
    what that can add is oversized unread; one in between is decoded (as
    Celery's strategy does next, from the same cache) and its envelope
    measured as publish measures it.
    """
    body = message.body
    size = len(body.encode() if isinstance(body, str) else body or b"")
    if size <= limit:
        return None
    if size > (limit + MESSAGE_WRAPPER_MARGIN) * 3 // 2:
        return size, "<not read>"
    # A body Celery cannot decode raises here as it would in the strategy:
    # the consumer's decode-error and invalid-task callbacks take it.
    payload = message.decode()
    envelope = _first_argument(payload)
    event_type = envelope.get("event_type") if isinstance(envelope, dict) else None
    label = event_type if isinstance(event_type, str) else "<not an envelope>"
    if envelope is not None and (size := _compact_size(envelope)) > limit:
        return size, label
    if (size := _compact_size(payload)) > limit + MESSAGE_WRAPPER_MARGIN:
        return size, label
    return None


def _first_argument(payload: object) -> object:
    """The envelope's place in a protocol 2 body ``[[envelope], kwargs, embed]``."""
    if isinstance(payload, list | tuple) and payload:
        args = payload[0]
        if isinstance(args, list | tuple) and args:
            return args[0]
    return None


def _compact_size(value: object) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str).encode())


def _task_message_problem(message: Message) -> str | None:
    """What Celery's strategy would choke on in a protocol 2 task message, if anything."""
    headers = message.headers
    if not isinstance(headers.get("id"), str):
        return f"task id must be a string, got {headers.get('id')!r:.100}"
    timelimit = headers.get("timelimit")
    if timelimit and not (
        isinstance(timelimit, list | tuple)
        and len(timelimit) == 2
        and all(t is None or isinstance(t, int | float) for t in timelimit)
    ):
        return f"timelimit must be [hard, soft] seconds, got {timelimit!r:.100}"
    shadow = headers.get("shadow")
    if shadow is not None and not isinstance(shadow, str):
        # Under another name type the run vanishes: no result, no failure, no log
        return f"shadow (the task's display name) must be a string, got {shadow!r:.100}"
    retries = headers.get("retries")
    if retries is not None and not (isinstance(retries, int) and retries >= 0):
        # on_task_failure counts the attempts from it
        return f"retries must be a count, got {retries!r:.100}"
    # Decoded as Celery's strategy decodes it next (from the same cache); a
    # body it cannot decode raises to the consumer's callbacks.
    body = message.decode()
    if isinstance(body, dict) and "args" in body:
        return None  # a hybrid protocol 1 body: Celery checks it
    if not (isinstance(body, list | tuple) and len(body) == 3):
        return f"body is not [args, kwargs, embed]: {type(body).__name__}"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        return "task args must be a list"
    # What publish sends: no keyword arguments, no linked tasks (Celery runs
    # errbacks before task_failure fires: a bad one would lose the record).
    if kwargs != {}:
        return "a handler task takes no keyword arguments"
    if embed is not None and not isinstance(embed, dict):
        return "task options (embed) must be an object"
    links = {k: v for k, v in (embed or {}).items() if k in _LINKS and v is not None}
    if links:
        return f"a handler task is never linked, got {', '.join(sorted(links))}"
    return None


#: The embed keys linking other tasks to a task message.
_LINKS = frozenset({"callbacks", "errbacks", "chain", "chord"})


def _describe(message: Message) -> str:
    headers = message.headers if isinstance(message.headers, dict) else {}
    queue = (message.delivery_info or {}).get("routing_key")
    return f"message {headers.get('id')!r} of task {headers.get('task')!r} on {queue!r}"
