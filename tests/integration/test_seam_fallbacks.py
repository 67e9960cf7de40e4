"""Each private name taken away, a real worker on real brokers: Celery's path, or a refusal.

(Issue 12.)

For every name of the registry (:mod:`eventbus.celery.internals.reaches`)
the installed library loses it (:func:`tests.seam_support.take_away`), the
compatibility check runs afresh, and:

* an optimisation or fallback name: a real worker on Redis and on RabbitMQ
  (batched confirms: RabbitMQ only) still delivers every event, through
  Celery's own path (the feature is off), and the one warning names the name;
* a guarantee's name: the worker refuses to start with
  IncompatibleDependency naming it (the deep-headers guard and publish
  confirms: on RabbitMQ, where they apply);
* a name of eventbus's Redis transport: ``publish`` refuses with the error
  naming ``eventbus_redis_transport = "kombu"``; one worker shows the same
  refusal at start, and kombu's transport, when asked for, still delivers.

Marked ``optimization``: the stock-path stage (every optimisation off)
skips it; the optimisations' own switches are what it tests.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from eventbus import IncompatibleDependency
from eventbus.celery.internals import compat
from eventbus.celery.internals.reaches import REACHES, Reach
from tests.seam_support import take_away
from tests.support import require_broker

from .conftest import Env
from .helpers import OrderPlaced, Recorder, wait_for

pytestmark = pytest.mark.optimization

EVENTS = 4
DELIVERED = ("worker_loop", "task_events", "sent_events", "bound_queues")
DELIVERED += ("batched_confirms", "consume_handler_queues", "payload_allowance")
DELIVERED += ("redis_idle_wake",)
REFUSED = ("message_screen", "compression_guard", "dead_letter_before_ack")
AMQP_ONLY = ("batched_confirms", "deep_headers_guard", "publish_confirms")
REDIS_ONLY = ("redis_idle_wake",)


def cases(features: tuple[str, ...]) -> list[object]:
    params = []
    for reach in REACHES:
        if reach.feature not in features:
            continue
        for kind in ("redis", "rabbitmq"):
            if kind == "redis" and reach.feature in AMQP_ONLY:
                continue
            if kind == "rabbitmq" and reach.feature in REDIS_ONLY:
                continue
            params.append(
                pytest.param(
                    reach, kind, id=f"{kind}-{reach.target}", marks=getattr(pytest.mark, kind)
                )
            )
    return params


@pytest.fixture(autouse=True)
def fresh_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # (The stock-path stage sets EVENTBUS_OPTIMIZATIONS=0: these need them on.)
    monkeypatch.delenv(compat.OPTIMIZATIONS_ENV, raising=False)
    monkeypatch.delenv("EVENTBUS_TEST_REDIS_TRANSPORT", raising=False)
    compat.reset()
    yield
    compat.reset()


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as opened:
        yield opened


def subscribed(env: Env) -> Recorder:
    recorder = Recorder()
    for label in ("a", "b"):
        env.bus.subscribe(OrderPlaced, name=env.name(label), handler=recorder.handler(label))
    return recorder


@pytest.mark.parametrize(("reach", "kind"), cases(DELIVERED))
def test_without_the_name_the_worker_delivers_every_event_through_celerys_path(
    reach: Reach,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stack: ExitStack,
) -> None:
    # Given the name gone from the installed library
    how = take_away(reach, monkeypatch)
    env = Env(require_broker(kind), stack, "seam")
    env.app.conf.eventbus_redis_transport = "eventbus"
    recorder = subscribed(env)
    caplog.set_level(logging.WARNING, logger="eventbus")

    # When a worker runs and events are published
    env.start_worker(
        pool="threads", concurrency=2, consume_all=reach.feature == "consume_handler_queues"
    )
    for n in range(EVENTS):
        env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))

    # Then every event reaches both handlers
    wait_for(
        lambda: recorder.count() == 2 * EVENTS,
        message=lambda: f"{recorder.count()}/{2 * EVENTS} runs ({reach.target} {how})",
    )
    # through Celery's own path: the feature is off
    spec = compat.feature(reach.feature)
    on = (
        compat.optimising(env.app.conf, spec.key)
        if spec.kind == "optimisation"
        else compat.available(spec.key)
    )
    assert not on
    # and one warning named what was not found
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING
        and "differ from what these features reach" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert reach.target in warnings[0] and f"{reach.feature} off" in warnings[0]


@pytest.mark.parametrize(
    ("reach", "kind"), cases((*REFUSED, "deep_headers_guard", "publish_confirms"))
)
def test_without_a_guarantees_name_the_worker_refuses_to_start(
    reach: Reach, kind: str, monkeypatch: pytest.MonkeyPatch, stack: ExitStack
) -> None:
    # Given the name a guarantee needs gone from the installed library
    take_away(reach, monkeypatch)
    env = Env(require_broker(kind), stack, "seam")
    env.app.conf.eventbus_redis_transport = "eventbus"
    subscribed(env)

    # When its worker starts, Then it refuses, naming the name and the range
    with pytest.raises(IncompatibleDependency) as err:
        env.start_worker(pool="solo")
    assert reach.target in str(err.value) and "supports" in str(err.value)


REDIS_TRANSPORT_REACHES = [r for r in REACHES if r.feature == "redis_transport"]


@pytest.mark.redis
@pytest.mark.parametrize("reach", REDIS_TRANSPORT_REACHES, ids=lambda r: r.target)
def test_without_a_name_of_the_redis_transport_publish_refuses_naming_kombus(
    reach: Reach, monkeypatch: pytest.MonkeyPatch, stack: ExitStack
) -> None:
    take_away(reach, monkeypatch)
    env = Env(require_broker("redis"), stack, "seam")
    env.app.conf.eventbus_redis_transport = "eventbus"
    subscribed(env)
    with pytest.raises(IncompatibleDependency) as err:
        env.bus.publish(OrderPlaced(order_id="o-1", quantity=1))
    text = str(err.value)
    assert reach.target in text
    assert 'eventbus_redis_transport = "kombu"' in text and "EVENTBUS_REDIS_TRANSPORT=kombu" in text


@pytest.mark.redis
def test_the_redis_transport_refuses_at_worker_start_and_kombus_runs_when_asked_for(
    monkeypatch: pytest.MonkeyPatch, stack: ExitStack
) -> None:
    # Given kombu's redis Channel without the _brpop_start eventbus overrides
    (reach,) = [r for r in REDIS_TRANSPORT_REACHES if r.target.endswith("._brpop_start")]
    take_away(reach, monkeypatch)
    env = Env(require_broker("redis"), stack, "seam")
    env.app.conf.eventbus_redis_transport = "eventbus"
    recorder = subscribed(env)

    # When a worker starts, Then it refuses, naming the setting of kombu's transport
    with pytest.raises(IncompatibleDependency, match="eventbus_redis_transport"):
        env.start_worker(pool="solo")

    # And with that setting, kombu's transport delivers every event
    other = Env(require_broker("redis"), stack, "seam-kombu")
    other.app.conf.eventbus_redis_transport = "kombu"
    recorder = subscribed(other)
    other.start_worker(pool="threads", concurrency=2)
    for n in range(EVENTS):
        other.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))
    wait_for(lambda: recorder.count() == 2 * EVENTS, message=lambda: f"{recorder.count()} runs")
