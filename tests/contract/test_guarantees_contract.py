"""Idempotent and ordered handlers: the same outcome on every bus."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from eventbus import Envelope
from tests.contract.events import ItemAdded, ItemRemoved
from tests.contract.harness import Harness


def test_an_idempotent_handler_runs_once_per_event_however_often_it_arrives(
    harness: Harness,
) -> None:
    # Given the same handler body subscribed twice: idempotent and plain
    bus = harness.bus
    bus.subscribe(
        ItemAdded, handler=lambda env: harness.record("idem", env), name="t.idem", idempotent=True
    )
    bus.subscribe(ItemAdded, handler=lambda env: harness.record("plain", env), name="t.plain")
    with harness.worker():
        # When one event is delivered twice (published again: same event id)
        envelope = bus.publish(ItemAdded(sku="I1", quantity=1))
        harness.wait(lambda: harness.count("idem") == 1, "the first delivery")
        bus.publish(envelope)
        # Then the plain handler ran twice, the idempotent one once
        harness.wait(lambda: harness.count("plain") == 2, "both plain deliveries")
        harness.wait_finished("t.idem", 2)
    assert harness.count("idem") == 1
    assert harness.bus.state.idempotency.is_done("t.idem", str(envelope.event_id))


def test_a_failed_idempotent_run_does_not_count_as_done(harness: Harness) -> None:
    # Given an idempotent handler that fails once, then works
    failures = [RuntimeError("flaky")]

    def flaky(envelope: Any) -> None:
        if failures:
            raise failures.pop()
        harness.record("flaky", envelope)

    harness.bus.subscribe(
        ItemAdded, handler=flaky, name="t.flaky", idempotent=True, retry_backoff=0
    )
    with harness.worker():
        harness.bus.publish(ItemAdded(sku="I2", quantity=1))
        # Then its retry ran it (the failed attempt released the claim)
        harness.wait(lambda: harness.count("flaky") == 1, "the retry")
    assert len(harness.bus.dead_letters) == 0


def test_an_ordered_handler_sees_each_aggregate_in_sequence(harness: Harness) -> None:
    # Given an ordered handler recording (aggregate, sequence)
    seen: dict[str, list[int]] = defaultdict(list)

    def record(envelope: Envelope[Any]) -> None:
        with harness.lock:
            seen[str(envelope.aggregate_id)].append(int(envelope.sequence or 0))

    harness.bus.subscribe(ItemAdded, handler=record, name="t.ordered", ordered=True)
    with harness.worker():
        # When 3 carts' events are published interleaved
        envelopes = [
            harness.bus.publish(ItemAdded(sku=f"S{i}", quantity=i), aggregate_id=f"cart-{i % 3}")
            for i in range(15)
        ]
        harness.wait(lambda: sum(map(len, seen.values())) == 15, "all 15 events")
    # Then publish numbered each cart's events 1..5, and the handler saw them in that order
    assert [e.sequence for e in envelopes if e.aggregate_id == "cart-0"] == [1, 2, 3, 4, 5]
    assert dict(seen) == {f"cart-{n}": [1, 2, 3, 4, 5] for n in range(3)}


def test_events_of_types_without_an_ordered_handler_get_no_sequence(harness: Harness) -> None:
    harness.bus.subscribe(ItemRemoved, handler=lambda env: None, name="t.unordered")
    with harness.worker():
        envelope = harness.bus.publish(ItemRemoved(sku="S"), aggregate_id="cart-9")
    assert envelope.sequence is None


def test_a_missing_predecessor_dead_letters_the_waiting_event_and_replay_restores_order(
    harness: Harness,
) -> None:
    # Given an ordered handler that is broken for sku "bad", gap timeout 1 s (Celery)
    if harness.app is not None:
        harness.app.conf.eventbus_ordering_gap_timeout = 1
    broken = {"bad"}
    seen: list[int] = []

    def handle(envelope: Envelope[Any]) -> None:
        if envelope.data.sku in broken:
            raise ValueError("bad sku")
        seen.append(int(envelope.sequence or 0))

    harness.bus.subscribe(
        ItemAdded, handler=handle, name="t.gap", ordered=True, dont_retry_on=ValueError
    )
    with harness.worker():
        # When sequence 1 fails for good and sequence 2 follows
        harness.bus.publish(ItemAdded(sku="bad", quantity=1), aggregate_id="cart-g")
        harness.bus.publish(ItemAdded(sku="good", quantity=1), aggregate_id="cart-g")
        # Then 1 is dead-lettered for its error and 2, after the gap timeout, as a gap
        harness.wait(lambda: len(harness.bus.dead_letters) == 2, "two dead letters")
        records = {r.reason: r for r in harness.bus.dead_letters.list()}
        assert set(records) == {"permanent_error", "sequence_gap"}
        assert "sequence 1 of cart-g did not come" in records["sequence_gap"].exception_message
        assert seen == []
        # When the handler is fixed and the two are replayed, first the missing one
        broken.clear()
        harness.bus.dead_letters.replay(records["permanent_error"].id)
        harness.wait(lambda: seen == [1], "sequence 1")
        harness.bus.dead_letters.replay(records["sequence_gap"].id)
        harness.wait(lambda: seen == [1, 2], "sequence 2")
    assert len(harness.bus.dead_letters) == 0


def test_aggregates_that_read_alike_joined_with_a_colon_are_ordered_apart(
    harness: Harness,
) -> None:
    # Given an ordered handler, and two aggregates that are both "Order:eu:7"
    # when type and id are joined with ':'
    seen: list[tuple[str | None, str | None, int | None]] = []

    def record(envelope: Envelope[Any]) -> None:
        with harness.lock:
            seen.append((envelope.aggregate_type, envelope.aggregate_id, envelope.sequence))

    harness.bus.subscribe(ItemAdded, handler=record, name="t.colon", ordered=True)
    with harness.worker():
        # When each publishes its first event
        first = harness.bus.publish(
            ItemAdded(sku="A", quantity=1), aggregate_type="Order:eu", aggregate_id="7"
        )
        second = harness.bus.publish(
            ItemAdded(sku="B", quantity=1), aggregate_type="Order", aggregate_id="eu:7"
        )
        # Then each is its aggregate's sequence 1, and the handler ran both
        harness.wait(lambda: len(seen) == 2, "both events")
    assert (first.sequence, second.sequence) == (1, 1)
    assert sorted(seen, key=str) == sorted([("Order:eu", "7", 1), ("Order", "eu:7", 1)], key=str)
    assert len(harness.bus.dead_letters) == 0
