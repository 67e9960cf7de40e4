"""``eventbus.relay_outbox``: the relay as a Celery task, as Celery beat sends it."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from eventbus import ConfigurationError, Envelope, EventBus, OutboxError
from eventbus.celery.relay_task import RELAY_TASK
from eventbus.outbox import Outbox
from tests.outbox.events import EVENTS, OrderPlaced, placed
from tests.support import (
    delete_queues,
    make_app,
    require_broker,
    running_worker,
    unique,
    wait_for,
)


class World:
    """A Celery app whose bus has one counting handler, and an outbox on SQLite."""

    def __init__(self, broker_url: str, tmp_path: Path, **settings: Any) -> None:
        self.queue = unique("outbox.task")
        self.url = f"sqlite:///{tmp_path / 'app.db'}"
        self.app: Celery = make_app(broker_url, eventbus_outbox_url=self.url, **settings)
        self.bus = EventBus(
            self.app,
            default_queue=self.queue,
            dead_letter_queue=f"{self.queue}.dlq",
            event_registry=EVENTS,
        )
        self.handled: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.bus.subscribe(OrderPlaced, handler=self.record, name=f"{self.queue}.record")
        self.outbox = Outbox(self.url)
        self.outbox.create_schema()

    def record(self, envelope: Envelope[Any]) -> None:
        with self._lock:
            self.handled[str(envelope.event_id)] += 1

    def commit(self, count: int) -> list[str]:
        with self.outbox.engine.begin() as conn:
            envelopes = self.outbox.add([placed(f"o{i}") for i in range(count)], connection=conn)
        return [str(e.event_id) for e in envelopes]

    def close(self) -> None:
        self.outbox.close()
        self.app.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """On kombu's in-memory transport: the task's publishes need no server."""
    made = World("memory://", tmp_path, eventbus_outbox_batch_size=2)
    yield made
    made.close()


def waiting(app: Celery, queue: str) -> int:
    with app.connection_for_read() as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def test_every_bus_registers_the_relay_task_on_its_default_queue(world: World) -> None:
    task = world.app.tasks[RELAY_TASK]
    assert task.name == world.bus.relay_task.name == "eventbus.relay_outbox"
    assert task.queue == world.queue


def test_the_task_relays_the_configured_outbox_batch_after_batch(world: World) -> None:
    world.commit(5)
    # When beat's message runs (in process here)
    outcome = world.app.tasks[RELAY_TASK].apply().get()
    # Then every row went out, in batches of eventbus_outbox_batch_size
    assert outcome == {"published": 5, "failed": 0, "pending_left": 0, "error": None}
    assert waiting(world.app, world.queue) == 5
    assert world.outbox.status().published == 5
    # And max_batches bounds one run
    world.commit(5)
    outcome = world.app.tasks[RELAY_TASK].apply(kwargs={"max_batches": 1}).get()
    assert (outcome["published"], outcome["pending_left"]) == (2, 3)


def test_without_an_outbox_url_the_task_fails_naming_the_setting(world: World) -> None:
    world.app.conf.eventbus_outbox_url = None
    with pytest.raises(ConfigurationError, match="eventbus_outbox_url"):
        world.app.tasks[RELAY_TASK].apply().get()


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"max_batches": "many"}])
def test_bad_arguments_fail_the_task_before_relaying(world: World, kwargs: Any) -> None:
    world.commit(1)
    with pytest.raises(OutboxError, match=next(iter(kwargs))):
        world.app.tasks[RELAY_TASK].apply(kwargs=kwargs).get()
    assert world.outbox.status().pending == 1


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ],
)
def test_a_worker_running_the_task_publishes_each_row_once_to_the_handlers(
    kind: str, tmp_path: Path
) -> None:
    # Given committed rows and a worker consuming the bus's queue
    made = World(require_broker(kind), tmp_path)
    ids = made.commit(6)
    try:
        with running_worker(made.app, [made.queue], pool="threads", concurrency=2):
            # When beat sends the relay task
            made.bus.relay_task.delay()
            # Then the worker relays the rows and handles each event once
            wait_for(
                lambda: len(made.handled) == len(ids),
                message=lambda: f"{len(made.handled)}/{len(ids)} handled",
            )
            # (handlers may run before the relay's commit marks the rows)
            wait_for(lambda: made.outbox.status().pending == 0, message="rows marked")
        assert made.handled == dict.fromkeys(ids, 1)
    finally:
        made.close()
        delete_queues(made.app, made.queue, f"{made.queue}.dlq")
