"""Dead letters on RabbitMQ: browse with ``basic_get`` and give everything back.

AMQP 0-9-1 has no "peek". Browsing consumes every message unacknowledged on
a private channel and then closes it, which makes the broker requeue them all in
their original order. While one browser holds a message, no other sees it:
that is what makes a replay exclusive. A record is acked (removed) only after
its replay was published.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterator

from kombu.message import Message
from kombu.messaging import Consumer

from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.store import BrokerDeadLetterStore, Publish, Select, decode_record

__all__ = ["AmqpDeadLetterStore"]

IDLE_TIMEOUT = 1.0  #: seconds without a message after which a browse ends early


class AmqpDeadLetterStore(BrokerDeadLetterStore):
    """Browse the queue on a throwaway channel; close it to requeue."""

    def _browse(
        self, on_record: Select | None = None, wanted: Collection[str] = ()
    ) -> Iterator[DeadLetter]:
        """Yield every record; ack the ``wanted`` ones and those ``on_record`` returns True for.

        A consumer without a prefetch limit streams the queue (one
        ``basic_get`` per record would cost a round trip each); nothing is
        acked unless chosen, and closing the channel requeues the rest.
        """
        with self.app.connection_for_write() as conn:
            channel = conn.channel()
            try:
                bound = self.queue.bind(channel)
                bound.declare()
                # Bound the walk by the depth seen at the start, so records
                # appended meanwhile (or requeued by another browser) do not
                # make it endless.
                _, depth, _ = bound.queue_declare(passive=True)
                if not depth:
                    return
                arrived: deque[Message] = deque()
                channel.basic_qos(0, 0, False)  # hold them all unacked while browsing
                consumer = Consumer(
                    channel,
                    queues=[bound],
                    no_ack=False,
                    on_message=arrived.append,
                    accept=["json"],
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
                        record = decode_record(message.body, message.headers)
                        if record.id in wanted or (on_record is not None and on_record(record)):
                            message.ack()
                        yield record
            finally:
                channel.close()  # unacked messages go back to the queue

    def __iter__(self) -> Iterator[DeadLetter]:
        return self._browse()

    def remove(self, record_ids: Collection[str]) -> int:
        wanted = set(record_ids)
        return sum(1 for record in self._browse(wanted=wanted) if record.id in wanted)

    def redeliver(self, select: Select, publish: Publish, *, limit: int | None = None) -> list[str]:
        # One browse holds every message it has seen; a selected one is
        # published and then acked. A concurrent replay cannot see a record
        # this one holds; the rest go back to the queue when the browse ends.
        done: list[str] = []

        def replay(record: DeadLetter) -> bool:
            if (limit is not None and len(done) >= limit) or not select(record):
                return False
            publish(record)
            done.append(record.id)
            return True

        try:
            for _ in self._browse(on_record=replay):
                if limit is not None and len(done) >= limit:
                    break
        finally:
            self._announce_replayed(done)
        return done
