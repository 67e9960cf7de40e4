"""A handler task's message is acknowledged only after its dead letter is written.

What Celery does (5.7, ``celery/worker/request.py``). A handler task's own
failures are reported by its task, in the pool process, before its result
goes back to the worker: there eventbus writes the record first
(``WorkerHooks.dead_letter_in_task``) and the message is acked after. Some
failures are reported by the worker's main process instead, in its
``Request``:

* a hard time limit: billiard sets the job's result (``Request.on_failure``,
  which acks and fires ``task_failure``), then calls ``Request.on_timeout``,
  which fires ``task_failure`` again and acks again: two reports, and with a
  write in each ``task_failure`` receiver two records;
* ``Reject(requeue=False)`` (``on_failure`` fires ``task_failure``, then
  rejects: on Redis the message is gone, on RabbitMQ it also goes to the
  dead-letter exchange); Celery's own ``Task.retry`` raises it when it cannot
  send the retry (the broker is down);
* a lost worker whose message is not re-queued.

In each, Celery acks (or drops) the message whether or not a receiver of
``task_failure`` could write the record: a broker that refuses the write
loses the failure (issue 11, item 1). And a receiver writes in the event loop,
which waits meanwhile.

What this module changes. Handler tasks get a ``Request`` class of their own
(Celery's documented custom request, the task's ``Request`` attribute),
composed over the app Task's own ``Request`` (Django's, Flask's, yours), by
:func:`request_class`. Around Celery's ``on_failure`` and ``on_timeout`` it
holds the acks and rejects Celery asks for, and notes the ``task_failure``
Celery fires meanwhile (:func:`reported_by_request`, called by eventbus's
receiver, which then writes nothing). Then:

* no failure reported here, or a re-queue: the message is settled as Celery
  asked, at once;
* a terminal failure reported here: its record goes to the worker's
  :class:`~eventbus.celery.dead_letter_writer.DeadLetterWriter` (a thread), and the
  message is acked once the record is written, or re-queued if it could not
  be (the handler runs again later). A dropping reject becomes an ack after
  the write: the record is the dead letter, the broker keeps no second copy.
  The second report of a hard time limit settles nothing more;
* the retry Celery could not send (the broker is down): the message is
  re-queued, to run again with the attempt it had, instead of being dropped.

What it leaves alone: everything else Celery does in those methods (task
state, the task's ``on_failure``, events, logs), and every other task.

A custom ``Request`` is Celery's documented extension point, but that
``on_failure`` and ``on_timeout`` settle the message through ``acknowledge``
and ``reject`` is not: those four methods and their signatures are checked
when the worker starts (:mod:`eventbus.celery.internals.compat`, feature
``dead_letter_before_ack``, a guarantee), and a Celery that changed them
stops the worker with :class:`~eventbus.errors.IncompatibleDependency`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from billiard.einfo import ExceptionWithTraceback  # type: ignore[import-untyped]
from celery import bootsteps
from celery.exceptions import Reject
from kombu.exceptions import OperationalError
from kombu.utils.imports import symbol_by_name

if TYPE_CHECKING:
    from eventbus.celery.dead_letter_writer import DeadLetterWriter
    from eventbus.deadletter.record import DeadLetter

__all__ = ["Recorder", "reported_by_request", "request_class", "writer_step"]

logger = logging.getLogger(__name__)


class Recorder(Protocol):
    """What a handler task's ``Request`` needs from the worker's hooks."""

    writer: DeadLetterWriter

    def record_of_request(
        self, request: Any, exception: BaseException, traceback: str | None
    ) -> DeadLetter | None:
        """The record of a failure Celery reported for ``request``; None: not a handler task."""

    def announce(self, record: DeadLetter, *, ran: bool) -> None:
        """Tell receivers of ``dead_letter_written`` that ``record`` was written."""


@dataclass
class _Report:
    """A failure Celery is reporting for one handler task's request, in this thread."""

    task: Any
    failures: list[tuple[BaseException, Any]] = field(default_factory=list)


_reporting = threading.local()

# Celery's settlements, as held while it reports a failure.
_ACK, _REQUEUE, _DROP = "ack", "requeue", "drop"


def reported_by_request(sender: Any, exception: BaseException, einfo: Any) -> bool:
    """Whether a handler task's ``Request`` is reporting this failure (and writes its record).

    Called by eventbus's ``task_failure`` receiver, which then writes nothing.
    """
    report: _Report | None = getattr(_reporting, "report", None)
    if report is None or report.task is not sender:
        return False
    report.failures.append((exception, einfo))
    return True


