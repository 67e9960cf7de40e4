"""The rules of the idempotency store and the resequencer, in memory and on Redis (Lua).

Both implementations answer the same questions the same way; the Redis one
is what workers share.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from eventbus import create_event
from eventbus.guarantees.idempotency import (
    Claim,
    ClaimLost,
    Delivery,
    IdempotencyStore,
    InMemoryIdempotencyStore,
    RedisIdempotencyStore,
)
from eventbus.guarantees.ordering import (
    InMemoryResequencer,
    InMemorySequencer,
    RedisResequencer,
    RedisSequencer,
    Resequencer,
    Sequencer,
    TurnKind,
    aggregate_key,
)
from tests.contract.events import ItemAdded
from tests.support import STATE_REDIS_URL, require_broker, wait_for

LONG = 60.0  #: a gap or lease that never passes during a test


@pytest.fixture
def redis_client() -> Iterator[Any]:
    import redis

    require_broker("redis")
    client = redis.Redis.from_url(STATE_REDIS_URL)
    prefix = f"test-state-{uuid.uuid4().hex[:8]}:"
    client.prefix = prefix  # type: ignore[attr-defined]
    yield client
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["memory", "redis"])
def reseq(request: pytest.FixtureRequest) -> Resequencer:
    if request.param == "memory":
        return InMemoryResequencer()
    client = request.getfixturevalue("redis_client")
    return RedisResequencer(client, prefix=client.prefix, ttl=600)


@pytest.fixture(params=["memory", "redis"])
def idem(request: pytest.FixtureRequest) -> IdempotencyStore:
    if request.param == "memory":
        return InMemoryIdempotencyStore(ttl=600)
    client = request.getfixturevalue("redis_client")
    return RedisIdempotencyStore(client, prefix=client.prefix, ttl=600)


@pytest.fixture(params=["memory", "redis"])
def sequencer(request: pytest.FixtureRequest) -> Sequencer:
    if request.param == "memory":
        return InMemorySequencer()
    client = request.getfixturevalue("redis_client")
    return RedisSequencer(client, prefix=client.prefix)


def kind(reseq: Resequencer, seq: int, owner: str = "a", gap: float = LONG) -> TurnKind:
    return reseq.acquire("h", "Cart:1", seq, owner, gap=gap, lease=LONG).kind


# -- sequences ---------------------------------------------------------------------


def test_each_aggregate_counts_its_own_sequence(sequencer: Sequencer) -> None:
    assert [sequencer.next_sequence("Cart", "1") for _ in range(3)] == [1, 2, 3]
    assert sequencer.next_sequence("Cart", "2") == 1
    assert sequencer.next_sequence("Order", "1") == 1


def test_aggregates_whose_type_and_id_share_a_colon_count_apart(sequencer: Sequencer) -> None:
    # Given two aggregates that read the same when type and id are joined with ':'
    # When each publishes events
    # Then each has a sequence of its own
    assert sequencer.next_sequence("Order:eu", "7") == 1
    assert sequencer.next_sequence("Order", "eu:7") == 1
    assert sequencer.next_sequence("Order:eu", "7") == 2
    assert sequencer.next_sequence("Order", "eu:7") == 2


def test_a_counter_written_before_the_key_encoding_changed_goes_on(redis_client: Any) -> None:
    # Given a counter an earlier release wrote for ("Order", "eu:7"): "<prefix>seq:Order:eu:7"
    # (the key of every aggregate whose type has no ':' is what it always was)
    prefix = redis_client.prefix
    redis_client.set(f"{prefix}seq:Order:eu:7", 41)
    redis_client.set(f"{prefix}seq::7", 9)  # no aggregate type
    sequencer = RedisSequencer(redis_client, prefix=prefix)
    # When the aggregate publishes again, Then its numbers go on
    assert sequencer.next_sequence("Order", "eu:7") == 42
    assert sequencer.next_sequence(None, "7") == 10
    # And the aggregate whose type holds the ':' starts a counter of its own
    assert sequencer.next_sequence("Order:eu", "7") == 1


# -- the resequencer ---------------------------------------------------------------


def test_events_run_one_at_a_time_in_sequence(reseq: Resequencer) -> None:
    assert kind(reseq, 1) is TurnKind.RUN
    assert kind(reseq, 2, owner="b") is TurnKind.WAIT  # 1 has not completed
    reseq.complete("h", "Cart:1", 1)
    assert kind(reseq, 2, owner="b") is TurnKind.RUN


def test_an_early_event_waits_for_the_first(reseq: Resequencer) -> None:
    assert kind(reseq, 2, owner="b") is TurnKind.WAIT
    assert kind(reseq, 1) is TurnKind.RUN
    reseq.complete("h", "Cart:1", 1)
    assert kind(reseq, 2, owner="b") is TurnKind.RUN


def test_a_handled_sequence_is_a_duplicate(reseq: Resequencer) -> None:
    kind(reseq, 1)
    reseq.complete("h", "Cart:1", 1)
    assert kind(reseq, 1, owner="z") is TurnKind.DONE


def test_another_delivery_waits_while_one_holds_the_turn_but_a_redelivery_takes_it(
    reseq: Resequencer,
) -> None:
    assert kind(reseq, 1, owner="a") is TurnKind.RUN
    assert kind(reseq, 1, owner="b") is TurnKind.WAIT
    # the same task id again: its worker died, the broker redelivered it
    assert kind(reseq, 1, owner="a") is TurnKind.RUN


def test_no_progress_for_the_gap_timeout_is_a_gap(reseq: Resequencer) -> None:
    kind(reseq, 1)
    reseq.fail("h", "Cart:1", 1, "a", will_retry=False)  # dead-lettered
    wait_for(lambda: kind(reseq, 2, owner="b", gap=0.2) is TurnKind.GAP, timeout=5, message="gap")


def test_each_waiting_event_gets_a_whole_gap_window(reseq: Resequencer) -> None:
    # 1 was dead-lettered; 2 waited in vain and was dead-lettered as a gap
    kind(reseq, 1)
    reseq.fail("h", "Cart:1", 1, "a", will_retry=False)
    wait_for(lambda: kind(reseq, 2, owner="b", gap=0.2) is TurnKind.GAP, timeout=5, message="gap")
    # When the operator replays both and 2 comes first, 2 waits again for 1
    assert kind(reseq, 2, owner="b2", gap=0.2) is TurnKind.WAIT
    assert kind(reseq, 1, owner="a2") is TurnKind.RUN
    reseq.complete("h", "Cart:1", 1)
    assert kind(reseq, 2, owner="b2") is TurnKind.RUN


def test_a_pending_retry_is_never_a_gap(reseq: Resequencer) -> None:
    kind(reseq, 1)
    reseq.fail("h", "Cart:1", 1, "a", will_retry=True)
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # poll: the gap (0.05 s) passes many times over
        assert kind(reseq, 2, owner="b", gap=0.05) is TurnKind.WAIT
        time.sleep(0.02)  # poll
    assert kind(reseq, 1, owner="a") is TurnKind.RUN  # the retry


def test_an_aggregate_seen_first_mid_stream_starts_at_its_lowest_waiting_event(
    reseq: Resequencer,
) -> None:
    # A handler subscribed after the aggregate had events: 7 and 5 arrive, 1-4 never will
    assert kind(reseq, 7, owner="g", gap=0.2) is TurnKind.WAIT
    assert kind(reseq, 5, owner="e", gap=0.2) is TurnKind.WAIT
    wait_for(lambda: kind(reseq, 5, owner="e", gap=0.2) is TurnKind.RUN, timeout=5, message="5")
    assert kind(reseq, 7, owner="g", gap=LONG) is TurnKind.WAIT  # 6 comes first
    reseq.complete("h", "Cart:1", 5)
    assert kind(reseq, 6, owner="f") is TurnKind.RUN
    # and an event below where it started is late, not a duplicate
    assert kind(reseq, 3, owner="c") is TurnKind.LATE


def test_reset_forgets_the_position(reseq: Resequencer) -> None:
    kind(reseq, 1)
    reseq.complete("h", "Cart:1", 1)
    reseq.reset("h", "Cart:1")
    assert kind(reseq, 1, owner="again") is TurnKind.RUN


def test_aggregates_whose_type_and_id_share_a_colon_keep_positions_apart(
    reseq: Resequencer,
) -> None:
    # Given ("Order:eu", "7") handled its sequence 1
    first, second = aggregate_key("Order:eu", "7"), aggregate_key("Order", "eu:7")
    assert reseq.acquire("h", first, 1, "a", gap=LONG, lease=LONG).kind is TurnKind.RUN
    reseq.complete("h", first, 1)
    # When ("Order", "eu:7") brings its own sequence 1, Then it runs (not a duplicate)
    assert reseq.acquire("h", second, 1, "b", gap=LONG, lease=LONG).kind is TurnKind.RUN
    # And the first one's next event waits for nobody
    assert reseq.acquire("h", first, 2, "c", gap=LONG, lease=LONG).kind is TurnKind.RUN


def test_positions_are_per_handler(reseq: Resequencer) -> None:
    assert kind(reseq, 1) is TurnKind.RUN
    assert reseq.acquire("other", "Cart:1", 1, "x", gap=LONG, lease=LONG).kind is TurnKind.RUN


# -- idempotency -------------------------------------------------------------------


def test_a_claim_is_exclusive_until_done(idem: IdempotencyStore) -> None:
    assert idem.claim("h", "e1", "task-a", LONG) is Claim.RUN
    assert idem.claim("h", "e1", "task-b", LONG) is Claim.BUSY
    assert idem.claim("h", "e1", "task-a", LONG) is Claim.RUN  # redelivery of a's message
    idem.complete("h", "e1")
    assert idem.claim("h", "e1", "task-b", LONG) is Claim.DONE
    assert idem.is_done("h", "e1")
    assert idem.claim("other-handler", "e1", "task-c", LONG) is Claim.RUN


def test_only_the_owner_releases_a_claim(idem: IdempotencyStore) -> None:
    idem.claim("h", "e2", "task-a", LONG)
    idem.release("h", "e2", "task-b")
    assert idem.claim("h", "e2", "task-b", LONG) is Claim.BUSY
    idem.release("h", "e2", "task-a")
    assert idem.claim("h", "e2", "task-b", LONG) is Claim.RUN


def test_a_dead_holders_claim_expires_after_its_lease(idem: IdempotencyStore) -> None:
    idem.claim("h", "e3", "task-a", 0.1)
    wait_for(lambda: idem.claim("h", "e3", "task-b", LONG) is Claim.RUN, timeout=5, message="lease")


def test_atomic_commits_the_writes_with_the_done_mark(redis_client: Any) -> None:
    store = RedisIdempotencyStore(redis_client, prefix=redis_client.prefix, ttl=600)
    envelope = create_event(ItemAdded, {"sku": "A", "quantity": 1}, aggregate_id="1")
    delivery = Delivery("h", envelope, "task-a", 1, store)
    counter = f"{redis_client.prefix}points"
    assert store.claim("h", str(envelope.event_id), "task-a", LONG) is Claim.RUN
    with store.atomic(delivery) as tx:
        tx.incr(counter)
    assert int(redis_client.get(counter)) == 1
    assert store.is_done("h", str(envelope.event_id))
    # A delivery that does not hold the claim writes nothing
    other = Delivery("h", envelope, "task-b", 1, store)
    with pytest.raises(ClaimLost), store.atomic(other) as tx:
        tx.incr(counter)
    assert int(redis_client.get(counter)) == 1


def test_a_done_mark_costs_no_round_trip_of_its_own(redis_client: Any) -> None:
    # Given a Redis idempotency store and a second one (another worker's connections)
    store = RedisIdempotencyStore(redis_client, prefix=redis_client.prefix, ttl=600)
    other = RedisIdempotencyStore(redis_client, prefix=redis_client.prefix, ttl=600)
    assert store.claim("h", "e1", "task-a", LONG) is Claim.RUN

    # When the handler completes: the mark is sent, its answer not waited for
    store.complete("h", "e1")
    assert store._local.unread == 1

    # Then another worker never runs the event again: busy until the mark lands, then done
    assert other.claim("h", "e1", "task-b", LONG) in (Claim.BUSY, Claim.DONE)
    wait_for(lambda: other.claim("h", "e1", "task-b", LONG) is Claim.DONE, message="mark")
    # And the next claim on the first store reads the mark's answer with its own
    assert store.claim("h", "e2", "task-a", LONG) is Claim.RUN
    assert store._local.unread == 0
    assert store.is_done("h", "e1")


def test_a_forked_child_uses_connections_of_its_own(redis_client: Any) -> None:
    import multiprocessing

    # Given a store whose thread already holds a connection with an unread mark
    store = RedisIdempotencyStore(redis_client, prefix=redis_client.prefix, ttl=600)
    assert store.claim("h", "parent-1", "task-p", LONG) is Claim.RUN
    store.complete("h", "parent-1")

    # When a forked child (a prefork pool process) claims and completes events
    def child() -> None:
        for n in range(20):
            assert store.claim("h", f"child-{n}", "task-c", LONG) is Claim.RUN
            store.complete("h", f"child-{n}")
        store.flush()

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(30)

    # Then the child did its work, and the parent's connection still answers it in order
    assert process.exitcode == 0
    assert store.claim("h", "parent-2", "task-p", LONG) is Claim.RUN
    assert all(store.is_done("h", f"child-{n}") for n in range(20))
    assert store.is_done("h", "parent-1")
