"""A busy RabbitMQ worker acks finished messages together (``internals/acks.py``), losing none.

What a user sees: every handler run once, nothing left on the queue or
delivered again when the worker stops, retried and rejected messages settled
as before; the worker sent fewer ``basic.ack`` frames than messages.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Reject

from .conftest import Env
from .helpers import OrderPlaced, Recorder, wait_for

#: What this module tests is an optimisation: the stock-path stage skips it.
pytestmark = pytest.mark.optimization

EVENTS = 300


def task_channel_acks(worker: Any) -> Any:
    return worker.consumer.task_consumer.channel.eventbus_acks


def test_a_threads_worker_acks_runs_of_messages_together_and_loses_none(
    rabbitmq_env: Env,
) -> None:
    env = rabbitmq_env
    # Given 300 events waiting for two handlers
    recorder = Recorder()
    for label in ("a", "b"):
        env.bus.subscribe(OrderPlaced, name=env.name(label), handler=recorder.handler(label))
    env.declare_handler_queue()
    with env.bus.batch():
        for n in range(EVENTS):
            env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))

    # When a threads worker drains them
    worker = env.start_worker(pool="threads", concurrency=4)
    wait_for(
        lambda: recorder.count() == 2 * EVENTS,
        message=lambda: f"{recorder.count()}/{2 * EVENTS} runs",
    )

    # Then every message was acked, fewer frames than messages carried the acks
    acks = task_channel_acks(worker)
    wait_for(lambda: acks.acks == 2 * EVENTS, message=lambda: f"{acks.acks} acked")
    assert acks.frames < acks.acks, (acks.frames, acks.acks)
    # and nothing is left on the queue, nor runs again, once the worker stopped
    env._stack.close()  # stops the worker: an unacked message would go back to the queue
    assert env.queue_length() == 0
    assert set(recorder.pairs().values()) == {1}


def test_rejected_and_retried_messages_settle_as_before(rabbitmq_env: Env) -> None:
    env = rabbitmq_env
    # Given a handler that rejects every third event (back to the queue once), and
    # fails every fifth on its first run (a retry)
    recorder = Recorder()

    def fail(call: Any) -> BaseException | None:
        n = int(call.envelope.data.order_id.split("-")[1])
        runs = sum(1 for c in recorder.calls("h") if c.event_id == call.event_id)
        if n % 3 == 0 and runs == 1:
            return Reject("not now", requeue=True)
        if n % 5 == 0 and runs == 1:
            return RuntimeError("flaky")
        return None

    env.bus.subscribe(
        OrderPlaced,
        name=env.name("h"),
        handler=recorder.handler("h", fail=fail),
        max_retries=3,
        retry_backoff=1,
    )
    env.declare_handler_queue()
    with env.bus.batch():
        for n in range(60):
            env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))

    # When a threads worker handles them
    env.start_worker(pool="threads", concurrency=4)

    # Then each event ends handled: once, or twice when its first run asked for it
    def done() -> bool:
        return len(recorder.pairs()) == 60 and recorder.count() == 60 + 20 + 12 - 4

    wait_for(done, message=lambda: f"{recorder.count()} runs of {len(recorder.pairs())} events")
    env._stack.close()
    assert env.queue_length() == 0
    assert env.bus.dead_letter_store.count() == 0
