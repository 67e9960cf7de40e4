"""Publishing when the broker is down: a PublishError, quickly, never a hang."""

from __future__ import annotations

import time
import uuid

import pytest

from eventbus import EventBus, PublishError

from .conftest import make_app
from .helpers import OrderPlaced, Recorder


def test_unreachable_broker_raises_publish_error(closed_broker_url: str) -> None:
    # Given a bus whose broker URL points at a port where nothing listens,
    # with a small publish retry policy
    queue = f"it.unreachable.{uuid.uuid4().hex[:12]}"
    app = make_app(
        closed_broker_url,
        default_queue=queue,
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.1,
            "interval_max": 0.1,
        },
    )
    try:
        bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")
        name = f"it.{queue}.handler"
        bus.subscribe(OrderPlaced, name=name, handler=Recorder().handler(name))

        # When an event is published
        started = time.monotonic()
        with pytest.raises(PublishError) as raised:
            bus.publish(OrderPlaced(order_id="o-1", quantity=1))
        elapsed = time.monotonic() - started

        # Then the publisher gets a PublishError within seconds, saying what was not sent
        assert elapsed < 5, f"publish took {elapsed:.1f}s to fail"
        assert "it.order.placed" in str(raised.value)
        assert raised.value.sent == ()
        assert raised.value.__cause__ is not None
        assert bus.published[OrderPlaced.event_type] == 0
    finally:
        app.close()
