"""The worker's dead-letter writer: records written off the event loop, messages settled after.

Some terminal failures of a handler task are reported in the worker's main
process, where its event loop runs (a hard time limit, see
:mod:`eventbus.celery.dead_letter_before_ack`). Their record must be durably written
(on RabbitMQ: confirmed) before the message is acknowledged, and the write
must never hold up the loop: a write to a broker that went away takes
seconds, and other queues' messages are waiting.

:class:`DeadLetterWriter` writes such records in a thread of its own, one
attempt at a time, and hands each outcome back to the event loop
(``call_soon``, thread-safe): ``written`` (the caller acks) once the store
took the record, or ``given_up`` (the caller re-queues the message, so the
handler runs again later) when it could not within :data:`PATIENCE` seconds.
Until then the message stays unacknowledged, and the write is tried again
after 0.5 s, 1 s, 2 s, ... at most :data:`RETRY_MAX` seconds apart. The log
says once that writes are failing (with the first record pending), and once
when they work again; not one traceback per try.

One failed delivery, one record: a record's id comes from the delivery
(:func:`delivery_record_id`), and a record submitted again while its write
is pending, or after it was written (a message delivered again), is not
written twice: its caller is settled with the first write.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eventbus.deadletter.record import DeadLetter
    from eventbus.deadletter.store import DeadLetterStore

__all__ = [
    "PATIENCE",
    "RETRY_FIRST",
    "RETRY_MAX",
    "DeadLetterWriter",
    "delivery_record_id",
]

logger = logging.getLogger(__name__)

PATIENCE = 60.0  #: seconds a record's write is retried before its message is re-queued
RETRY_FIRST = 0.5  #: seconds before the first retry of a failed write; doubled each time
RETRY_MAX = 5.0  #: seconds between two tries, at most
REMEMBERED = 10_000  #: ids of written records kept, to settle a redelivery without a write

#: What the writer runs on the event loop: acknowledge, or re-queue, a message.
Settle = Callable[[], None]

_NAMESPACE = uuid.UUID("0f6d5f3e-3b7a-5d2e-9a51-6b0c1e0e8a11")


def delivery_record_id(handler: str, task_id: str | None, attempt: int) -> str:
    """The id of the record of one failed delivery: the same wherever and however often it is made.

    A handler task's id stays the same across its retries; the attempt
    number tells them apart. Without a task id, a random id.
    """
    if task_id is None:
        return uuid.uuid4().hex
    return uuid.uuid5(_NAMESPACE, f"{handler}\n{task_id}\n{attempt}").hex


def _call_now(callback: Settle) -> None:
    callback()


@dataclass
class _Pending:
    record: DeadLetter
    again: bool  #: it may have been written before (a redelivered message)
    since: float
    #: Runs in the writer's thread once this writer wrote the record (the first submitter's).
    on_written: Callable[[], None] | None = None
    written: list[Settle] = field(default_factory=list)
    given_up: list[Settle] = field(default_factory=list)
    attempts: int = 0  #: failed tries so far
    due: float = 0.0  #: monotonic() of the next try


class DeadLetterWriter:
    """Writes dead letters in a thread, and settles their messages on the event loop.

    ``store`` returns the store to write to (the bus's, created on first use).
    :meth:`bind` gives it the event loop's ``call_soon`` (the consumer's); until
    then outcomes run in the writer's thread.
    """

    def __init__(
        self,
        store: Callable[[], DeadLetterStore],
        *,
        patience: float = PATIENCE,
        retry_first: float = RETRY_FIRST,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self._store = store
        self.patience = patience
        self.retry_first = retry_first
        self.retry_max = retry_max
        self._call_soon: Callable[[Settle], object] = _call_now
        self._pending: dict[str, _Pending] = {}
        self._written: OrderedDict[str, None] = OrderedDict()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._failing = False  # writes are failing: said once, until one works again

    def bind(self, call_soon: Callable[[Settle], object]) -> None:
        """Run outcomes with ``call_soon`` from now on (the worker's event loop)."""
        self._call_soon = call_soon

    @property
    def pending(self) -> int:
        """Records submitted and not written (nor given up) yet."""
        with self._wake:
            return len(self._pending)

    def submit(
        self,
        record: DeadLetter,
        *,
        written: Settle,
        given_up: Settle,
        again: bool = False,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        """Write ``record``; then run ``written``, or ``given_up`` if it could not be written.

        ``again``: the failure may have been recorded before (its message was
        delivered again); a store that can tell does not write it twice.
        ``on_written`` runs in the writer's thread right after this writer
        wrote the record: once per record, not for a record submitted again
        while pending or after it was written.
        """
        with self._wake:
            if record.id in self._written:
                already = True
            else:
                already = False
                pending = self._pending.get(record.id)
                if pending is None:
                    pending = _Pending(record, again, since=monotonic(), on_written=on_written)
                    self._pending[record.id] = pending
                pending.written.append(written)
                pending.given_up.append(given_up)
                self._start()
                self._wake.notify()
        if already:
            logger.info("dead letter %s was written already", record.summary())
            self._call_soon(written)

    def stop(self) -> None:
        """Stop the thread; pending records stay unwritten and their messages unacknowledged."""
        with self._wake:
            self._stopping = True
            left = len(self._pending)
            self._wake.notify()
        if left:
            logger.warning(
                "%d dead letter(s) not written at shutdown: their messages were not "
                "acknowledged and will be delivered again",
                left,
            )

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(
                target=self._run, name="eventbus-dead-letter-writer", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._wake:
                pending = self._next_due()
                if pending is None:
                    return
            self._attempt(pending)

    def _next_due(self) -> _Pending | None:
        """The next record to try, once it is due (waits); None when stopping. Holds the lock."""
        while not self._stopping:
            if self._pending:
                pending = min(self._pending.values(), key=lambda p: p.due)
                wait = pending.due - monotonic()
                if wait <= 0:
                    return pending
                self._wake.wait(wait)
            else:
                self._wake.wait()
        return None

    def _attempt(self, pending: _Pending) -> None:
        record = pending.record
        try:
            self._store().append_once(record, again=pending.again or pending.attempts > 0)
        except Exception as exc:
            self._failed(pending, exc)
            return
        with self._wake:
            self._pending.pop(record.id, None)
            self._written[record.id] = None
            while len(self._written) > REMEMBERED:
                self._written.popitem(last=False)
            recovered = self._failing and not any(p.attempts for p in self._pending.values())
            if recovered:
                self._failing = False
        logger.error("dead-lettered %s", record.summary())
        if recovered:
            logger.warning("dead-letter writes work again: the pending records are written")
        if pending.on_written is not None:
            try:
                pending.on_written()
            except Exception:  # (a receiver's error): the record is written all the same
                logger.exception("after dead letter %s was written", record.id)
        for settle in pending.written:
            self._call_soon(settle)

    def _failed(self, pending: _Pending, exc: Exception) -> None:
        record = pending.record
        pending.attempts += 1
        now = monotonic()
        with self._wake:
            if now - pending.since >= self.patience:
                self._pending.pop(record.id, None)
                give_up, first = True, False
                if not any(p.attempts for p in self._pending.values()):
                    self._failing = False  # the next failure is news again
            else:
                give_up = False
                pending.due = now + min(
                    self.retry_max, self.retry_first * 2 ** (pending.attempts - 1)
                )
                first, self._failing = not self._failing, True
            waiting = len(self._pending)
        if give_up:
            logger.error(
                "dead letter %s not written in %.0f s (%d tries; last: %s): its message goes "
                "back to its queue, and the handler runs again",
                record.summary(),
                now - pending.since,
                pending.attempts,
                exc,
            )
            for settle in pending.given_up:
                self._call_soon(settle)
        elif first:
            logger.warning(
                "dead letter %s not written yet: %s. Its message stays unacknowledged while "
                "the write is tried again, for up to %.0f s (%d record(s) pending)",
                record.summary(),
                exc,
                self.patience,
                waiting,
            )
        else:
            logger.debug("dead letter %s not written yet: %s", record.id, exc)
