"""What an :class:`~eventbus.EventBus` does inside a Celery worker.

* Every terminal failure of a handler task becomes exactly one dead letter,
  written before its message is acknowledged: by the task itself (exhausted
  retries, permanent errors), or for failures Celery reports in the worker's
  main process (hard time limits, ``Reject(requeue=False)``, lost workers
  whose message is not re-queued) by the handler task's ``Request``
  (:mod:`eventbus.celery.dead_letter_before_ack`) through a writer thread
  (:mod:`eventbus.celery.dead_letter_writer`). A record's id comes from its delivery
  (task id, handler, attempt): written twice, it is one record.
* A message on a handler queue that never becomes a task run (not JSON, not
  a task message, an unknown task) is dead-lettered by a consumer step,
  instead of Celery's log-and-drop: its record goes to the same writer
  thread, and the message is acked only once the record is written (put
  back on its queue if it could not be, never dropped); the event loop never
  waits for the write. Its record's id names the message
  (:class:`RawMessageIds`): delivered again, it is not recorded twice.
* Before Celery reads a message from a handler queue (or for a handler task),
  the step screens it: handler queues take JSON only, whatever the app's
  ``accept_content`` (a pickle is never unpickled, a YAML never loaded: the
  content type is checked before anything is decoded, "undecodable"); headers
  nested deeper than :data:`MAX_HEADER_DEPTH` are "undecodable"; a message
  whose body and headers are over ``eventbus_max_payload_bytes`` is
  "oversized"; a Redis stand-in (:mod:`eventbus.celery.refused`) is
  dead-lettered for what it stands in for. A worker warns at start when the
  app accepts pickle or YAML. A compressed message on a handler queue is
  refused before kombu decompresses it unless the app sets
  ``task_compression``, and then decompressed no further than the payload
  limit allows (:mod:`eventbus.celery.internals.compression`).
* So is a message Celery would choke on building its request (a body that is
  not ``[args, kwargs, embed]``, keyword arguments, linked tasks, garbled
  headers: "rejected"), before the request is built: the handler never runs
  it, whatever the pool, and the worker never stops over it.
* Celery's task events go out in batches, on a timer (:mod:`eventbus.celery.internals.task_events`).
* The worker's event loop does not wait in its poll while callbacks (late
  acks) are queued (:mod:`eventbus.celery.internals.worker_loop`).
* On RabbitMQ, a busy worker's acks go out together, a settled run of
  delivery tags as one ``basic.ack`` (:mod:`eventbus.celery.internals.acks`).
* At start: the worker also consumes the handler queues when started without
  ``-Q``, never consumes the dead-letter queue, declares it, and (RabbitMQ)
  uses the handler queues' dead-letter-exchange declaration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import reprlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Literal

from celery import bootsteps, signals
from celery.exceptions import InvalidTaskError, Reject, TimeLimitExceeded, WorkerLostError
from kombu.exceptions import ContentDisallowed, DecodeError

from eventbus.celery.dead_letter_before_ack import reported_by_request, writer_step
from eventbus.celery.dead_letter_signals import dead_letter_written
from eventbus.celery.dead_letter_writer import DeadLetterWriter, delivery_record_id
from eventbus.celery.internals.acks import CoalescedAcks
from eventbus.celery.internals.amqp_headers import guard_deep_headers
from eventbus.celery.internals.compat import check_worker
from eventbus.celery.internals.compression import (
    CompressionPolicy,
    guard_compression,
    unguard_compression,
)
from eventbus.celery.internals.consumer_hooks import (
    ConsumerCallbacks,
    accept_json_only,
    after_strategies_update,
    celery_callbacks,
    replace_callbacks,
    wrap_task_handler,
)
from eventbus.celery.internals.taken import taken_from
from eventbus.celery.internals.task_events import BatchedTaskEvents
from eventbus.celery.internals.warm_shutdown import KeepStartedJobs
from eventbus.celery.internals.worker_loop import ReadyCallbacksFirst
from eventbus.celery.internals.worker_queues import consumes_every_queue, repr_allowance
from eventbus.celery.refused import read_stand_in
from eventbus.deadletter.record import MAX_RAW_BODY, DeadLetter, DeadLetterReason
from eventbus.domain.nesting import nests_deeper_than
from eventbus.errors import (
    ConfigurationError,
    DeadLetterError,
    EnvelopeDecodeError,
    OrderingError,
    PayloadTooLarge,
    SequenceGap,
)

if TYPE_CHECKING:
    from kombu.message import Message

    from eventbus.bus.base import Subscription
    from eventbus.celery.bus import EventBus

__all__ = ["WorkerHooks", "dead_letter_reason"]

logger = logging.getLogger(__name__)

#: Seconds a handler task waits before re-queueing a message whose dead letter
#: could not be written (the broker is likely restarting).
REQUEUE_PAUSE = 1.0


class WorkerHooks:
    """Connects one bus to Celery's worker signals and consumer."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        #: Writes the records of failures reported in the worker's main process,
        #: and of messages that never become a task run.
        self.writer = DeadLetterWriter(lambda: bus.dead_letter_store)
        #: The ids of the records of messages that never become a task run.
        self.message_ids = RawMessageIds()
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
        # RabbitMQ: a busy worker's acks go out together.
        bus.app.steps["consumer"].add(CoalescedAcks)
        # A warm shutdown acks what the pool processes ran (Celery's flush drops it).
        bus.app.steps["consumer"].add(KeepStartedJobs)

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
        if self.write(record):
            self.announce(record, ran=True)

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
        self.announce(record, ran=True)

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

    def announce(self, record: DeadLetter, *, ran: bool) -> None:
        """Send ``dead_letter_written`` (metrics count it), tell the instrumentation (traces):
        ``record`` was written."""
        dead_letter_written.send(sender=self.bus, record=record, ran=ran)
        instrumentation = self.bus.instrumentation
        if instrumentation is not None:
            try:
                instrumentation.dead_lettered(record)
            except Exception:  # the record is written: an observer's failure changes nothing
                logger.warning("instrumentation failed on dead letter %s", record.id, exc_info=True)

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
        self,
        message: Message,
        exc: BaseException,
        reason: DeadLetterReason,
        raw: tuple[bytes, int] | None = None,
        *,
        errors: tuple[type[BaseException], ...] = (),
    ) -> bool:
        """Dead-letter a raw message from a handler queue; False if it is not the bus's.

        The record goes to the worker's writer (a thread): the message is
        acked once the record is written, and put back on its queue if it
        could not be within the writer's patience; until then it stays
        unacknowledged. ``raw``: the bytes to keep and the size, when the body
        is not the message as it was on the queue (a transport's stand-in).
        ``errors``: what acking or rejecting it may raise, logged (a
        connection that went away: the broker delivers the message again).
        """
        record = self.record_of_message(message, exc, reason, raw)
        if record is None:
            return False
        self.writer.submit(
            record,
            written=_settle(message, "ack", errors),
            given_up=_settle(message, "requeue", errors),
            again=_redelivered(message),
            on_written=lambda: self.announce(record, ran=False),
        )
        return True

    def record_of_message(
        self,
        message: Message,
        exc: BaseException,
        reason: DeadLetterReason,
        raw: tuple[bytes, int] | None = None,
    ) -> DeadLetter | None:
        """The record of a raw message from a handler queue; None if it is not the bus's."""
        queues = frozenset(self.bus.queues)
        if not self.owns_message(message, queues):
            return None
        headers = message.headers if isinstance(message.headers, dict) else {}
        queue = _queue_of(message)
        task_name, task_id = headers.get("task"), headers.get("id")
        if raw is None:
            body = message.body
            body = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
            raw = body[:MAX_RAW_BODY], len(body)
        return DeadLetter(
            id=self.message_ids(message),
            handler=task_name if self.bus.has_handler(task_name) else None,
            reason=reason,
            attempts=1,
            exception_type=type(exc).__name__,
            exception_message=f"{exc} (content-type {_short(message.content_type)})",
            # Any JSON value may stand in a hostile header.
            task_id=None if task_id is None else _text(task_id),
            queue=queue if queue is None or queue in queues else _text(queue),
            raw_body=raw[0][:MAX_RAW_BODY].decode("utf-8", "replace"),
            raw_size=raw[1],
        )

    def owns_message(self, message: Message, queues: frozenset[str]) -> bool:
        """Whether ``message`` came from one of ``queues``, or is for a handler task of the bus.

        Where it came from: the queue its transport took it from, when the
        transport says (eventbus's Redis transport: an element's routing key is
        whatever its producer wrote); else its routing key.
        """
        if _queue_of(message) in queues:
            return True
        headers = message.headers
        return isinstance(headers, dict) and self.bus.has_handler(headers.get("task"))

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
        every_queue = consumes_every_queue(queues)
        for name in bus.queues:
            declared = bus.handler_queue(name)
            if name not in queues:
                # Started without -Q, the worker consumes every queue it
                # knows: it should know the handler queues too.
                if every_queue:
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
            bus.declare_queues(queues.consume_from)
        except ConfigurationError as exc:
            # A queue declared otherwise before: the consumer stops on it, naming no setting.
            logger.critical("eventbus: this worker cannot consume its queues: %s", exc)
        except Exception:  # the broker may still be starting; the first write declares it
            logger.warning("could not declare the dead-letter queue yet", exc_info=True)
        # Metrics are opt-in: with no port set, eventbus.metrics.handlers is never imported.
        if app.conf.get("eventbus_metrics_port"):
            from eventbus.metrics.worker import start_worker_metrics

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
                logger.info(
                    "eventbus: idempotency and ordering state in %s", bus.state_description()
                )

        def shutdown(self, consumer: Any) -> None:
            unguard_compression(hooks.bus.queues)

        def __init__(self, consumer: Any, **kwargs: Any) -> None:
            super().__init__(consumer, **kwargs)
            # Checked once, when the worker is built: a missing name a guarantee
            # needs stops it here (IncompatibleDependency), never mid-delivery.
            check_worker(consumer.app)
            _warn_of_unsafe_content(hooks.bus.app)
            guard_deep_headers()  # (RabbitMQ: py-amqp)
            # Runs when the blueprint is applied, before the Tasks step reads
            # these callbacks. A message of the bus's: its record goes to the
            # writer, and the message is acked once it is written (never
            # before, and never here: the write waits for no broker in the
            # event loop). Not the bus's: Celery's own handling (log and ack,
            # or reject).
            celery = celery_callbacks(consumer)

            def dead_letter(
                message: Message,
                exc: BaseException,
                reason: DeadLetterReason,
                raw: tuple[bytes, int] | None = None,
            ) -> bool:
                errors = (*consumer.connection_errors, *consumer.channel_errors)
                return hooks.dead_letter_message(message, exc, reason, raw, errors=errors)

            def on_decode_error(message: Message, exc: BaseException) -> None:
                # (a compressed message decompressed past the limit: oversized)
                reason: DeadLetterReason = (
                    "oversized" if isinstance(exc, PayloadTooLarge) else "undecodable"
                )
                if not dead_letter(message, exc, reason):
                    celery.decode_error(message, exc)  # logs and acks

            def on_unknown_message(body: Any, message: Message) -> None:
                exc = EnvelopeDecodeError("not a Celery task message (no task header)")
                handled_or(celery.unknown_message, body, message)(message, exc, "rejected")

            def on_unknown_task(body: Any, message: Message, exc: BaseException) -> None:
                headers = message.headers if isinstance(message.headers, dict) else {}
                name = _short(headers.get("task"))
                reason = EnvelopeDecodeError(f"no handler task named {name} on this worker")
                handled_or(celery.unknown_task, body, message, exc)(message, reason, "rejected")

            def on_invalid_task(body: Any, message: Message, exc: BaseException) -> None:
                handled_or(celery.invalid_task, body, message, exc)(message, exc, "rejected")

            def handled_or(
                fallback: Callable[..., None], *args: Any
            ) -> Callable[[Message, BaseException, DeadLetterReason], None]:
                def handle(message: Message, exc: BaseException, why: DeadLetterReason) -> None:
                    if not dead_letter(message, exc, why):
                        fallback(*args)

                return handle

            ours = ConsumerCallbacks(
                on_decode_error, on_unknown_message, on_unknown_task, on_invalid_task
            )
            replace_callbacks(consumer, ours)

            # Every message the task consumer receives is looked at first here,
            # before Celery reads its headers or decodes its body: one from a
            # handler queue (or for a handler task) that is not JSON, whose
            # headers are nested too deep, or that is oversized, is
            # dead-lettered unread. Celery builds this handler at each
            # (re)connection.
            screen = _Screen(hooks)

            def screened(on_task_received: Callable[[Message], Any]) -> Callable[[Message], Any]:
                screen.update()
                # Compressed messages on handler queues: refused before kombu
                # decompresses them, or decompressed within the limit.
                guard_compression(screen.queues, screen.compression_policy())

                def on_screened_task_received(message: Message) -> Any:
                    if screen.owns(message):
                        try:
                            refusal = screen.refusal(message)
                        except Exception as exc:  # whatever it holds: never stop the worker
                            logger.exception("eventbus could not screen %s", _describe(message))
                            refusal = exc, "undecodable", None
                        if refusal is not None:
                            dead_letter(message, *refusal)  # (owned: always taken)
                            return None
                    return on_task_received(message)

                return on_screened_task_received

            wrap_task_handler(consumer, screened)

            # Handler task messages are checked in the consumer, before the
            # task's strategy builds a request: whatever the pool, a message
            # that is not a task message never reaches it, and never raises out
            # of the consumer (Celery then stops the worker, and the redelivered
            # message stops the next one). Celery rebuilds the strategies at
            # each (re)connection and reload, so wrap them each time it does.
            def check_strategies(strategies: MutableMapping[str, Callable[..., None]]) -> None:
                for sub in hooks.bus.subscriptions():
                    strategy = strategies.get(sub.name)
                    if strategy is not None:
                        strategies[sub.name] = checked(strategy)
                # eventbus's Redis transport: an element too large to be a
                # handler message is taken unread (a stand-in), not decoded.
                # Not on Celery's default queue: the app's other tasks share it.
                limit_elements = getattr(
                    getattr(consumer.connection, "transport", None), "eventbus_limit", None
                )
                if limit_elements is not None:
                    default = hooks.bus.app.conf.task_default_queue
                    queues = [q for q in hooks.bus.queues if q != default]
                    limit_elements(queues, _element_limit(hooks.bus))

            def checked(strategy: Callable[..., None]) -> Callable[..., None]:
                def checked_strategy(message: Message, payload: Any, *args: Any) -> None:
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

            after_strategies_update(consumer, check_strategies)

    return DeadLetterUnusableMessages


