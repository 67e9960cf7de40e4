"""Dead letters on RabbitMQ: browse with ``basic_get`` and give everything back.

AMQP 0-9-1 has no "peek". Browsing fetches every message unacknowledged on a
private channel and then closes it, which makes the broker requeue them all in
their original order. Removal acks the chosen ones before the close. A record
is never acked before its replacement (a replay) was published.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator

from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.store import BrokerDeadLetterStore, decode_record

__all__ = ["AmqpDeadLetterStore"]


class AmqpDeadLetterStore(BrokerDeadLetterStore):
    """Browse the queue on a throwaway channel; close it to requeue."""

    def _browse(self, remove: Collection[str] = ()) -> Iterator[DeadLetter]:
        wanted = set(remove)
        with self.app.connection_for_write() as conn:
            channel = conn.channel()
            try:
                bound = self.queue.bind(channel)
                bound.declare()
                # Bound the walk by the depth seen at the start, so records
                # appended meanwhile (or requeued by another browser) do not
                # make it endless.
                _, depth, _ = bound.queue_declare(passive=True)
                for _ in range(depth):
                    message = bound.get(no_ack=False, accept=["json"])
                    if message is None:
                        break
                    record = decode_record(message.body)
                    if record.id in wanted:
                        message.ack()
                        wanted.discard(record.id)
                    yield record
            finally:
                channel.close()  # unacked messages go back to the queue

    def __iter__(self) -> Iterator[DeadLetter]:
        return self._browse()

    def remove(self, record_ids: Collection[str]) -> int:
        wanted = set(record_ids)
        return sum(1 for record in self._browse(remove=wanted) if record.id in wanted)
