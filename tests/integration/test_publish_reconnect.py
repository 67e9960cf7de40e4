"""A connection lost while a publish declares its queue: the event is sent, or PublishError.

kombu's ``Producer._publish`` takes the producer's channel, then declares the
message's queue with a retry of its own (``maybe_declare(retry=True)``). When
that declare loses the connection, kombu reconnects and revives the *queue*
on a new channel, closing the old one, and the publish goes on with the old,
closed channel. On Redis a closed channel has no connection: the publish
raised ``AttributeError: 'NoneType' object has no attribute 'client'``, an
error that is neither a :class:`~eventbus.PublishError` nor a sent event (the
chaos soak's publisher died of it after a Redis restart, seed 662659).

The fault is one connection error, injected into the declare on the real
broker; kombu's reconnection and everything after it are real.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import kombu.common
import pytest

from eventbus import PublishError

from .conftest import Env
from .helpers import OrderPlaced, Recorder, wait_for


class DeclareFault:
    """When armed, the next queue declaration loses its connection once."""

    def __init__(self, declare: Callable[..., Any]) -> None:
        self._declare = declare
        # kombu's ensure() names its wrapper after the function it retries.
        self.__name__ = declare.__name__
        self.__doc__ = declare.__doc__
        self.__module__ = declare.__module__
        self._lock = threading.Lock()
        self.armed = False
        self.fired = 0

    def __call__(self, entity: Any, channel: Any) -> Any:
        with self._lock:
            fire, self.armed = self.armed, False
        if fire:
            self.fired += 1
            # An OSError is a recoverable connection error of every kombu transport.
            raise ConnectionResetError("injected: the connection dropped during the declare")
        return self._declare(entity, channel)


@pytest.fixture
def declare_fault(monkeypatch: pytest.MonkeyPatch) -> Iterator[DeclareFault]:
    fault = DeclareFault(kombu.common._maybe_declare)
    monkeypatch.setattr(kombu.common, "_maybe_declare", fault)
    yield fault


@pytest.mark.parametrize("handlers", [1, 3], ids=["one-handler", "fan-out"])
def test_a_connection_lost_while_declaring_the_queue_does_not_break_publish(
    env: Env, declare_fault: DeclareFault, handlers: int
) -> None:
    # Given handlers of an event and a worker consuming their queue
    recorder = Recorder()
    names = [env.name(f"h{i}") for i in range(handlers)]
    for name in names:
        env.bus.subscribe(OrderPlaced, handler=recorder.handler(name), name=name)
    env.start_worker()

    # When the connection drops while the first publish declares the handler queue
    declare_fault.armed = True
    envelope = env.bus.publish(OrderPlaced(order_id="o-1", quantity=1))

    # Then publish returned (kombu reconnected) and every handler ran the event
    assert declare_fault.fired == 1, "the fault was not injected: no declare on this publish"
    wait_for(
        lambda: recorder.count() >= handlers,
        message=lambda: f"{recorder.count()}/{handlers} handler runs",
    )
    assert {call.event_id for call in recorder.calls()} == {str(envelope.event_id)}

    # And the next publish goes out on the same bus as usual
    env.bus.publish(OrderPlaced(order_id="o-2", quantity=1))
    wait_for(
        lambda: recorder.count() >= 2 * handlers,
        message=lambda: f"{recorder.count()}/{2 * handlers} handler runs",
    )


def test_a_batch_whose_channel_was_replaced_fails_with_publish_error(
    env: Env, declare_fault: DeclareFault
) -> None:
    # Given two handlers and a worker
    recorder = Recorder()
    names = [env.name(f"h{i}") for i in range(2)]
    for name in names:
        env.bus.subscribe(OrderPlaced, handler=recorder.handler(name), name=name)
    env.start_worker()

    # When the connection drops while a batch's first publish declares the queue
    declare_fault.armed = True
    raised: list[BaseException] = []
    with pytest.raises(PublishError) as whole, env.bus.batch():
        try:
            env.bus.publish(OrderPlaced(order_id="o-1", quantity=1))
        except Exception as exc:  # a caller that carries on
            raised.append(exc)

    # Then that publish and the block raised PublishError (the batch is the
    # caller's to publish again), nothing else
    assert declare_fault.fired == 1
    assert [type(exc) for exc in raised] in ([PublishError], []), raised
    assert "not sent" in str(whole.value) or "in a batch" in str(whole.value)

    # And the bus publishes again afterwards
    envelope = env.bus.publish(OrderPlaced(order_id="o-2", quantity=1))
    wait_for(
        lambda: (
            {c.event_id for c in recorder.calls()} >= {str(envelope.event_id)}
            and recorder.count() >= 2
        ),
        message=lambda: f"{recorder.count()} handler runs",
    )