#: The one content type a handler queue takes, whatever the app accepts.
JSON = "application/json"
#: Content types (and serializer names) that run code or build objects when decoded.
UNSAFE_CONTENT = {
    "pickle": "pickle",
    "application/x-python-serialize": "pickle",
    "yaml": "yaml",
    "application/x-yaml": "yaml",
}
#: Levels of nesting a handler message's headers may have (Celery's own have 3).
MAX_HEADER_DEPTH = 32
#: Bytes of headers Celery writes besides ``argsrepr`` and ``kwargsrepr`` (ids,
#: names, limits, stamps): beyond this and those two, headers count toward
#: ``eventbus_max_payload_bytes``.
CELERY_HEADERS_ALLOWANCE = 4 * 1024


def _warn_of_unsafe_content(app: Any) -> None:
    """Warn (at worker start) that the app accepts content that runs code when decoded."""
    accepted = app.conf.accept_content or ()
    unsafe = sorted({UNSAFE_CONTENT[a] for a in map(str, accepted) if a.lower() in UNSAFE_CONTENT})
    if unsafe:
        logger.warning(
            "the Celery app accepts %s (accept_content=%r): eventbus's handler queues "
            "still take JSON only (a message of another content type is dead-lettered, "
            "never decoded), but the app's other tasks decode what they receive, and a "
            "pickle runs code: accept JSON only",
            " and ".join(unsafe),
            list(accepted),
        )