class _DeadLetterBeforeAck:
    """The overrides of a handler task's ``Request`` (composed by :func:`request_class`)."""

    _eventbus_recorder: Recorder
    _eventbus_held: list[str] | None = None  # settlements asked for during a report
    _eventbus_settled = False  # a terminal failure reported here is being written, or was

    # Celery's Request, next in the MRO.
    task: Any
    connection_errors: tuple[type[BaseException], ...]

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        parent: Any = super()
        return self._eventbus_report(parent.on_failure, exc_info, send_failed_event, return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> Any:
        parent: Any = super()
        if soft:
            return parent.on_timeout(soft, timeout)
        return self._eventbus_report(parent.on_timeout, soft, timeout)

    def acknowledge(self) -> None:
        if self._eventbus_held is not None:
            self._eventbus_held.append(_ACK)
            return
        parent: Any = super()
        parent.acknowledge()

    def reject(self, requeue: bool = False) -> None:
        if self._eventbus_held is not None:
            self._eventbus_held.append(_REQUEUE if requeue else _DROP)
            return
        parent: Any = super()
        parent.reject(requeue=requeue)

    def _eventbus_report(self, report: Callable[..., Any], *args: Any) -> Any:
        held: list[str] = []
        current = _Report(self.task)
        outer = getattr(_reporting, "report", None)
        _reporting.report, self._eventbus_held = current, held
        try:
            return report(*args)
        finally:
            _reporting.report, self._eventbus_held = outer, None
            self._eventbus_settle(held, current.failures)

    def _eventbus_settle(self, held: list[str], failures: list[tuple[BaseException, Any]]) -> None:
        if not held:
            return  # Celery settled nothing (a revoked or terminated task)
        asked = held[0]
        if asked == _REQUEUE or not failures:
            # Not terminal, or reported (and recorded) by the task itself.
            self._eventbus_apply(asked)
            return
        if self._eventbus_settled:
            return  # the second report of a hard time limit: the first one settles
        exception, einfo = failures[0]
        if isinstance(exception, ExceptionWithTraceback):
            exception = exception.exc
        if self._eventbus_retry_not_sent(exception):
            logger.warning(
                "%s[%s]: its retry could not be sent (%s); the message goes back to its "
                "queue and runs again",
                self.task.name,
                getattr(self, "id", "?"),
                exception,
            )
            self._eventbus_apply(_REQUEUE)
            return
        recorder = self._eventbus_recorder
        record = recorder.record_of_request(self, exception, getattr(einfo, "traceback", None))
        if record is None:
            self._eventbus_apply(asked)
            return
        self._eventbus_settled = True
        redelivered = bool((getattr(self, "delivery_info", None) or {}).get("redelivered"))
        recorder.writer.submit(
            record,
            # Written: ack (also for a dropping reject: the broker keeps no second copy).
            written=self.acknowledge,
            given_up=lambda: self.reject(requeue=True),
            again=redelivered,
            on_written=lambda: recorder.announce(record, ran=True),
        )

    def _eventbus_apply(self, asked: str) -> None:
        if asked == _ACK:
            self.acknowledge()
        else:
            self.reject(requeue=asked == _REQUEUE)

    def _eventbus_retry_not_sent(self, exception: BaseException) -> bool:
        """``Task.retry`` raises ``Reject(reason, requeue=False)`` when the broker took no retry."""
        if not isinstance(exception, Reject) or exception.requeue:
            return False
        unreachable: tuple[type[BaseException], ...] = (
            OperationalError,
            OSError,
            *self.connection_errors,
        )
        return isinstance(exception.reason, unreachable)


def request_class(base: type | str, recorder: Recorder) -> type:
    """The ``Request`` class of a handler task: ``base`` (a class or its path) with the overrides.

    ``base`` is the app Task's own ``Request``, which Celery's strategy would use.
    """
    base_class: type = symbol_by_name(base) if isinstance(base, str) else base
    return type(
        f"DeadLetterBeforeAck{base_class.__name__}",
        (_DeadLetterBeforeAck, base_class),
        {"_eventbus_recorder": recorder, "__module__": __name__},
    )


def writer_step(writer: DeadLetterWriter) -> type[bootsteps.StartStopStep]:
    """A consumer step: ``writer`` settles messages through the consumer's event loop."""

    class DeadLetterWriterStep(bootsteps.StartStopStep):  # type: ignore[misc]
        name = f"eventbus.DeadLetterWriter.{id(writer)}"

        def start(self, consumer: Any) -> None:
            # Thread-safe: the hub's call_soon wakes its poll (Celery 5.7, kombu 5.7);
            # without a hub (gevent, eventlet) the loop runs it at its next turn.
            writer.bind(consumer.call_soon)

        def shutdown(self, consumer: Any) -> None:
            writer.stop()

    return DeadLetterWriterStep
