"""Dead letters on kombu's ``memory://`` transport (the embedded demo broker).

That transport keeps each queue as a ``queue.Queue`` shared by the process;
browsing copies its deque under the queue's own lock.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from queue import Queue as ThreadQueue
from typing import Any

from kombu.transport.memory import Channel as MemoryChannel

from eventbus.celery.deadletter.base import BrokerDeadLetterStore, decode_record, unwrap
from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.store import Removed

__all__ = ["KombuMemoryDeadLetterStore"]


class KombuMemoryDeadLetterStore(BrokerDeadLetterStore):
    def _queue(self) -> ThreadQueue[Any] | None:
        return MemoryChannel.queues.get(self.queue_name)

    def _snapshot(self) -> list[Any]:
        queue = self._queue()
        if queue is None:
            return []
        with queue.mutex:
            return list(queue.queue)

    def __iter__(self) -> Iterator[DeadLetter]:
        for message in self._snapshot():
            yield decode_record(*unwrap(message))

    def remove(self, record_ids: Collection[str]) -> int:
        queue = self._queue()
        if queue is None:
            return 0
        wanted = set(record_ids)
        found: set[str] = set()
        with queue.mutex:
            for message in list(queue.queue):
                record_id = decode_record(*unwrap(message)).id
                if record_id in wanted:  # every copy of it
                    queue.queue.remove(message)
                    found.add(record_id)
        return len(found)

    def count(self) -> int:
        queue = self._queue()
        return 0 if queue is None else queue.qsize()

    def purge(self, *, removed: Removed | None = None) -> int:
        queue = self._queue()
        if queue is None:
            return 0
        with queue.mutex:
            messages = list(queue.queue)
            queue.queue.clear()
        ids = list(dict.fromkeys(decode_record(*unwrap(message)).id for message in messages))
        if removed is not None and ids:
            removed(ids)
        return len(ids)
