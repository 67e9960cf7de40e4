"""The relay on a real broker: a batch of rows goes out in one ``bus.batch()``.

Per broker (Redis, RabbitMQ) and outbox database (SQLite, PostgreSQL when it
answers), a real Celery worker handles what the relay published: malformed
rows are set aside without spoiling their batch, the good rows are handled
once. On a private redis-server stopped in the middle of a batch, no row of
it is marked published, and after the restart each is published and handled
once.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery import Celery

from eventbus import Envelope, EventBus
from eventbus.outbox import Outbox, OutboxRelay, RelayResult
from tests.outbox.conftest import rows
from tests.outbox.events import EVENTS, OrderPlaced
from tests.outbox.private_redis import PrivateRedis
from tests.outbox.test_outbox import add_committed, insert_raw
from tests.support import (
    assert_stays,
    delete_queues,
    make_app,
    require_broker,
    running_worker,
    unique,
    wait_for,
)


class Handled:
    """A bus with one handler that counts deliveries by event id; ``batches``: blocks opened."""

    def __init__(self, app: Celery, queue: str) -> None:
        self.app = app
        self.queue = queue
        self.bus = EventBus(
            app, default_queue=queue, dead_letter_queue=f"{queue}.dlq", event_registry=EVENTS
        )
        self.counts: Counter[str] = Counter()
        self.batches = 0
        self._lock = threading.Lock()
        self.bus.subscribe(OrderPlaced, handler=self.record, name=f"{queue}.record", max_retries=0)
        opened = self.bus.batch

        @contextmanager
        def counting_batch() -> Iterator[None]:
            self.batches += 1
            with opened():
                yield

        self.bus.batch = counting_batch  # type: ignore[method-assign]

    def record(self, envelope: Envelope[Any]) -> None:
        with self._lock:
            self.counts[str(envelope.event_id)] += 1

    def handle_all(self, ids: list[str]) -> None:
        """Run a worker until every event of ``ids`` was handled, and no more."""
        with running_worker(self.app, [self.queue], pool="solo", concurrency=1):
            wait_for(
                lambda: len(self.counts) == len(ids),
                message=lambda: f"{len(self.counts)}/{len(ids)} events handled",
            )
            assert_stays(
                lambda: sum(self.counts.values()) == len(ids),
                duration=0.5,
                message=lambda: f"a duplicate delivery: {self.counts}",
            )
        assert self.counts == dict.fromkeys(ids, 1)


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ],
)
def test_a_batch_mixing_malformed_and_good_rows_publishes_the_good_ones_once(
    kind: str, outbox: Outbox
) -> None:
    # Given a bus on the broker and good rows around malformed ones
    queue = unique("outbox.batch")
    world = Handled(make_app(require_broker(kind)), queue)
    good = add_committed(outbox, 3, "a")
    bad = [insert_raw(outbox, "{not json"), insert_raw(outbox, '{"event_type": "nope"}')]
    good += add_committed(outbox, 3, "b")
    try:
        # When the relay runs one batch
        relay = OutboxRelay(outbox, world.bus, batch_size=20)
        assert relay.relay_once() == RelayResult(published=6, failed=2, pending_left=0)
        # Then the good rows went out in one bus.batch(), the bad ones are failed
        assert world.batches == 1
        by_id = {r["id"]: r for r in rows(outbox)}
        assert all(by_id[i]["failed_at"] is not None for i in bad)
        assert sum(r["published_at"] is not None for r in by_id.values()) == 6
        # And a worker handles each good event once
        world.handle_all(good)
    finally:
        world.app.close()
        delete_queues(world.app, queue, f"{queue}.dlq")


@pytest.mark.redis
def test_a_redis_batch_cut_off_by_the_broker_leaves_all_its_rows_pending(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = PrivateRedis()
    server.start()
    try:
        app = make_app(server.url, eventbus_redis_url=server.url)
        world = Handled(app, unique("outbox.cutoff"))
        ids = add_committed(outbox, 8)
        # Given a broker that stops after the batch's third publish
        published = 0
        publish = world.bus.publish

        def publish_then_stop(envelope: Envelope[Any]) -> Envelope[Any]:
            nonlocal published
            sent = publish(envelope)
            published += 1
            if published == 3:
                server.stop()
            return sent

        monkeypatch.setattr(world.bus, "publish", publish_then_stop)
        # When the relay runs
        result = OutboxRelay(outbox, world.bus).relay_once()
        # Then no row of the batch is marked published; every row counts an attempt
        assert (result.published, result.failed, result.pending_left) == (0, 0, 8)
        assert result.error is not None and "PublishError" in result.error
        written = rows(outbox)
        assert all(r["published_at"] is None and r["failed_at"] is None for r in written)
        assert [r["attempts"] for r in written] == [1] * 8  # the flush failed: all tried
        assert all("was not sent" in r["last_error"] for r in written)
        monkeypatch.undo()

        # When the broker is back and the relay runs again
        server.start()
        relay = OutboxRelay(outbox, world.bus)
        assert relay.relay_once() == RelayResult(published=8, failed=0, pending_left=0)
        # Then a worker handles every event exactly once
        try:
            world.handle_all(ids)
        finally:
            app.close()
    finally:
        server.close()
