"""Dead letters on RabbitMQ: browse with ``basic_get`` and give everything back.

AMQP 0-9-1 has no "peek". Browsing consumes every message unacknowledged on
a private channel and then closes it, which makes the broker requeue them all in
their original order. While one browser holds a message, no other sees it:
that is what makes a replay exclusive. A record is acked (removed) only after
the chunk of records replayed with it was published and confirmed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Generator, Iterator
from contextlib import contextmanager
from typing import Any

from kombu.message import Message
from kombu.messaging import Consumer

from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.store import (
    REPLAY_CHUNK,
    BrokerDeadLetterStore,
    Publish,
    Select,
    decode_record,
)

__all__ = ["AmqpDeadLetterStore"]

IDLE_TIMEOUT = 1.0  #: seconds without a message after which a browse ends early


class AmqpDeadLetterStore(BrokerDeadLetterStore):
    """Browse the queue on a throwaway channel; close it to requeue."""

    @contextmanager
    def _browsing(self) -> Iterator[Iterator[tuple[Message, DeadLetter]]]:
        """Every (message, record), held unacked until the block ends, then requeued.

        A consumer without a prefetch limit streams the queue (one
        ``basic_get`` per record would cost a round trip each); nothing is
        acked unless the caller acks it (inside the block: closing the
        channel requeues the rest).
        """
        with self.app.connection_for_write() as conn:
            channel = conn.channel()
            walk = self._walk(conn, channel)
            try:
                yield walk
            finally:
                try:
                    walk.close()  # cancels its consumer, if the walk stopped early
                finally:
                    channel.close()  # unacked messages go back to the queue

    def _walk(self, conn: Any, channel: Any) -> Generator[tuple[Message, DeadLetter], None, None]:
        bound = self.queue.bind(channel)
        bound.declare()
        # Bound the walk by the depth seen at the start, so records appended
        # meanwhile (or requeued by another browser) do not make it endless.
        _, depth, _ = bound.queue_declare(passive=True)
        if not depth:
            return
        arrived: deque[Message] = deque()
        channel.basic_qos(0, 0, False)  # hold them all unacked while browsing
        consumer = Consumer(
            channel, queues=[bound], no_ack=False, on_message=arrived.append, accept=["json"]
        )
        seen = 0
        with consumer:
            while seen < depth:
                if not arrived:
                    try:
                        conn.drain_events(timeout=IDLE_TIMEOUT)
                    except TimeoutError:
                        return  # the rest is held by another browser
                    continue
                message = arrived.popleft()
                seen += 1
                yield message, decode_record(message.body, message.headers)

    def __iter__(self) -> Iterator[DeadLetter]:
        with self._browsing() as walk:
            for _, record in walk:
                yield record

    def remove(self, record_ids: Collection[str]) -> int:
        wanted = set(record_ids)
        found = 0
        with self._browsing() as walk:
            for message, record in walk:
                if record.id in wanted:
                    message.ack()
                    found += 1
        return found

    def redeliver(self, select: Select, publish: Publish, *, limit: int | None = None) -> list[str]:
        # One browse holds every message it has seen. Each chunk of selected
        # records is published together and then acked; a concurrent replay
        # cannot see a record this one holds, and whatever is not acked goes
        # back to the queue when the browse ends.
        done: list[str] = []
        chunk: list[tuple[Message, DeadLetter]] = []

        def flush() -> None:
            try:
                sent = set(publish([record for _, record in chunk]))
                for message, record in chunk:
                    if record.id in sent:
                        message.ack()
                        done.append(record.id)
            finally:
                chunk.clear()

        try:
            with self._browsing() as walk:
                for message, record in walk:
                    if limit is not None and len(done) + len(chunk) >= limit:
                        break
                    if select(record):
                        chunk.append((message, record))
                        if len(chunk) >= REPLAY_CHUNK:
                            flush()
                if chunk:  # acked before the browse's channel closes
                    flush()
        finally:
            self._announce_replayed(done)
        return done
