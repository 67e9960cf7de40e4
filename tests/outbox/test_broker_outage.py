"""The outbox against a real broker that goes away: nothing is lost, nothing is sent twice.

The broker is a private redis-server (never the shared one; the
``private_redis`` fixture of ``tests/conftest.py``), stopped and started
again; a real Celery worker handles what the relay published.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from eventbus import Envelope, EventBus
from eventbus.outbox import Outbox, RelayResult
from tests.brokers import PrivateRedis
from tests.outbox.conftest import rows
from tests.outbox.events import EVENTS, OrderPlaced, placed
from tests.support import assert_stays, make_app, running_worker, unique, wait_for

EVENTS_COMMITTED = 12

pytestmark = pytest.mark.redis


def test_with_the_broker_stopped_commits_succeed_and_every_row_is_published_once_later(
    outbox: Outbox, private_redis: PrivateRedis
) -> None:
    # Given a bus on the private broker, with one handler that counts deliveries
    queue = unique("outbox.outage")
    app = make_app(private_redis.url, eventbus_redis_url=private_redis.url)
    bus = EventBus(app, default_queue=queue, event_registry=EVENTS)
    handled: Counter[str] = Counter()
    lock = threading.Lock()

    @bus.subscribe(OrderPlaced, name=f"{queue}.record", max_retries=0)
    def record(envelope: Envelope[Any]) -> None:
        with lock:
            handled[str(envelope.event_id)] += 1

    # And a connection in the app's producer pool, open when the broker goes away
    with app.producer_pool.acquire(block=True) as producer:
        producer.connection.ensure_connection(max_retries=1)

    # When the broker is stopped
    private_redis.stop()
    # Then the application's commits still succeed: their rows are pending
    ids: list[str] = []
    for i in range(EVENTS_COMMITTED):
        with outbox.engine.begin() as conn:
            [envelope] = outbox.add(placed(f"o{i}"), connection=conn)
        ids.append(str(envelope.event_id))
    assert outbox.status().pending == EVENTS_COMMITTED

    # When the relay runs while the broker is down
    result = outbox.relay(bus)
    # Then nothing is published: the first row counts a failed attempt, all stay pending
    assert (result.published, result.failed, result.pending_left) == (0, 0, EVENTS_COMMITTED)
    assert result.error is not None and "PublishError" in result.error
    written = rows(outbox)
    assert [r["attempts"] for r in written] == [1] + [0] * (EVENTS_COMMITTED - 1)
    assert "could not publish" in written[0]["last_error"]
    assert all(r["published_at"] is None and r["failed_at"] is None for r in written)

    # When the broker is back and the relay runs again
    private_redis.start()
    assert outbox.relay(bus) == RelayResult(published=EVENTS_COMMITTED, failed=0, pending_left=0)
    assert outbox.relay(bus) == RelayResult(published=0, failed=0, pending_left=0)

    # Then a worker handles every event exactly once
    try:
        with running_worker(app, [queue], pool="solo", concurrency=1):
            wait_for(
                lambda: len(handled) == EVENTS_COMMITTED,
                message=lambda: f"{len(handled)}/{EVENTS_COMMITTED} events handled",
            )
            assert_stays(
                lambda: sum(handled.values()) == EVENTS_COMMITTED,
                duration=0.5,
                message=lambda: f"a duplicate delivery: {handled}",
            )
    finally:
        app.close()
    assert handled == dict.fromkeys(ids, 1)