class _Screen:
    """What a worker checks of a message before Celery reads it (see the consumer step)."""

    def __init__(self, hooks: WorkerHooks) -> None:
        self.hooks = hooks
        self.update()

    def update(self) -> None:
        """Read the bus's queues and limits again (at each connection)."""
        self.bus = bus = self.hooks.bus
        self.queues = frozenset(bus.queues)
        self.app_tasks = bus.app.tasks
        self.limit = bus.max_payload_bytes
        self.headers_allowance = CELERY_HEADERS_ALLOWANCE + repr_allowance(bus.app)

    def owns(self, message: Message) -> bool:
        return self.hooks.owns_message(message, self.queues)

    def compression_policy(self) -> CompressionPolicy:
        """What handler queues take of compressed messages (``celery.internals.compression``).

        Compressed only if the app compresses (``task_compression``), and then
        no larger, decompressed, than a body within the payload limit can be.
        """
        bus, app_tasks = self.bus, self.app_tasks

        def exempt(task: object) -> bool:
            return isinstance(task, str) and task in app_tasks and not bus.has_handler(task)

        limit = self.limit
        return CompressionPolicy(
            allowed=bool(bus.app.conf.task_compression),
            max_bytes=(limit + MESSAGE_WRAPPER_MARGIN) * 3 // 2 if limit else 0,
            limit=limit,
            exempt=exempt,
        )

    def refusal(
        self, message: Message
    ) -> tuple[BaseException, DeadLetterReason, tuple[bytes, int] | None] | None:
        """Why a message of the bus's is dead-lettered unread, if it is.

        Checked in this order: a transport's stand-in (:mod:`eventbus.celery.refused`);
        the content type, JSON only (a pickle is never unpickled), for whatever
        task a handler queue carries; then, unless it is another task of the app
        (a queue may carry them too: Celery's business), the headers' nesting
        and type, and the size of the body and headers.
        """
        # Whatever Celery decodes of it from here on, it decodes as JSON only.
        accept_json_only(message, _JSON_ONLY)
        content_type, headers = message.content_type, message.headers
        stood_in = read_stand_in(content_type, headers, message.body)
        if stood_in is not None:
            exc: BaseException = (
                PayloadTooLarge("<not read>", stood_in.size, self.limit)
                if stood_in.reason == "oversized"
                else EnvelopeDecodeError(f"the broker delivered {stood_in.why}")
            )
            return exc, stood_in.reason, (stood_in.raw, stood_in.size)
        if content_type != JSON:
            return (
                EnvelopeDecodeError(
                    f"content type {_short(content_type)} is not taken on a handler queue "
                    "(JSON only): never decoded"
                ),
                "undecodable",
                None,
            )
        if not isinstance(headers, dict) or nests_deeper_than(headers, MAX_HEADER_DEPTH):
            return (
                EnvelopeDecodeError(f"headers nested deeper than {MAX_HEADER_DEPTH} levels"),
                "undecodable",
                None,
            )
        task = headers.get("task")
        if isinstance(task, str) and task in self.app_tasks and not self.bus.has_handler(task):
            return None  # another task of the app, on a queue it shares with handlers
        if task is not None and not isinstance(task, str):  # Celery looks it up in a dict
            exc = EnvelopeDecodeError(f"the task name is not a string: {_short(task)}")
            return exc, "rejected", None
        if not isinstance(message.body, bytes | str | None):  # (a forged Redis message)
            return (
                EnvelopeDecodeError(f"the body is a {type(message.body).__name__}, not bytes"),
                "undecodable",
                None,
            )
        if self.limit:
            extra = max(0, _compact_size(headers) - self.headers_allowance)
            try:
                over = _oversized(message, self.limit, extra)
            except (DecodeError, RecursionError) as exc:  # (nested deeper than json goes)
                return exc, "undecodable", None
            if over is not None:
                return PayloadTooLarge(over[1], over[0], self.limit), "oversized", None
        return None


