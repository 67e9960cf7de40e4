"""The payload limit at publish: an oversized envelope is refused before anything is sent.

(Publish puts no user data in headers: the worker counts headers toward the limit only
beyond what Celery writes itself.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from eventbus import EventBus, InMemoryEventBus, PayloadTooLarge
from eventbus.celery.worker import CELERY_HEADERS_ALLOWANCE
from tests.contract.events import ItemAdded
from tests.support import make_app, unique

KIB = 1024


@pytest.fixture
def app() -> Iterator[Celery]:
    """A Celery app on the in-process memory broker, with a default queue of its own."""
    app = make_app("memory://", default_queue=unique("payload-limit"))
    yield app
    app.close()


def _queued(app: Celery, queue: str) -> int:
    with app.connection_for_write() as conn:
        return int(conn.SimpleQueue(queue).qsize())


def test_in_memory_bus_refuses_an_envelope_over_256_kib() -> None:
    # Given a subscribed handler on the in-memory bus, with its default limit
    bus = InMemoryEventBus()
    seen: list[Any] = []
    bus.subscribe(ItemAdded, handler=seen.append, name="t.seen")
    assert bus.max_payload_bytes == 256 * KIB

    # When an event of about 300 KiB is published
    with pytest.raises(PayloadTooLarge) as raised:
        bus.publish(ItemAdded(sku="x" * 300 * KIB, quantity=1))

    # Then the error names the event type, its size and the limit
    error = raised.value
    assert error.event_type == "contract.item_added"
    assert error.size > 300 * KIB and error.limit == 256 * KIB
    assert f"is {error.size} bytes" in str(error) and f"limit of {256 * KIB}" in str(error)
    assert "eventbus_max_payload_bytes" in str(error)
    # And nothing ran, nothing was dead-lettered, nothing was counted as published
    assert seen == []
    assert len(bus.dead_letters) == 0
    assert bus.published["contract.item_added"] == 0
    # While an event under the limit goes through
    bus.publish(ItemAdded(sku="x" * 200 * KIB, quantity=1))
    assert len(seen) == 1


def test_celery_bus_refuses_an_envelope_over_its_setting_eagerly(app: Celery) -> None:
    # Given an eager Celery app with a 1 KiB limit, and a handler
    app.conf.task_always_eager = True
    app.conf.eventbus_max_payload_bytes = KIB
    bus = EventBus(app)
    seen: list[Any] = []
    bus.subscribe(ItemAdded, handler=seen.append, name="t.eager")

    # When a 2 KiB event is published
    with pytest.raises(PayloadTooLarge, match=f"over the limit of {KIB}") as raised:
        bus.publish(ItemAdded(sku="y" * 2 * KIB, quantity=1))

    # Then the handler never ran
    assert raised.value.size > 2 * KIB
    assert seen == []
    assert bus.published["contract.item_added"] == 0
    # While a small event runs at once
    bus.publish(ItemAdded(sku="small", quantity=1))
    assert [envelope.data.sku for envelope in seen] == ["small"]


def test_celery_bus_sends_nothing_for_an_oversized_envelope(app: Celery) -> None:
    # Given a Celery app on the memory broker with a 1 KiB limit, and two handlers
    app.conf.eventbus_max_payload_bytes = KIB
    bus = EventBus(app)
    for name in ("t.one", "t.two"):
        bus.subscribe(ItemAdded, handler=lambda envelope: None, name=name)

    # When a 2 KiB event is published
    with pytest.raises(PayloadTooLarge):
        bus.publish(ItemAdded(sku="z" * 2 * KIB, quantity=1))

    # Then no message waits on the handler queue
    assert _queued(app, bus.default_queue) == 0
    # (and one that is sent does wait there, once per handler)
    bus.publish(ItemAdded(sku="small", quantity=1))
    assert _queued(app, bus.default_queue) == 2


def test_a_limit_of_zero_turns_the_check_off(app: Celery) -> None:
    app.conf.task_always_eager = True
    app.conf.eventbus_max_payload_bytes = 0
    bus = EventBus(app)
    seen: list[Any] = []
    bus.subscribe(ItemAdded, handler=seen.append, name="t.unlimited")

    bus.publish(ItemAdded(sku="w" * 300 * KIB, quantity=1))

    assert bus.max_payload_bytes == 0
    assert len(seen) == 1


def test_publish_puts_no_user_data_in_headers(app: Celery) -> None:
    # Given a handler, with the default limit
    bus = EventBus(app)
    bus.subscribe(ItemAdded, handler=lambda envelope: None, name="t.headers")

    # When an event of 200 KiB is published
    bus.publish(ItemAdded(sku="h" * 200 * KIB, quantity=1))

    # Then its message's headers stay within what the worker grants Celery's own
    # headers (beyond that, headers count toward the payload limit)
    with app.connection_for_write() as conn:
        message = conn.SimpleQueue(bus.default_queue).get(timeout=1)
    headers = json.dumps(message.headers, separators=(",", ":"), default=str)
    allowance = CELERY_HEADERS_ALLOWANCE + app.amqp.argsrepr_maxsize + app.amqp.kwargsrepr_maxsize
    assert len(headers.encode()) <= allowance
    assert len(message.body) > 200 * KIB
