"""Subscribing: names, forms, options, and the errors for doing it wrong."""

from __future__ import annotations

import re
from typing import Any

import pytest

from eventbus import Envelope, InMemoryEventBus, SubscriptionError, UnknownEventType
from tests.contract.events import ItemAdded, ItemRemoved


def on_item(envelope: Envelope[ItemAdded]) -> None:
    pass


class Projector:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def handle(self, envelope: Envelope[Any]) -> None:
        self.seen.append(envelope.event_type)


def test_decorator_returns_the_function_unchanged_and_names_it_by_module_path() -> None:
    bus = InMemoryEventBus()
    assert bus.subscribe(ItemAdded)(on_item) is on_item
    [sub] = bus.subscriptions()
    assert sub.name == "tests.unit.test_subscribe.on_item"
    assert sub.event_types == {"contract.item_added"}


def test_an_object_with_handle_can_subscribe_to_several_types() -> None:
    bus = InMemoryEventBus()
    projector = Projector()
    bus.subscribe(ItemAdded, "contract.item_removed", handler=projector)
    bus.publish(ItemAdded(sku="a", quantity=1))
    bus.publish(ItemRemoved(sku="a"))
    assert projector.seen == ["contract.item_added", "contract.item_removed"]
    assert bus.subscriptions()[0].name == "tests.unit.test_subscribe.Projector"


def test_subscribing_the_same_handler_again_adds_event_types() -> None:
    bus = InMemoryEventBus()
    bus.subscribe(ItemAdded)(on_item)
    bus.subscribe(ItemRemoved)(on_item)
    assert bus.subscriptions()[0].event_types == {"contract.item_added", "contract.item_removed"}
    assert [s.name for s in bus.subscriptions(ItemRemoved)] == ["tests.unit.test_subscribe.on_item"]


@pytest.mark.parametrize(
    "target, message",
    [
        (42, "callable"),
        (Projector, "is a class"),
        (lambda env: None, "lambda"),
    ],
)
def test_bad_handlers_are_refused_at_subscribe_time(target: object, message: str) -> None:
    with pytest.raises(SubscriptionError, match=message):
        InMemoryEventBus().subscribe(ItemAdded, handler=target)


def test_two_handlers_cannot_share_a_name() -> None:
    bus = InMemoryEventBus()
    bus.subscribe(ItemAdded, handler=Projector())
    with pytest.raises(SubscriptionError, match="already taken"):
        bus.subscribe(ItemAdded, handler=Projector())


def test_unknown_event_type_name_is_refused() -> None:
    with pytest.raises(UnknownEventType, match=re.escape("contract.nope")):
        InMemoryEventBus().subscribe("contract.nope")(on_item)


def test_subscribe_needs_an_event_type() -> None:
    with pytest.raises(SubscriptionError, match="at least one"):
        InMemoryEventBus().subscribe()(on_item)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_retries": -1}, "max_retries"),
        ({"retry_backoff": 0.5}, "whole seconds"),
        ({"retry_on": ("nope",)}, "exception classes"),
        ({"time_limit": 0}, "time_limit"),
        ({"retries": 3}, "unknown subscribe option"),
    ],
)
def test_bad_options_are_refused_with_the_option_named(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(SubscriptionError, match=message):
        InMemoryEventBus().subscribe(ItemAdded, **options)(on_item)


def test_celery_bus_refuses_a_backoff_cap_above_the_redis_visibility_timeout() -> None:
    # A retry waiting longer than the visibility timeout would be delivered twice.
    from celery import Celery

    from eventbus import EventBus

    app = Celery("t", broker="redis://127.0.0.1:6379/9", set_as_current=False)
    app.conf.broker_transport_options = {"visibility_timeout": 300}
    bus = EventBus(app)
    with pytest.raises(SubscriptionError, match=r"retry_backoff_max \(600s\) must stay below"):
        bus.subscribe(ItemAdded)(on_item)
    bus.subscribe(ItemAdded, retry_backoff_max=120)(on_item)