_JSON_ONLY = frozenset({JSON})


def _element_limit(bus: EventBus) -> int:
    """Bytes past which a Redis list element cannot hold a handler message within the limit.

    kombu's Redis element carries the body in base64 (4/3 of it), with the
    headers and properties beside it; the body holds the envelope with Celery's
    spaces (see :func:`_oversized`). 0: no limit.
    """
    limit = bus.max_payload_bytes
    if not limit:
        return 0
    headers = CELERY_HEADERS_ALLOWANCE + repr_allowance(bus.app)
    body = (limit + MESSAGE_WRAPPER_MARGIN) * 3 // 2
    return body * 4 // 3 + limit + headers + ELEMENT_PROPERTIES_MARGIN


#: Bytes of a Redis element besides its body and headers (properties, keys).
ELEMENT_PROPERTIES_MARGIN = 4 * 1024


#: Bytes a task message may carry beyond its envelope's limit: Celery's
#: ``[args, kwargs, embed]`` list around it (about 70 bytes from publish).
MESSAGE_WRAPPER_MARGIN = 1024


def _oversized(message: Message, limit: int, extra: int = 0) -> tuple[int, str] | None:
    """The size putting a task message over ``limit`` and its event type, or None.

    ``extra``: bytes of headers that count toward the limit. Publish measures
    the envelope as compact JSON; Celery's serializer adds a space after every
    ``,`` and ``:`` (at most half as much again) and the task list around it.
    A body within the limit passes unread; one beyond what that can add is
    oversized unread; one in between is decoded (as Celery's strategy does
    next, from the same cache) and its envelope measured as publish measures it.
    """
    body = message.body
    size = len(body.encode() if isinstance(body, str) else body or b"") + extra
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
    if envelope is not None and (size := _compact_size(envelope) + extra) > limit:
        return size, label
    if (size := _compact_size(payload) + extra) > limit + MESSAGE_WRAPPER_MARGIN:
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
    try:
        return len(json.dumps(value, separators=(",", ":"), default=str).encode())
    except (TypeError, ValueError):  # keys JSON has no form for (an AMQP table's are strings)
        return len(str(value).encode("utf-8", "replace"))


