"""``eventbus_queue_type``: how handler queues and the DLQ are declared, and what is refused.

No broker: an ``amqp://`` URL is only read, never connected to.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from amqp.exceptions import PreconditionFailed
from celery import Celery
from kombu import Queue

from eventbus import ConfigurationError, EventBus
from eventbus.celery.deadletter.amqp import AmqpDeadLetterStore
from eventbus.celery.deadletter.base import decode_record
from eventbus.celery.queue_types import (
    DEAD_LETTER_QUEUE_DELIVERY_LIMIT,
    check_queue_names,
    declaration_mismatch,
    whole_seconds,
)
from tests.contract.events import ItemAdded

AMQP = "amqp://guest:guest@127.0.0.1:1//"  # never connected to


@pytest.fixture
def make_bus() -> Iterator[Any]:
    apps: list[Celery] = []

    def make(broker: str = AMQP, queue: str = "orders", **conf: Any) -> EventBus:
        app = Celery("t", broker=broker, set_as_current=False)
        app.conf.update(conf)
        apps.append(app)
        return EventBus(app, default_queue=queue, dead_letter_queue="orders.dlq")

    yield make
    for app in apps:
        app.close()


def test_classic_is_the_default_and_keeps_its_direct_exchange(make_bus: Any) -> None:
    bus = make_bus()
    queue = bus.handler_queue("orders")
    assert isinstance(queue, Queue)
    assert bus.queue_type == "classic"
    assert queue.exchange.type == "direct"
    assert queue.queue_arguments == {
        "x-dead-letter-exchange": "orders.dlq",
        "x-dead-letter-routing-key": "orders.dlq",
    }
    store = bus.dead_letter_store
    assert isinstance(store, AmqpDeadLetterStore)
    assert not store.queue.queue_arguments


def test_quorum_declares_a_topic_exchange_a_delivery_limit_and_at_least_once_dlx(
    make_bus: Any,
) -> None:
    bus = make_bus(eventbus_queue_type="quorum", eventbus_delivery_limit=7)
    queue = bus.handler_queue("orders")
    assert isinstance(queue, Queue)
    # Celery's native delayed delivery routes retries through a topic exchange
    assert queue.exchange.type == "topic"
    assert queue.queue_arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 7,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-dead-letter-exchange": "orders.dlq",
        "x-dead-letter-routing-key": "orders.dlq",
    }
    # The DLQ: quorum, with a delivery limit no browse reaches (RabbitMQ 4 sets 20)
    store = bus.dead_letter_store
    assert isinstance(store, AmqpDeadLetterStore)
    assert store.queue.queue_arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": DEAD_LETTER_QUEUE_DELIVERY_LIMIT,
    }


def test_the_default_delivery_limit_is_five(make_bus: Any) -> None:
    queue = make_bus(eventbus_queue_type="quorum").handler_queue("orders")
    assert queue.queue_arguments["x-delivery-limit"] == 5


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"eventbus_queue_type": "mirrored"}, "must be 'classic' or 'quorum'"),
        ({"eventbus_queue_type": "quorum", "eventbus_delivery_limit": -1}, "whole number >= 0"),
        ({"eventbus_queue_type": "quorum", "eventbus_delivery_limit": "x"}, "whole number >= 0"),
        (
            {"eventbus_queue_type": "quorum", "eventbus_broker_dead_lettering": False},
            "without a dead-letter exchange RabbitMQ would drop it",
        ),
        (
            {"eventbus_queue_type": "quorum", "worker_detect_quorum_queues": False},
            "worker_detect_quorum_queues",
        ),
    ],
)
def test_a_setting_that_cannot_work_is_refused(
    make_bus: Any, conf: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make_bus(**conf)


def test_quorum_is_refused_on_redis_not_ignored(make_bus: Any) -> None:
    with pytest.raises(ConfigurationError, match="quorum queues are RabbitMQ's"):
        make_bus(broker="redis://127.0.0.1:1/0", eventbus_queue_type="quorum")


def test_a_quorum_handler_queue_is_never_celerys_default_queue(make_bus: Any) -> None:
    with pytest.raises(ConfigurationError, match="Celery's default queue"):
        make_bus(queue="celery", eventbus_queue_type="quorum")


def test_two_queues_whose_delay_bindings_overlap_are_refused(make_bus: Any) -> None:
    bus = make_bus(eventbus_queue_type="quorum")
    bus.subscribe(ItemAdded, handler=lambda envelope: None, name="t.a", queue="eu.orders")
    # 'orders' would also match Celery's '#.orders' binding of 'eu.orders' retries
    with pytest.raises(ConfigurationError, match=r"would also get 'eu\.orders'"):
        bus.subscribe(ItemAdded, handler=lambda envelope: None, name="t.b", queue="orders")
    check_queue_names(["orders", "orders2", "neworders"])  # no dot: no overlap


def test_sub_second_countdowns_are_whole_seconds_on_quorum_only() -> None:
    quorum = {"eventbus_queue_type": "quorum"}
    assert whole_seconds(0.25, quorum) == 1.0
    assert whole_seconds(1.5, quorum) == 2.0
    assert whole_seconds(0, quorum) == 0
    assert whole_seconds(0.25, {}) == 0.25


def test_an_inequivalent_declaration_names_the_queue_and_the_setting() -> None:
    error = PreconditionFailed(
        "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'orders' in "
        "vhost '/': received '7' but current is '5'",
        method_sig=(50, 10),
    )
    found = declaration_mismatch(error, {"eventbus_queue_type": "quorum"})
    assert found is not None
    text = str(found)
    assert "queue 'orders'" in text
    assert "'x-delivery-limit' received '7' but current is '5'" in text
    assert "eventbus_delivery_limit" in text
    assert declaration_mismatch(ConnectionError("refused"), {}) is None


def test_a_delivery_limit_dead_letter_reads_as_its_own_reason() -> None:
    headers = {
        "task": "handlers.orders.ship",
        "id": "task-1",
        "x-death": [
            {"queue": "orders", "reason": "delivery_limit", "count": 1},
            {"queue": "celery_delayed_0", "reason": "expired", "count": 2},
        ],
    }
    record = decode_record(b'[[{"event_id": "e-1"}], {}, {}]', headers)
    assert record.reason == "delivery_limit"
    assert record.queue == "orders"
    assert record.handler == "handlers.orders.ship"
    assert "eventbus_delivery_limit" in record.exception_message
    rejected = {**headers, "x-death": [{"queue": "orders", "reason": "rejected"}]}
    assert decode_record(b"[[{}], {}, {}]", rejected).reason == "broker"


def test_a_broker_dead_letter_failed_when_the_broker_says() -> None:
    # Given a handler's message RabbitMQ dead-lettered at 12:00:05 UTC (x-death's
    # "time": py-amqp reads an AMQP timestamp as a naive UTC datetime)
    died = datetime(2026, 12, 6, 12, 0, 5)
    headers = {
        "task": "handlers.orders.ship",
        "id": "task-1",
        "x-death": [{"queue": "orders", "reason": "rejected", "count": 1, "time": died}],
    }

    # When the DLQ is read, now or later
    record = decode_record(b'[[{"event_id": "e-1"}], {}, {}]', headers)

    # Then the record failed then, not when it was read
    assert record.failed_at == died.replace(tzinfo=UTC)
