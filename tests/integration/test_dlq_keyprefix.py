"""The Redis DLQ under kombu's ``global_keyprefix``: every operation sees the same records.

kombu prefixes the keys of the commands its own client sends (``LPUSH`` of a
record, ``LLEN``, ``DEL``) but not those it never sends (``LRANGE``, ``LREM``,
``LPOS``): a store that went through that client counted and purged the
prefixed list while it listed the bare one. Runs on eventbus's Redis
transport, and on kombu's with ``EVENTBUS_TEST_REDIS_TRANSPORT=kombu``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis
from click.testing import CliRunner

from eventbus import DeadLetter, EventBus
from eventbus.cli.main import main
from tests.support import delete_queues, delete_state, make_app, require_broker, running_worker

from .helpers import OrderPlaced, wait_for

pytestmark = pytest.mark.redis


class Prefixed:
    """A bus whose broker connection has a ``global_keyprefix`` of its own."""

    def __init__(self, url: str) -> None:
        self.uid = uid = uuid.uuid4().hex[:10]
        self.prefix = f"it-prefix-{uid}:"
        self.queue = f"it.prefix.{uid}"
        self.dead_letter_queue = f"it.prefix.{uid}.dlq"
        self.app = make_app(url)
        self.app.conf.broker_transport_options = {
            **self.app.conf.broker_transport_options,
            "global_keyprefix": self.prefix,
        }
        self.bus = EventBus(
            self.app, default_queue=self.queue, dead_letter_queue=self.dead_letter_queue
        )
        self.client = redis.Redis.from_url(url)

    def dlq_key_lengths(self) -> tuple[int, int]:
        """Elements of the prefixed DLQ list, and of the bare one."""
        return (
            int(self.client.llen(self.prefix + self.dead_letter_queue)),
            int(self.client.llen(self.dead_letter_queue)),
        )

    def close(self) -> None:
        self.app.close()
        delete_queues(self.app, self.queue, self.dead_letter_queue)
        delete_state(self.app)
        self.client.close()


@pytest.fixture
def prefixed() -> Iterator[Prefixed]:
    env = Prefixed(require_broker("redis"))
    try:
        yield env
    finally:
        env.close()


def record(n: int, handler: str) -> DeadLetter:
    event_id = str(uuid.uuid4())
    return DeadLetter(
        handler=handler,
        reason="retries_exhausted",
        attempts=3,
        exception_type="ValueError",
        exception_message=f"boom {n}",
        event_id=event_id,
        event_type=OrderPlaced.event_type,
        envelope={
            "event_id": event_id,
            "event_type": OrderPlaced.event_type,
            "version": 1,
            "occurred_at": "2026-11-26T12:00:00Z",
            "metadata": {},
            "data": {"order_id": f"o-{n}", "quantity": 1},
        },
    )


def test_every_dlq_operation_honors_the_key_prefix(prefixed: Prefixed) -> None:
    # Given a record a real worker dead-lettered, and three written by the store,
    # all under the prefix (and a stranger's element in the bare list of that name)
    handler = f"it.prefix.{uuid.uuid4().hex[:6]}.reject"

    def reject(envelope: object) -> None:
        raise ValueError("rejected")

    prefixed.bus.subscribe(OrderPlaced, handler=reject, name=handler, max_retries=0)
    with running_worker(prefixed.app, prefixed.bus.queues, pool="solo", concurrency=1):
        prefixed.bus.publish(OrderPlaced(order_id="w-1", quantity=1))
        wait_for(lambda: prefixed.dlq_key_lengths()[0] == 1, message="the worker's dead letter")
    written = [record(n, handler) for n in range(3)]
    for item in written:
        prefixed.bus.dead_letter_store.append(item)
    prefixed.client.lpush(prefixed.dead_letter_queue, b"not ours: no prefix")
    dlq = prefixed.bus.dead_letters

    # Then count, list, get, groups and the CLI all see the same four records
    listed = dlq.list()
    assert len(dlq) == len(listed) == 4
    assert [r.id for r in listed[1:]] == [r.id for r in written]
    assert dlq.get(written[1].id[:8]).id == written[1].id
    assert dlq.groups() == {(handler, "ValueError"): 4}

    # When one is replayed and one deleted
    assert dlq.replay(written[0].id).event_id == uuid.UUID(written[0].event_id)
    assert dlq.delete([written[1].id]) == 1
    # Then exactly those left, and the replayed message waits on the prefixed handler queue
    assert [r.id for r in dlq.list()] == [listed[0].id, written[2].id]
    assert int(prefixed.client.llen(prefixed.prefix + prefixed.queue)) == 1
    claims = f"*eventbus.dlq-claim:{prefixed.dead_letter_queue}:*"
    assert not list(prefixed.client.scan_iter(match=claims))  # released, wherever they were

    # When the rest is purged, Then purge removed exactly what list showed
    assert dlq.purge() == 2
    assert prefixed.dlq_key_lengths() == (0, 1)  # the stranger's element is untouched
    assert len(dlq) == 0 and dlq.list() == []


def test_the_cli_lists_counts_and_purges_what_is_under_the_prefix(
    prefixed: Prefixed, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(2):
        prefixed.bus.dead_letter_store.append(record(n, "it.prefix.h"))
    monkeypatch.setattr("tests.integration.test_dlq_keyprefix.cli_bus", prefixed.bus, raising=False)

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(
            main, ["-A", "tests.integration.test_dlq_keyprefix:cli_bus", *args]
        )
        return result.exit_code, result.output

    code, out = run("dlq", "list", "--json")
    assert code == 0 and len(out.splitlines()) == 2
    code, out = run("dlq", "stats", "--json")
    assert code == 0 and json.loads(out)["total"] == 2
    code, out = run("dlq", "purge", "--yes")
    assert (code, out) == (0, "purged 2 dead letter(s)\n")
    assert prefixed.dlq_key_lengths() == (0, 0)
