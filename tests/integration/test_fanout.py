"""Fan-out: one task message per subscribed handler, each handler runs once per event."""

from __future__ import annotations

from collections import Counter

from .conftest import Env
from .helpers import OrderPlaced, OrderShipped, Recorder, assert_stays, wait_for


def test_each_handler_runs_exactly_once_per_event(env: Env) -> None:
    # Given three handlers subscribed to one event type and a worker running 4 threads
    recorder = Recorder()
    handlers = [env.name(label) for label in ("audit", "mailer", "stats")]
    for name in handlers:
        env.bus.subscribe(OrderPlaced, handler=recorder.handler(name), name=name)
    env.start_worker(pool="threads", concurrency=4)

    # When five events are published
    envelopes = [env.bus.publish(OrderPlaced(order_id=f"o-{i}", quantity=i + 1)) for i in range(5)]

    # Then every (handler, event) pair ran exactly once, and nothing else ran
    expected = Counter((name, str(e.event_id)) for name in handlers for e in envelopes)
    wait_for(
        lambda: recorder.count() >= len(expected),
        message=lambda: f"{recorder.count()}/{len(expected)} handler runs",
    )
    assert_stays(
        lambda: recorder.count() == len(expected),
        message=lambda: f"{recorder.count()} runs, expected {len(expected)}",
    )
    assert recorder.pairs() == expected
    # And the handlers saw the data that was published
    seen = {(c.event_id, c.envelope.data.order_id) for c in recorder.calls(handlers[0])}
    assert seen == {(str(e.event_id), e.data.order_id) for e in envelopes}
    # And no message is left waiting on the handler queue, nothing was dead-lettered
    assert env.queue_length() == 0
    assert len(env.bus.dead_letters) == 0
    assert env.bus.published[OrderPlaced.event_type] == 5


def test_overlapping_subscribers_get_exactly_their_event_types(env: Env) -> None:
    # Given A on placed+shipped, B on placed only, C on shipped only
    recorder = Recorder()
    a, b, c = env.name("a"), env.name("b"), env.name("c")
    env.bus.subscribe(OrderPlaced, OrderShipped, handler=recorder.handler(a), name=a)
    env.bus.subscribe(OrderPlaced, handler=recorder.handler(b), name=b)
    env.bus.subscribe(OrderShipped, handler=recorder.handler(c), name=c)
    env.start_worker()

    # When two "placed" and two "shipped" events are published, interleaved
    placed = [env.bus.publish(OrderPlaced(order_id=f"o-{i}", quantity=1)) for i in range(2)]
    shipped = [env.bus.publish(OrderShipped(order_id=f"o-{i}", carrier="ups")) for i in range(2)]

    # Then each handler got exactly the events of its types, once each
    def ids(envelopes: list) -> set[str]:
        return {str(e.event_id) for e in envelopes}

    expected = Counter(
        [(a, i) for i in ids(placed) | ids(shipped)]
        + [(b, i) for i in ids(placed)]
        + [(c, i) for i in ids(shipped)]
    )
    wait_for(
        lambda: recorder.count() >= len(expected),
        message=lambda: f"{recorder.count()}/{len(expected)} handler runs",
    )
    assert_stays(
        lambda: recorder.count() == len(expected),
        message=lambda: f"{recorder.count()} runs, expected {len(expected)}",
    )
    assert recorder.pairs() == expected
    assert {call.event_type for call in recorder.calls(b)} == {OrderPlaced.event_type}
    assert {call.event_type for call in recorder.calls(c)} == {OrderShipped.event_type}
    assert env.queue_length() == 0


def test_a_worker_started_without_queues_also_consumes_the_handler_queues(env: Env) -> None:
    # Given a handler routed to a queue of its own, which the app's configuration
    # does not list, and a worker started without -Q
    recorder = Recorder()
    name = env.name("own_queue")
    own_queue = f"{env.queue}.own"
    env.bus.subscribe(OrderPlaced, handler=recorder.handler(name), name=name, queue=own_queue)
    env.extra_queues.append(own_queue)
    env.start_worker(pool="threads", concurrency=2, consume_all=True)

    # When an event is published, then that handler runs
    envelope = env.bus.publish(OrderPlaced(order_id="q-1", quantity=1))
    wait_for(lambda: recorder.count(name) == 1, message="the handler on its own queue")
    assert recorder.calls(name)[0].event_id == str(envelope.event_id)
