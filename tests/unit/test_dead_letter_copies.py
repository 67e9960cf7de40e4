"""Copies of one dead letter (same id) read as one record: the stores' shared code.

The same rules as tests/integration/test_dlq_copies.py (Redis, RabbitMQ), on
the in-memory bus's store and on kombu's ``memory://`` transport: listing,
``len()``, groups and ``get`` show each failed delivery once; a replay
publishes it once and removes every copy.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from kombu.transport.memory import Channel as MemoryChannel

from eventbus import DeadLetter, Envelope, Event, EventBus, EventRegistry, InMemoryEventBus
from eventbus.bus.base import BaseEventBus
from eventbus.celery.deadletter.base import BrokerDeadLetterStore
from tests.support import make_app

REGISTRY = EventRegistry()


class Parcel(Event, registry=REGISTRY):
    event_type = "copies.parcel"

    parcel_id: str


HANDLER = "tests.unit.copies.ship"


def record_for(n: int) -> DeadLetter:
    event_id = str(uuid.uuid4())
    return DeadLetter(
        handler=HANDLER,
        reason="retries_exhausted",
        attempts=2,
        exception_type="ValueError",
        exception_message=f"boom {n}",
        task_id=str(uuid.uuid4()),
        worker="celery@a",
        event_id=event_id,
        event_type=Parcel.event_type,
        envelope={
            "event_id": event_id,
            "event_type": Parcel.event_type,
            "version": 1,
            "occurred_at": "2026-11-26T12:00:00Z",
            "metadata": {},
            "data": {"parcel_id": f"p-{n}"},
        },
    )


class World:
    """A bus (in-memory, or an EventBus on kombu's memory transport) and what it sent."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.shipped: list[Envelope[Any]] = []
        if kind == "in-memory":
            self.bus: BaseEventBus = InMemoryEventBus(event_registry=REGISTRY)
            self.queue = ""
        else:
            uid = uuid.uuid4().hex[:8]
            self.queue = f"copies-{uid}"
            self.bus = EventBus(
                make_app("memory://"),
                event_registry=REGISTRY,
                default_queue=self.queue,
                dead_letter_queue=f"{self.queue}.dlq",
            )
        self.bus.subscribe(Parcel, name=HANDLER, handler=self.shipped.append)

    def sent(self) -> int:
        """Messages (kombu memory: waiting on the handler queue) or runs (in-memory bus)."""
        if self.kind == "in-memory":
            return len(self.shipped)
        queue = MemoryChannel.queues.get(self.queue)
        return 0 if queue is None else queue.qsize()

    def write_copy(self, record: DeadLetter) -> None:
        copy = record.model_copy(
            update={
                "worker": "celery@b",
                "failed_at": record.failed_at + timedelta(milliseconds=30),
            }
        )
        store = self.bus.dead_letter_store
        if isinstance(store, BrokerDeadLetterStore):
            BrokerDeadLetterStore.append_once(store, copy)  # a plain publish
        else:
            store.append(copy)  # not told it may be a repeat: appended


@pytest.fixture(params=["in-memory", "kombu-memory"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    w = World(request.param)
    yield w
    w.bus.dead_letters.purge()


def copied(world: World) -> tuple[DeadLetter, DeadLetter]:
    """A record, a copy of it, and another record after them."""
    record, other = record_for(1), record_for(2)
    world.bus.dead_letter_store.append(record)
    world.write_copy(record)
    world.bus.dead_letter_store.append(other)
    assert world.bus.dead_letter_store.count() == 3  # messages, copies included
    return record, other


def test_copies_read_as_one_record(world: World) -> None:
    record, other = copied(world)
    dlq = world.bus.dead_letters
    assert [r.id for r in dlq] == [record.id, other.id]
    assert [r.id for r in dlq.list()] == [record.id, other.id]
    assert [r.id for r in dlq.list(limit=2)] == [record.id, other.id]
    assert len(dlq) == 2
    assert dlq.groups() == {(HANDLER, "ValueError"): 2}
    assert dlq.get(record.id[:8]) == record  # the first copy, not "matches 2 dead letters"
    assert world.bus.dead_letter_store.count_records() == 2


def test_replay_all_publishes_once_and_removes_every_copy(world: World) -> None:
    copied(world)
    assert world.bus.dead_letters.replay_all() == 2
    assert world.sent() == 2
    assert world.bus.dead_letter_store.count() == 0


def test_replay_one_publishes_once_and_removes_every_copy(world: World) -> None:
    record, other = copied(world)
    world.bus.dead_letters.replay(record.id)
    assert world.sent() == 1
    assert [r.id for r in world.bus.dead_letters] == [other.id]
    assert world.bus.dead_letter_store.count() == 1


def test_a_kept_record_keeps_its_copies_and_is_reported_once(world: World) -> None:
    # Given a record whose handler is gone from this bus, with a copy
    gone = record_for(3).model_copy(update={"handler": "tests.unit.copies.gone"})
    world.bus.dead_letter_store.append(gone)
    world.write_copy(gone)
    reports: list[str] = []
    # When everything is replayed
    replayed = world.bus.dead_letters.replay_each(
        lambda r: True, lambda record, outcome: reports.append(record.id)
    )
    # Then it is reported once, and kept (both copies: nothing was sent)
    assert (replayed, reports) == (0, [gone.id])
    assert world.bus.dead_letter_store.count() == 2
    assert len(world.bus.dead_letters) == 1