#: A repr bounded in length and depth, for any value a hostile message holds.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 100, 100, 40


def _short(value: object) -> str:
    """``value``'s repr, at most a few hundred characters, whatever it is."""
    return _REPR.repr(value)


def _text(value: object) -> str:
    """A string field of a record from any value: a string cut to 200 characters, else its repr."""
    return value[:200] if isinstance(value, str) else _short(value)


class RawMessageIds:
    """The ids of raw messages' records: the same at each delivery of a message.

    A record written once must not be written again when its message comes
    back (its ack lost, or put back after the write was given up), and two
    messages must not share one record. kombu's virtual transports (Redis)
    give each message a delivery tag of its own, kept when it is put back:
    the tag names it. An AMQP delivery tag only counts a channel's
    deliveries: there the message's content names it (its queue,
    properties, headers and body), with the number of identical copies this
    worker received before it (first deliveries); a redelivered message
    takes the first copy's id, and the store looks for that record before
    it writes. (A redelivered copy other than the first, whose own record
    was never written, is then counted in the first copy's record.)
    """

    def __init__(self) -> None:
        self._copies: OrderedDict[str, int] = OrderedDict()

    def __call__(self, message: Message) -> str:
        queue = _text(_queue_of(message))
        tag = message.delivery_tag
        if isinstance(tag, str):
            return uuid.uuid5(_RAW_NAMESPACE, f"{queue}\ntag\n{tag}").hex
        content = self._content(message, queue)
        copy = 0
        if not _redelivered(message):
            copy = self._copies.pop(content, 0)
            self._copies[content] = copy + 1
            while len(self._copies) > REMEMBERED_CONTENTS:
                self._copies.popitem(last=False)
        return uuid.uuid5(_RAW_NAMESPACE, f"{queue}\ncontent\n{content}\n{copy}").hex

    @staticmethod
    def _content(message: Message, queue: str) -> str:
        properties = message.properties if isinstance(message.properties, dict) else {}
        described = _canonical(
            [
                queue,
                message.content_type,
                message.content_encoding,
                properties.get("correlation_id"),
                properties.get("message_id"),
                message.headers,
            ]
        )
        digest = hashlib.sha256(described.encode("utf-8", "replace"))
        body = message.body
        digest.update(body if isinstance(body, bytes) else str(body).encode("utf-8", "replace"))
        return digest.hexdigest()


