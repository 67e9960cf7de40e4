"""What only the in-memory bus does: synchronous runs, JSON on the way, raise_errors."""

from __future__ import annotations

from typing import Any

import pytest

from eventbus import InMemoryEventBus, PublishError, ReplayError
from tests.contract.events import ItemAdded


def test_handlers_run_inside_publish_with_a_decoded_copy() -> None:
    bus = InMemoryEventBus()
    seen: list[Any] = []
    bus.subscribe(ItemAdded, handler=seen.append, name="t.seen")
    envelope = bus.publish(ItemAdded(sku="a", quantity=3), metadata={"tenant": "acme"})
    [received] = seen
    assert received == envelope and received is not envelope  # it went through JSON


def test_retries_only_what_retry_on_names() -> None:
    bus = InMemoryEventBus()
    attempts: list[str] = []

    def handler(envelope: Any) -> None:
        attempts.append("x")
        raise KeyError("not retryable here")

    bus.subscribe(
        ItemAdded, handler=handler, name="t.h", retry_on=(ConnectionError,), max_retries=3
    )
    bus.publish(ItemAdded(sku="a", quantity=1))
    [record] = bus.dead_letters.list()
    assert len(attempts) == 1 and record.reason == "permanent_error"


def test_raise_errors_surfaces_the_handler_exception_after_dead_lettering() -> None:
    bus = InMemoryEventBus(raise_errors=True)

    def handler(envelope: Any) -> None:
        raise ValueError("bad sku")

    bus.subscribe(ItemAdded, handler=handler, name="t.h", max_retries=0)
    with pytest.raises(ValueError, match="bad sku"):
        bus.publish(ItemAdded(sku="a", quantity=1))
    assert len(bus.dead_letters) == 1


def test_dead_letter_queue_filters_groups_and_finds_by_prefix() -> None:
    bus = InMemoryEventBus()

    def fails(envelope: Any) -> None:
        raise ValueError("no")

    def also_fails(envelope: Any) -> None:
        raise ConnectionError("down")

    bus.subscribe(ItemAdded, handler=fails, name="shop.fails", max_retries=0)
    bus.subscribe(ItemAdded, handler=also_fails, name="mail.also_fails", max_retries=0)
    for n in range(3):
        bus.publish(ItemAdded(sku=f"s{n}", quantity=1))
    dlq = bus.dead_letters
    assert len(dlq) == 6
    assert len(dlq.list(handler="shop.*")) == 3
    assert len(dlq.list(exception_type="ConnectionError")) == 3
    assert dlq.groups() == {
        ("shop.fails", "ValueError"): 3,
        ("mail.also_fails", "ConnectionError"): 3,
    }
    first = dlq.list(limit=1)[0]
    assert dlq.get(first.id[:8]) == first
    assert dlq.purge() == 6 and len(dlq) == 0


def test_replay_all_keeps_what_cannot_be_replayed_and_says_so() -> None:
    bus = InMemoryEventBus()
    calls: list[str] = []
    broken = True

    def handler(envelope: Any) -> None:
        if broken:
            raise RuntimeError("bug")
        calls.append(envelope.data.sku)

    bus.subscribe(ItemAdded, handler=handler, name="t.h", max_retries=0)
    bus.publish(ItemAdded(sku="a", quantity=1))
    bus.publish(ItemAdded(sku="b", quantity=1))
    # an undecodable record, as a hand-pushed message would give
    from eventbus import DeadLetter

    bus.dead_letter_store.append(
        DeadLetter(
            handler=None,
            reason="undecodable",
            attempts=1,
            exception_type="DecodeError",
            exception_message="garbage",
            raw_body="%%%",
        )
    )
    broken = False
    with pytest.raises(ReplayError, match="replayed 2; 1 record"):
        bus.dead_letters.replay_all()
    assert sorted(calls) == ["a", "b"]
    assert [r.reason for r in bus.dead_letters] == ["undecodable"]


def test_publish_error_is_part_of_the_family() -> None:
    from eventbus import EventBusError

    assert issubclass(PublishError, EventBusError)
