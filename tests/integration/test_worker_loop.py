"""A worker's event loop does not sleep on late acks it has queued (``internals/worker_loop.py``).

kombu's loop polls for up to 10 s with callbacks queued by its own thread
still waiting; in a ``--pool solo`` worker a handler's late ack is one of
them, and on RabbitMQ the broker sends nothing more until the prefetched
messages are acked: the worker stalled 10 s, 20 s... behind a queue it drains
in a fraction of a second.
"""

from __future__ import annotations

import pytest

from .conftest import Env
from .helpers import OrderPlaced, Recorder, wait_for

#: What this module tests is an optimisation: the stock-path stage skips it.
pytestmark = pytest.mark.optimization

#: Far less than the 10 s of one stall, far more than 20 no-op handler runs take.
PROMPT = 5.0


def test_a_solo_worker_drains_a_queue_without_stalling(env: Env) -> None:
    # Given 20 events waiting on the handler queue, and a solo worker taking
    # one message at a time (each run's ack lets the broker send the next)
    recorder = Recorder()
    env.bus.subscribe(OrderPlaced, name=env.name("h"), handler=recorder.handler("h"))
    env.declare_handler_queue()
    for n in range(20):
        env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))
    env.app.conf.worker_prefetch_multiplier = 1

    # When the worker starts
    env.start_worker(pool="solo")

    # Then it handles them all promptly
    wait_for(
        lambda: recorder.count() == 20,
        timeout=PROMPT,
        message=lambda: f"{recorder.count()}/20 runs",
    )