#: Contents of AMQP messages whose copies a worker counts (see :class:`RawMessageIds`).
REMEMBERED_CONTENTS = 10_000
_RAW_NAMESPACE = uuid.UUID("5b0f7a52-4c1e-5d8b-8f43-2f1f3e6d9a7c")


def _canonical(value: object) -> str:
    """``value`` as JSON with sorted keys; nested too deep (or not JSON), its bounded repr."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError, RecursionError):
        return _short(value)


def _redelivered(message: Message) -> bool:
    """Whether the broker says it delivered this message before (its record may be written)."""
    info = message.delivery_info
    return isinstance(info, dict) and bool(info.get("redelivered"))


def _settle(
    message: Message, how: Literal["ack", "requeue"], errors: tuple[type[BaseException], ...]
) -> Callable[[], None]:
    """Ack ``message``, or put it back on its queue; on the event loop, once its record is settled.

    Whatever the broker answers is logged, never raised into the loop: a
    message not settled comes back (on a connection that went away, at
    once; on Redis, after ``visibility_timeout``) and finds its record
    written (the writer's memory, the store's id).
    """

    def settle() -> None:
        try:
            if how == "ack":
                message.ack()
            else:
                message.reject(requeue=True)
        except errors as exc:
            logger.warning(
                "could not %s %s (%s): the broker delivers it again",
                how,
                _describe(message),
                exc,
            )
        except Exception:
            logger.warning("could not %s %s", how, _describe(message), exc_info=True)

    return settle


def _queue_of(message: Message) -> object:
    """The queue ``message`` came from: as its transport took it, else its routing key."""
    queue = taken_from(message)
    return queue if queue is not None else _routing_key(message)


def _routing_key(message: Message) -> object:
    info = message.delivery_info
    return info.get("routing_key") if isinstance(info, dict) else None


def _task_message_problem(message: Message) -> str | None:
    """What Celery's strategy would choke on in a protocol 2 task message, if anything."""
    headers = message.headers
    if headers.get("expires") is not None:
        # Publish never sets it; Celery discards an expired message unrecorded.
        return f"a handler task never expires, got expires={_short(headers.get('expires'))}"
    if not isinstance(headers.get("id"), str):
        return f"task id must be a string, got {_short(headers.get('id'))}"
    timelimit = headers.get("timelimit")
    if timelimit and not (
        isinstance(timelimit, list | tuple)
        and len(timelimit) == 2
        and all(t is None or isinstance(t, int | float) for t in timelimit)
    ):
        return f"timelimit must be [hard, soft] seconds, got {_short(timelimit)}"
    shadow = headers.get("shadow")
    if shadow is not None and not isinstance(shadow, str):
        # Under another name type the run vanishes: no result, no failure, no log
        return f"shadow (the task's display name) must be a string, got {_short(shadow)}"
    retries = headers.get("retries")
    if retries is not None and not (isinstance(retries, int) and retries >= 0):
        # on_task_failure counts the attempts from it
        return f"retries must be a count, got {_short(retries)}"
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
    task_id, task, queue = headers.get("id"), headers.get("task"), _queue_of(message)
    return f"message {_short(task_id)} of task {_short(task)} on {_short(queue)}"
