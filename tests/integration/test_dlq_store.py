"""The dead-letter store on real brokers: big queues, interleaved selections, concurrent replays."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

from eventbus import DeadLetter
from tests.support import run_concurrently

from .conftest import Env
from .helpers import OrderPlaced, wait_for


def record_for(env: Env, handler: str, n: int) -> DeadLetter:
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


def listed_eventually(env: Env, ids: list[str]) -> None:
    """Wait until the DLQ lists exactly these records, in this order.

    On RabbitMQ the messages a browse held go back to the queue after its
    channel closed, and the broker may answer a listing started at once
    before it put them back (a listing holds them too, and puts them back
    the same way): the listing catches up within moments.
    """
    listed: list[str] = []

    def check() -> bool:
        listed[:] = [r.id for r in env.bus.dead_letters]
        return listed == ids

    wait_for(check, timeout=10, message=lambda: f"{len(listed)} listed, expected {len(ids)}")


def test_replaying_a_selection_across_pages_replays_exactly_it(env: Env) -> None:
    # Given 1,200 dead letters (more than one page of the store), two handlers interleaved
    a, b = env.name("a"), env.name("b")
    env.bus.subscribe(OrderPlaced, name=a, handler=lambda e: None)
    env.bus.subscribe(OrderPlaced, name=b, handler=lambda e: None)
    store = env.bus.dead_letter_store
    records = [record_for(env, a if n % 3 else b, n) for n in range(1200)]
    for record in records:
        store.append(record)
    # When every record of handler b is replayed (no worker: the messages just queue up)
    replayed = env.bus.dead_letters.replay_all(handler=b)
    # Then exactly b's 400 records left the DLQ, and a's 800 are all still there, in order
    assert replayed == 400
    listed_eventually(env, [r.id for r in records if r.handler == a])
    assert env.queue_length() == 400  # one handler message per replayed record


def test_concurrent_replays_publish_each_record_once(env: Env) -> None:
    # Given 300 dead letters
    name = env.name("h")
    env.bus.subscribe(OrderPlaced, name=name, handler=lambda e: None)
    for n in range(300):
        env.bus.dead_letter_store.append(record_for(env, name, n))
    counts: Counter[str] = Counter()

    def replay() -> None:
        counts[threading.current_thread().name] += env.bus.dead_letters.replay_all()

    # When three operators replay all of them at the same time
    run_concurrently(replay, 3, timeout=60)
    # Then together they replayed each record once: 300 messages, an empty DLQ
    assert sum(counts.values()) == 300
    assert env.queue_length() == 300
    assert len(env.bus.dead_letters) == 0


def test_a_purge_names_each_record_once_a_batch_at_a_time(env: Env) -> None:
    # Given more dead letters than one batch (REPLAY_CHUNK, 500)
    name = env.name("h")
    records = [record_for(env, name, n) for n in range(1100)]
    store = env.bus.dead_letter_store
    for record in records:
        store.append(record)
    wait_for(lambda: store.count() == 1100, message=lambda: f"{store.count()}/1100 messages")
    # When everything is purged, hearing the ids as they go
    batches: list[list[str]] = []
    purged = env.bus.dead_letters.purge(removed=batches.append)
    # Then each record was named once, in batches (a progress bar moves), and counted
    heard = [record_id for batch in batches for record_id in batch]
    assert sorted(heard) == sorted(r.id for r in records)
    assert purged == len(heard) == 1100
    assert len(batches) >= 3 and max(map(len, batches)) <= 500
    assert store.count() == 0
