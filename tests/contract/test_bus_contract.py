"""One contract, three buses: in-memory, Celery on Redis, Celery on RabbitMQ.

Each test reads: given handlers subscribed, when an event is published, then
the user sees the same outcome whatever the bus.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from eventbus import (
    EventValidationError,
    PermanentHandlerError,
    create_event,
)
from tests.contract.events import ItemAdded, ItemRemoved
from tests.contract.harness import Harness


def test_each_subscribed_handler_receives_the_event_once(harness: Harness) -> None:
    # Given two handlers of ItemAdded and one of ItemRemoved
    bus = harness.bus
    bus.subscribe(ItemAdded, handler=lambda env: harness.record("a", env), name="t.a")
    bus.subscribe(ItemAdded, handler=lambda env: harness.record("b", env), name="t.b")
    bus.subscribe(ItemRemoved, handler=lambda env: harness.record("c", env), name="t.c")
    with harness.worker():
        # When one ItemAdded is published
        envelope = bus.publish(ItemAdded(sku="X1", quantity=2), aggregate_id="cart-1")
        # Then a and b ran once each with that event; c did not run
        harness.wait(lambda: harness.count("a") and harness.count("b"), "both handlers")
    assert sorted(harness.calls) == [("a", str(envelope.event_id)), ("b", str(envelope.event_id))]
    assert envelope.aggregate_id == "cart-1" and envelope.event_type == "contract.item_added"


def test_failing_handler_is_dead_lettered_after_its_retries(harness: Harness) -> None:
    # Given a handler that always fails, with 2 retries and no backoff
    def broken(envelope: Any) -> None:
        harness.record("broken", envelope)
        raise RuntimeError("disk full")

    harness.bus.subscribe(
        ItemAdded, handler=broken, name="t.broken", max_retries=2, retry_backoff=0
    )
    with harness.worker():
        # When an event is published
        envelope = harness.bus.publish(ItemAdded(sku="X2", quantity=1))
        # Then it was tried 3 times and exactly one dead letter describes the failure
        harness.wait(lambda: len(harness.bus.dead_letters) == 1, "the dead letter")
    assert harness.count("broken") == 3
    [record] = harness.bus.dead_letters.list()
    assert record.handler == "t.broken"
    assert record.attempts == 3
    assert record.reason == "retries_exhausted"
    assert record.exception_type == "RuntimeError" and record.exception_message == "disk full"
    assert record.event_id == str(envelope.event_id)
    assert record.envelope is not None and record.envelope["data"] == {"sku": "X2", "quantity": 1}
    assert "disk full" in (record.traceback or "")


def test_permanent_error_skips_retries(harness: Harness) -> None:
    def picky(envelope: Any) -> None:
        harness.record("picky", envelope)
        raise PermanentHandlerError("sku X3 is discontinued")

    harness.bus.subscribe(ItemAdded, handler=picky, name="t.picky", max_retries=5, retry_backoff=0)
    with harness.worker():
        harness.bus.publish(ItemAdded(sku="X3", quantity=1))
        harness.wait(lambda: len(harness.bus.dead_letters) == 1, "the dead letter")
    [record] = harness.bus.dead_letters.list()
    assert harness.count("picky") == 1
    assert (record.attempts, record.reason) == (1, "permanent_error")


def test_replay_after_fix_delivers_the_same_event_once_and_removes_the_record(
    harness: Harness,
) -> None:
    # Given a handler that fails until it is "fixed", and a dead letter from it
    fixed = threading.Event()

    def flaky(envelope: Any) -> None:
        if not fixed.is_set():
            raise PermanentHandlerError("bug #123")
        harness.record("flaky", envelope)

    other_calls: list[str] = []
    harness.bus.subscribe(ItemAdded, handler=flaky, name="t.flaky")
    harness.bus.subscribe(ItemAdded, handler=lambda env: other_calls.append("x"), name="t.other")
    with harness.worker():
        envelope = harness.bus.publish(ItemAdded(sku="X4", quantity=1))
        harness.wait(lambda: len(harness.bus.dead_letters) == 1 and other_calls, "dead letter")
        [record] = harness.bus.dead_letters.list()
        # When the fix is deployed and the record replayed
        fixed.set()
        replayed = harness.bus.dead_letters.replay(record.id)
        harness.wait(lambda: harness.count("flaky") == 1, "the replayed event")
    # Then the fixed handler saw the same event, the other handler was not re-run,
    # and the record is gone
    assert replayed.event_id == envelope.event_id
    assert replayed.metadata["eventbus_replays"] == 1
    assert harness.calls == [("flaky", str(envelope.event_id))]
    assert other_calls == ["x"]
    assert len(harness.bus.dead_letters) == 0


def test_invalid_data_raises_before_any_handler_runs(harness: Harness) -> None:
    harness.bus.subscribe(ItemAdded, handler=lambda env: harness.record("a", env), name="t.v")
    with pytest.raises(EventValidationError) as err:
        harness.bus.publish(create_event("contract.item_added", {"sku": "X5", "quantity": "many"}))
    assert "quantity" in str(err.value)
    assert harness.calls == []
    assert sum(harness.bus.published.values()) == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"aggregate_id": "x" * 256},
        {"aggregate_id": "x" * 1024 * 1024},
        {"aggregate_id": "7", "aggregate_type": "T" * 256},
        {"correlation_id": "c" * 256},
        {"causation_id": "c" * 256},
    ],
    ids=["id-256", "id-1MB", "type-256", "correlation-256", "causation-256"],
)
def test_an_identity_field_over_255_characters_is_refused_before_anything_is_sent(
    harness: Harness, fields: dict[str, str]
) -> None:
    # Given a subscribed handler (the event store and the outbox keep these in 255 characters)
    harness.bus.subscribe(ItemAdded, handler=lambda env: harness.record("a", env), name="t.cap")
    field = next(iter(fields.keys() - {"aggregate_id"}), "aggregate_id")
    with harness.worker():
        # When an event is published with one of them longer: Then it is refused, naming it
        with pytest.raises(EventValidationError) as err:
            harness.bus.publish(ItemAdded(sku="X", quantity=1), **fields)
        assert field in str(err.value) and "255" in str(err.value)
        assert len(str(err.value)) < 300
        # And so is the same envelope built with create_event
        with pytest.raises(EventValidationError):
            create_event(ItemAdded, {"sku": "X", "quantity": 1}, **fields)
        # And 255 characters are fine
        ok = {name: value[:255] for name, value in fields.items()}
        harness.bus.publish(ItemAdded(sku="Y", quantity=1), **ok)
        harness.wait(lambda: harness.count("a") == 1, "the event of 255 characters")
    # And nothing of the refused one was sent or counted
    assert harness.calls == [("a", harness.calls[0][1])]
    assert sum(harness.bus.published.values()) == 1


def test_event_without_subscribers_is_counted_not_sent(harness: Harness) -> None:
    envelope = harness.bus.publish(ItemRemoved(sku="nobody-listens"))
    assert harness.bus.published["contract.item_removed"] == 1
    assert envelope.event_type == "contract.item_removed"


def test_a_replay_that_fails_again_is_dead_lettered_again_not_looped(harness: Harness) -> None:
    # Given a dead letter from a handler that is still broken
    def broken(envelope: Any) -> None:
        harness.record("broken", envelope)
        raise PermanentHandlerError("still broken")

    harness.bus.subscribe(ItemAdded, handler=broken, name="t.still_broken")
    with harness.worker():
        envelope = harness.bus.publish(ItemAdded(sku="X6", quantity=1))
        harness.wait(lambda: len(harness.bus.dead_letters) == 1, "the first dead letter")
        [first] = harness.bus.dead_letters.list()
        # When it is replayed without a fix
        harness.bus.dead_letters.replay(first.id)
        # Then it fails once more and is dead-lettered once more, as a new record
        # that remembers the replay
        harness.wait(
            lambda: harness.count("broken") == 2 and len(harness.bus.dead_letters) == 1,
            "the second dead letter",
        )
    [second] = harness.bus.dead_letters.list()
    assert second.id != first.id
    assert second.event_id == str(envelope.event_id)
    assert second.envelope is not None
    assert second.envelope["metadata"]["eventbus_replays"] == 1
    assert harness.count("broken") == 2
