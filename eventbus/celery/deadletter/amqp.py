"""Dead letters on RabbitMQ: browse with a consumer and give everything back.

A message in the queue whose headers nest deeper than py-amqp decodes (the
broker dead-letters whatever a consumer rejected) is read through
:func:`eventbus.celery.internals.amqp_headers.guard_deep_headers`, installed by every browse,
and listed as an undecodable record, never raised out of the browse.

AMQP 0-9-1 has no "peek". Browsing consumes every message unacknowledged on
a private channel and then closes it, which makes the broker requeue them all in
their original order; the browse ends once the broker shows them again.
While one browser holds a message, no other sees it: that is what makes a
replay exclusive, and what made a second listing meanwhile print fewer
records, or none, as if the queue held no more. Readers therefore take
turns: a browse holds an exclusive queue named after the DLQ
(``<dlq>.eventbus-reader``, a lock the broker drops with the browse's
connection) from before it reads until its messages are back, a reader
waits for its turn (``eventbus_dlq_browse_wait`` seconds, default 10), and
past that it raises :class:`~eventbus.errors.DeadLetterQueueBusy`: could not
read, never "empty". A consumer of the DLQ outside that turn-taking (another
tool) makes a read busy too. A record is acked (removed) only after
the chunk of records replayed with it was published and confirmed.

A queue cannot refuse a duplicate on write. A write that may repeat an
earlier one (its confirm was lost, or the failed message was delivered
again) first browses the queue for a record of the same id, and writes
only if there is none. A record another browse (a listing, a replay) holds
is not seen: with another consumer on the queue the write waits for a later
try instead. What remains: a record written by a write that is still waiting
for its confirm elsewhere (another worker) is not seen yet either, and two
processes that ran the same redelivered message can each write it: the
queue then holds copies of one record (same id). Reading shows the record
once (:meth:`~eventbus.deadletter.store.DeadLetterStore.records`), a replay
publishes it once and acks every copy, and a count of records browses the
queue (the broker's message count includes the copies).
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Collection, Generator, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from kombu.entity import Queue
from kombu.message import Message
from kombu.messaging import Consumer

from eventbus.broker_errors import is_missing_queue
from eventbus.celery.deadletter.base import BrokerDeadLetterStore, decode_record
from eventbus.celery.deadletter.summaries import lean_summary
from eventbus.celery.internals.amqp_headers import guard_deep_headers
from eventbus.celery.queue_types import dead_letter_queue_arguments
from eventbus.celery.refused import read_stand_in
from eventbus.deadletter.record import MAX_RAW_BODY, DeadLetter
from eventbus.deadletter.store import (
    DEFAULT_DEAD_LETTER_QUEUE,
    REPLAY_CHUNK,
    IdSet,
    Publish,
    Removed,
    Select,
    distinct,
)
from eventbus.deadletter.summary import Summary
from eventbus.errors import DeadLetterError, DeadLetterQueueBusy

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["AmqpDeadLetterStore"]

IDLE_TIMEOUT = 1.0  #: seconds without a message after which a browse ends early
#: Seconds a browse waits, at most, once its channel closed, until the broker
#: shows the messages it held as ready again (it requeues them after its
#: close-ok: a browse started at once could find the queue empty). Reached
#: only when another browser took messages meanwhile.
REQUEUE_WAIT = 2.0
#: Seconds between a waiting reader's first asks for its turn, and at most later on.
TURN_POLL_FIRST, TURN_POLL_MAX = 0.02, 0.5
#: Seconds a reader waits, by default, for another reader to finish (``eventbus_dlq_browse_wait``).
BROWSE_WAIT = 10.0
#: The lock a reader of the DLQ holds: an exclusive queue of this name's suffix.
READER_LOCK_SUFFIX = ".eventbus-reader"
#: AMQP reply codes: the exclusive queue is another connection's; no such queue.
RESOURCE_LOCKED, NOT_FOUND = 405, 404


class _Browse:
    """One browse: its (message, record) walk, and how many messages it holds."""

    def __init__(
        self, conn: Any, channel: Any, bound: Any, busy: Callable[[str], DeadLetterQueueBusy]
    ) -> None:
        self.bound = bound
        self.busy = busy
        self.seen = 0
        self.acked = 0
        self._walk = self._messages(conn, channel)

    def __iter__(self) -> Iterator[tuple[Message, DeadLetter]]:
        return ((message, _record_of(message)) for message in self._walk)

    def messages(self) -> Iterator[Message]:
        """The messages alone, not decoded (iterate one way or the other, once)."""
        return self._walk

    @property
    def held(self) -> int:
        return self.seen - self.acked

    def ack(self, message: Message) -> None:
        message.ack()
        self.acked += 1

    def stop(self) -> None:
        self._walk.close()  # cancels its consumer, if the walk stopped early

    def ready(self) -> int:
        _, count, _ = self.bound.queue_declare(passive=True)
        return int(count)

    def _messages(self, conn: Any, channel: Any) -> Generator[Message, None, None]:
        bound = self.bound
        bound.declare()
        # Bound the walk by the depth seen at the start, so records appended
        # meanwhile (or requeued by another browser) do not make it endless.
        _, depth, consumers = bound.queue_declare(passive=True)
        if consumers:  # a reader outside the turn-taking holds records: they would be missed
            raise self.busy(f"{consumers} other consumer(s) of the queue hold its records")
        if not depth:
            return
        arrived: deque[Message] = deque()
        channel.basic_qos(0, 0, False)  # hold them all unacked while browsing
        consumer = Consumer(
            channel, queues=[bound], no_ack=False, on_message=arrived.append, accept=["json"]
        )
        with consumer:
            while self.seen < depth:
                if not arrived:
                    try:
                        conn.drain_events(timeout=IDLE_TIMEOUT)
                    except TimeoutError:
                        return  # the rest is held by another browser
                    continue
                message = arrived.popleft()
                self.seen += 1
                yield message


def _summary_of(message: Message) -> Summary:
    """The row of a DLQ message: lean where it can be read so (.summaries), else from its record."""
    if read_stand_in(message.content_type, message.headers, message.body) is None:
        row = lean_summary(message.body, message.headers)
        if row is not None:
            return row
    return Summary.of(_record_of(message))


def _record_of(message: Message) -> DeadLetter:
    """The record a DLQ message holds; one py-amqp could not read is an undecodable record."""
    stood_in = read_stand_in(message.content_type, message.headers, message.body)
    if stood_in is None:
        return decode_record(message.body, message.headers)
    # Headers nested deeper than py-amqp decodes (transport.amqp's guard): the
    # body is the message's own, its headers are gone.
    body = message.body if isinstance(message.body, bytes) else stood_in.raw
    raw = body.decode("utf-8", "replace")
    return DeadLetter(
        id="raw-" + hashlib.sha1(body).hexdigest()[:16],
        handler=None,
        reason="undecodable",
        attempts=0,
        exception_type="EnvelopeDecodeError",
        exception_message=f"not a dead-letter record: the broker delivered {stood_in.why}",
        raw_body=raw[:MAX_RAW_BODY],
        raw_size=len(body),
    )


class AmqpDeadLetterStore(BrokerDeadLetterStore):
    """Browse the queue on a throwaway channel; close it to requeue.

    With ``eventbus_queue_type = "quorum"`` the queue is a quorum queue whose
    delivery limit no browse reaches (:mod:`eventbus.celery.queue_types`).
    """

    def __init__(self, app: Celery, queue_name: str = DEFAULT_DEAD_LETTER_QUEUE) -> None:
        super().__init__(app, queue_name)
        arguments = dead_letter_queue_arguments(app.conf)
        if arguments:
            self.queue = Queue(
                queue_name,
                self.exchange,
                routing_key=queue_name,
                durable=True,
                auto_delete=False,
                queue_arguments=arguments,
            )

    def append_once(self, record: DeadLetter, *, again: bool = False) -> None:
        if again and self._holds(record):
            return  # the earlier write went through
        super().append_once(record)

    def _holds(self, record: DeadLetter) -> bool:
        """Whether the queue holds a record of this id, as a browse no other reader overlapped saw.

        A browse sees only the messages nobody else holds: while another
        reader (a listing, a replay) has its turn, not finding the record
        proves nothing. The write does not wait for that turn (a worker
        writes it): it waits for a later try instead.
        """
        try:
            with self._browsing("check", wait=0.0) as browse:
                return any(kept.id == record.id for _, kept in browse)
        except DeadLetterQueueBusy as exc:
            raise DeadLetterError(
                f"dead letter {record.id} may be in {self.queue_name!r} already, held by "
                f"another reader (a listing, a replay): looking again before writing it ({exc})"
            ) from exc
        except Exception as exc:
            raise self._not_written(record, exc) from exc

    def _consumers(self) -> int:
        """Consumers of the queue now: browses (a worker never consumes the DLQ)."""
        with self.app.connection_for_write() as conn:
            try:
                _, _, consumers = self.queue.bind(conn.default_channel).queue_declare(passive=True)
            except conn.channel_errors as exc:
                if getattr(exc, "reply_code", None) == 404:
                    return 0  # not declared yet: nothing to browse
                raise
            return int(consumers)

    @property
    def _lock_name(self) -> str:
        return f"{self.queue_name}{READER_LOCK_SUFFIX}"

    def _browse_wait(self) -> float:
        value = self.app.conf.get("eventbus_dlq_browse_wait")
        return BROWSE_WAIT if value is None else max(0.0, float(value))

    def _busy(self, doing: str, why: str) -> DeadLetterQueueBusy:
        return DeadLetterQueueBusy(
            f"cannot {doing} the dead-letter queue {self.queue_name!r} now: another reader "
            f"(a listing, a replay, a purge) holds its records ({why}); reading it meanwhile "
            "would miss them: try again when it is done"
        )

    def _take_turn(self, conn: Any, doing: str, wait: float) -> None:
        """Hold the readers' lock on ``conn`` (an exclusive queue), waiting up to ``wait`` s."""
        deadline = time.monotonic() + wait
        pause = TURN_POLL_FIRST
        while True:
            channel = conn.channel()
            try:
                channel.queue_declare(
                    queue=self._lock_name, durable=False, exclusive=True, auto_delete=True
                )
                channel.close()
                return
            except conn.channel_errors as exc:  # (the broker closed that channel)
                if getattr(exc, "reply_code", None) != RESOURCE_LOCKED:
                    raise
            if time.monotonic() >= deadline:
                raise self._busy(doing, f"waited {wait:g} s for it, eventbus_dlq_browse_wait")
            # Another reader's turn: ask again (a lock has no "wake me"), less
            # often the longer it lasts (each ask opens a channel on the broker).
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, TURN_POLL_MAX)

    def _someone_reading(self, conn: Any) -> str:
        """Why a read now would miss records ("" if nobody else reads): the lock, consumers."""
        channel = conn.channel()
        try:
            channel.queue_declare(queue=self._lock_name, passive=True)
        except conn.channel_errors as exc:
            code = getattr(exc, "reply_code", None)
            if code == RESOURCE_LOCKED:
                return "it is another reader's turn"
            if code != NOT_FOUND:
                raise
        else:
            channel.close()
            return "it is another reader's turn"
        try:
            _, _, consumers = self.queue.bind(conn.default_channel).queue_declare(passive=True)
        except conn.channel_errors as exc:
            if is_missing_queue(exc):
                return ""
            raise
        return f"{consumers} other consumer(s) of the queue hold its records" if consumers else ""

    def count(self) -> int:
        # The broker's count leaves out the messages a reader holds: while one
        # reads, the depth is not known (raised at once: monitors poll this).
        with self._broker("read") as conn:
            why = self._someone_reading(conn)
            if why:
                raise self._busy("count", why)
        return super().count()

    @contextmanager
    def _browsing(self, doing: str = "read", *, wait: float | None = None) -> Iterator[_Browse]:
        """Every (message, record), held unacked until the block ends, then requeued.

        A consumer without a prefetch limit streams the queue (one
        ``basic_get`` per record would cost a round trip each); nothing is
        acked unless the caller acks it (inside the block: closing the
        channel requeues the rest, and the block ends once they are back).
        """
        # A message whose headers nest deeper than py-amqp decodes would raise
        # RecursionError out of the browse: read as a stand-in instead.
        guard_deep_headers()
        with self._broker(doing) as conn:
            # Held until the messages are back (the connection closes after
            # _wait_ready): the next reader's turn starts with a whole queue.
            self._take_turn(conn, doing, self._browse_wait() if wait is None else wait)
            channel = conn.channel()
            browse = _Browse(
                conn, channel, self.queue.bind(channel), lambda why: self._busy(doing, why)
            )
            try:
                yield browse
            finally:
                try:
                    browse.stop()
                    held = browse.held
                    expected = browse.ready() + held if held else 0
                finally:
                    channel.close()  # unacked messages go back to the queue
            if held:
                self._wait_ready(conn, expected)

    def _wait_ready(self, conn: Any, expected: int) -> None:
        bound = self.queue.bind(conn.default_channel)
        deadline = time.monotonic() + REQUEUE_WAIT
        while True:
            _, ready, _ = bound.queue_declare(passive=True)
            if ready >= expected or time.monotonic() >= deadline:
                return
            time.sleep(0.005)

    def __iter__(self) -> Iterator[DeadLetter]:
        with self._browsing() as browse:
            for _, record in browse:
                yield record

    def summaries(self) -> Iterator[Summary]:
        return distinct(self._summaries())

    def _summaries(self) -> Iterator[Summary]:
        with self._browsing() as browse:
            for message in browse.messages():
                yield _summary_of(message)

    def remove(self, record_ids: Collection[str]) -> int:
        wanted = set(record_ids)
        found: set[str] = set()
        with self._browsing("remove records from") as browse:
            for message, record in browse:
                if record.id in wanted:  # every copy of it
                    browse.ack(message)
                    found.add(record.id)
        return len(found)

    def purge(self, *, removed: Removed | None = None) -> int:
        # Acked one by one in a browse, rather than a queue purge: the records
        # counted (and reported to monitors) are exactly the messages removed.
        ids: list[str] = []
        heard = 0  # ids[:heard] were reported to ``removed``
        seen = IdSet()
        with self._browsing("purge") as browse:
            for message, record in browse:
                browse.ack(message)
                if seen.add(record.id):
                    ids.append(record.id)
                if removed is not None and len(ids) - heard >= REPLAY_CHUNK:
                    # An ack has no answer; a synchronous method on the same
                    # channel does, after the broker handled the acks before it.
                    browse.ready()
                    removed(ids[heard:])
                    heard = len(ids)
        if removed is not None and len(ids) > heard:
            removed(ids[heard:])  # the browse ended: its channel closed after the acks
        self._announce(ids, "task-revoked", terminated=False, expired=False, signum=None)
        return len(ids)

    def redeliver(self, select: Select, publish: Publish, *, limit: int | None = None) -> list[str]:
        # One browse holds every message it has seen. Each chunk of selected
        # records is published together and then acked; a concurrent replay
        # cannot see a record this one holds, and whatever is not acked goes
        # back to the queue when the browse ends. A record with copies is
        # published once (its oldest copy); every copy is acked with it. With
        # a limit, the browse goes on past it only to ack copies.
        done: list[str] = []
        chunk: list[tuple[Message, DeadLetter]] = []
        seen = IdSet()  # ids met: a later copy is never selected
        replayed = IdSet()
        copies: dict[str, list[Message]] = {}  # of the records in the chunk, acked with them

        def flush(browse: _Browse) -> None:
            try:
                sent = set(publish([record for _, record in chunk]))
                for message, record in chunk:
                    if record.id in sent:
                        for held in (message, *copies.get(record.id, ())):
                            browse.ack(held)
                        replayed.add(record.id)
                        done.append(record.id)
            finally:
                chunk.clear()
                copies.clear()

        try:
            with self._browsing("replay from") as browse:
                for message, record in browse:
                    if not seen.add(record.id):
                        if record.id in replayed:
                            browse.ack(message)
                        elif record.id in copies:
                            copies[record.id].append(message)
                        continue
                    if limit is not None and len(done) + len(chunk) >= limit:
                        continue
                    if select(record):
                        chunk.append((message, record))
                        copies[record.id] = []
                        if len(chunk) >= REPLAY_CHUNK:
                            flush(browse)
                if chunk:  # acked before the browse's channel closes
                    flush(browse)
        finally:
            self._announce_replayed(done)
        return done
