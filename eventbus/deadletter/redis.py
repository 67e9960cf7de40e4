"""Dead letters on Redis: kombu keeps the queue as a list, which we read with LRANGE.

kombu's Redis transport LPUSHes each message (a JSON wrapper whose ``body`` is
base64) and consumers BRPOP from the other end, so the oldest record is at
index -1. Browsing reads pages from that end; removal is ``LREM`` of the exact
stored element, which is atomic: two concurrent removals cannot both succeed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection, Iterator
from typing import Any

from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.store import BrokerDeadLetterStore, decode_record

__all__ = ["RedisDeadLetterStore"]

PAGE_SIZE = 500  #: list elements read per LRANGE round trip


class RedisDeadLetterStore(BrokerDeadLetterStore):
    """Browse and edit the dead-letter list in place."""

    def _raw_elements(self) -> Iterator[bytes]:
        with self.app.connection_for_write() as conn:
            client = conn.default_channel.client
            length = client.llen(self.queue_name)
            # Walk from the oldest end; a page is read newest-to-oldest, so reverse it.
            end = -1
            while -end <= length:
                start = max(end - PAGE_SIZE + 1, -length)
                page = client.lrange(self.queue_name, start, end)
                if not page:
                    return
                yield from reversed(page)
                end = start - 1

    def __iter__(self) -> Iterator[DeadLetter]:
        for raw in self._raw_elements():
            yield decode_record(_message_body(raw))

    def remove(self, record_ids: Collection[str]) -> int:
        wanted = set(record_ids)
        found: list[bytes] = []
        for raw in self._raw_elements():
            record = decode_record(_message_body(raw))
            if record.id in wanted:
                found.append(raw)
                wanted.discard(record.id)
                if not wanted:
                    break
        if not found:
            return 0
        with self.app.connection_for_write() as conn:
            client = conn.default_channel.client
            with client.pipeline(transaction=False) as pipe:
                for raw in found:
                    pipe.lrem(self.queue_name, 1, raw)
                return sum(int(n) for n in pipe.execute())

    def count(self) -> int:
        with self.app.connection_for_write() as conn:
            return int(conn.default_channel.client.llen(self.queue_name))

    def purge(self) -> int:
        with self.app.connection_for_write() as conn:
            client = conn.default_channel.client
            with client.pipeline() as pipe:  # MULTI: count and delete as one step
                pipe.llen(self.queue_name)
                pipe.delete(self.queue_name)
                count, _ = pipe.execute()
            return int(count)


def _message_body(raw: bytes) -> bytes | str | Any:
    """Unwrap kombu's Redis message envelope; anything else is returned as is."""
    try:
        message = json.loads(raw)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            return base64.b64decode(body)
        return body
    except (ValueError, KeyError, TypeError):
        return raw
