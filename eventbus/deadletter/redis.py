"""Dead letters on Redis: kombu keeps the queue as a list, which we read with LRANGE.

kombu's Redis transport LPUSHes each message (a JSON wrapper whose ``body`` is
base64) and consumers BRPOP from the other end, so the oldest record is at
index -1. Browsing reads pages from that end; removal is ``LREM`` of the exact
stored element. A replay first claims its record with ``SET NX`` (with a
TTL), so two operators replaying the same record publish it once.
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
CLAIM_TTL = 300  #: seconds a replay may hold a record before another may take it


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
            yield decode_record(*unwrap(raw))

    def _entries(self) -> Iterator[tuple[object, DeadLetter]]:
        for raw in self._raw_elements():
            yield raw, decode_record(*unwrap(raw))

    def _remove_entry(self, handle: object, record: DeadLetter) -> None:
        with self.app.connection_for_write() as conn:
            # Count -1 searches from the tail, the oldest end, where a replay
            # walking oldest-first finds its record at once.
            conn.default_channel.client.lrem(self.queue_name, -1, handle)

    def remove(self, record_ids: Collection[str]) -> int:
        wanted = set(record_ids)
        found: list[bytes] = []
        for raw in self._raw_elements():
            record = decode_record(*unwrap(raw))
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
                    pipe.lrem(self.queue_name, -1, raw)
                return sum(int(n) for n in pipe.execute())

    def count(self) -> int:
        with self.app.connection_for_write() as conn:
            return int(conn.default_channel.client.llen(self.queue_name))

    def purge(self) -> int:
        ids = [record.id for record in self]
        with self.app.connection_for_write() as conn:
            client = conn.default_channel.client
            with client.pipeline() as pipe:  # MULTI: count and delete as one step
                pipe.llen(self.queue_name)
                pipe.delete(self.queue_name)
                count, _ = pipe.execute()
        self._announce(ids, "task-revoked", terminated=False, expired=False, signum=None)
        return int(count)

    def _claim_key(self, record_id: str) -> str:
        return f"eventbus.dlq-claim:{self.queue_name}:{record_id}"

    def _claim(self, record_id: str) -> bool:
        with self.app.connection_for_write() as conn:
            client = conn.default_channel.client
            return bool(client.set(self._claim_key(record_id), "1", nx=True, ex=CLAIM_TTL))

    def _release(self, record_id: str) -> None:
        with self.app.connection_for_write() as conn:
            conn.default_channel.client.delete(self._claim_key(record_id))


def unwrap(raw: bytes | dict[str, Any]) -> tuple[bytes | str | Any, dict[str, Any] | None]:
    """Body and headers of one kombu virtual-transport message (Redis, memory)."""
    try:
        message = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        headers = message.get("headers")
        return body, headers if isinstance(headers, dict) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return raw, None
