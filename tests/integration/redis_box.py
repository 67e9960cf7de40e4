"""A test's own queue on eventbus's Redis transport, and what the transport tests share.

``make_box`` is a fixture (``tests/integration/conftest.py`` exposes it).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kombu.transport.redis as kombu_redis
import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.message import Message

from eventbus.celery.internals.redis_transport import TAKE_SCRIPT
from eventbus.celery.refused import KEPT_BYTES
from tests.support import require_broker

TRANSPORT = "eventbus.celery.internals.redis_transport:Transport"


class Box:
    """One test's queue, and the transport options that keep its Redis keys its own.

    With a ``global_keyprefix`` every key kombu writes starts with it; without
    one, the unacked hash, index and mutex get names of the test's own.
    """

    def __init__(self, url: str, *, prefixed: bool, **options: Any) -> None:
        uid = uuid.uuid4().hex[:10]
        self.url = url
        self.name = f"it.transport.{uid}"
        self.prefix = f"it-transport-{uid}:" if prefixed else ""
        self.options: dict[str, Any] = dict(options)
        if prefixed:
            self.options["global_keyprefix"] = self.prefix
        else:
            self.options.update(
                unacked_key=f"{self.name}.unacked",
                unacked_index_key=f"{self.name}.unacked_index",
                unacked_mutex_key=f"{self.name}.unacked_mutex",
            )
        self.queue = Queue(
            self.name,
            Exchange(self.name, type="direct"),
            routing_key=self.name,
            max_priority=9,
        )
        self.client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)

    def connection(self, transport: str | None = TRANSPORT, **options: Any) -> Connection:
        return Connection(
            self.url,
            transport=transport,
            transport_options={**self.options, **options},
            connect_timeout=3,
        )

    def key(self, name: str) -> str:
        return self.prefix + name

    @property
    def unacked_key(self) -> str:
        return self.key(self.options.get("unacked_key", "unacked"))

    @property
    def unacked_index_key(self) -> str:
        return self.key(self.options.get("unacked_index_key", "unacked_index"))

    def unacked(self) -> dict[str, Any]:
        """The unacked hash: delivery tag -> [message, exchange, routing_key]."""
        raw = self.client.hgetall(self.unacked_key)
        # (as kombu reads it: a byte that is not UTF-8 reads as U+FFFD)
        return {k.decode(): json.loads(v.decode("utf-8", "replace")) for k, v in raw.items()}

    def unacked_index(self) -> dict[str, float]:
        return {
            k.decode(): s
            for k, s in self.client.zrange(self.unacked_index_key, 0, -1, withscores=True)
        }

    def take(self, *, limit: int = 0, tag: str = "fresh-tag") -> Any:
        """Run the take script on the box's queue alone, as a consumer (then killed) would."""
        return self.client.eval(
            TAKE_SCRIPT,
            3,
            self.unacked_index_key,
            self.unacked_key,
            self.key(self.name),
            repr(time.time()),
            tag,
            KEPT_BYTES,
            "1",
            self.name,
            limit,
        )

    def waiting(self) -> int:
        """Messages on the queue, every priority step."""
        steps = kombu_redis.PRIORITY_STEPS
        keys = {self.key(self.name if not p else f"{self.name}\x06\x16{p}") for p in steps}
        return sum(int(self.client.llen(key)) for key in keys)

    def publish(self, body: Any, *, priority: int = 0) -> None:
        with self.connection() as conn:
            conn.Producer().publish(
                body,
                exchange=self.queue.exchange,
                routing_key=self.name,
                declare=[self.queue],
                priority=priority,
                retry=True,
            )

    def close(self) -> None:
        try:
            if self.prefix:
                keys = list(self.client.scan_iter(match=f"{self.prefix}*", count=1000))
                if keys:
                    self.client.delete(*keys)
            else:
                keys = list(self.client.scan_iter(match=f"*{self.name}*", count=1000))
                if keys:
                    self.client.delete(*keys)
        finally:
            self.client.close()


def counting(monkeypatch: pytest.MonkeyPatch, cls: type, name: str) -> list[float]:
    """Patch ``cls.name`` to note the time of each call; return the list of times."""
    calls: list[float] = []
    original = getattr(cls, name)

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(time.monotonic())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


@pytest.fixture
def make_box() -> Iterator[Callable[..., Box]]:
    url = require_broker("redis")
    boxes: list[Box] = []

    def make(*, prefixed: bool = False, **options: Any) -> Box:
        box = Box(url, prefixed=prefixed, **options)
        boxes.append(box)
        return box

    try:
        yield make
    finally:
        for box in boxes:
            box.close()


def drain_one(conn: Connection, box: Box, *, no_ack: bool = False, timeout: float = 10) -> Message:
    """Consume the next message of the box's queue; return it, not acked."""
    got: list[Message] = []
    with conn.Consumer([box.queue], callbacks=[lambda _body, m: got.append(m)], no_ack=no_ack):
        deadline = time.monotonic() + timeout
        while not got:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no message on {box.name} within {timeout}s"
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=remaining)
    return got[0]
