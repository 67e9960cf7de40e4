"""A state store (Redis) that cannot be used is an EventBusError that names it, everywhere.

Idempotency claims, ordering positions and the sequence numbers given at
publish live in the state Redis (``eventbus_redis_url``). When that URL is
wrong or the server is down, redis-py raises its own ``ConnectionError``,
``AuthenticationError`` or ``ValueError``; every public entry point raises
:class:`~eventbus.errors.StateStoreError` instead, whose message names the
store and the setting, the password masked:

* publish of an event that needs a sequence number (nothing is sent);
* a handler that is idempotent or ordered: the delivery is retried like any
  failure (it never ran the handler), whatever its ``retry_on`` says, and
  dead-lettered only when its retries are spent (replayable); once the store
  is back, a retry runs the handler;
* the CLI: one line on stderr, exit 1 (tests/unit/test_state_errors.py).

Runs on Redis (both transports) and RabbitMQ as the broker; the state store
is a closed port, a refused login on the shared Redis, or a private Redis
stopped and started again.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import signals

from eventbus import EventBusError, create_event
from eventbus.errors import StateStoreError
from tests.brokers import PrivateRedis
from tests.support import STATE_REDIS_URL

from .conftest import Env
from .helpers import OrderPlaced, Recorder, assert_stays, wait_for

MARK = f"st4te-{uuid.uuid4().hex[:8]}"  #: the password of every wrong state URL
#: Nothing listens on port 1: refused at once.
REFUSED = f"redis://eventbus:{MARK}@127.0.0.1:1/0?password={MARK}"
#: The shared Redis, with a login it refuses.
LOGIN = f"redis://eventbus-nobody:{MARK}@127.0.0.1:6379/9"


@pytest.fixture
def state_url(env: Env) -> Iterator[Any]:
    """Set the env's state URL for the test; the good one is back for its teardown."""

    def set_url(url: str) -> None:
        env.app.conf.eventbus_redis_url = url

    yield set_url
    env.app.conf.eventbus_redis_url = STATE_REDIS_URL


def assert_names_the_store(exc: BaseException, problem: str) -> None:
    text = str(exc)
    assert isinstance(exc, StateStoreError) and isinstance(exc, EventBusError), repr(exc)
    assert "eventbus_redis_url" in text, text
    assert problem in text, text
    chain: BaseException | None = exc
    while chain is not None:  # a traceback prints every error chained to it
        assert MARK not in str(chain), f"{type(chain).__name__}: {chain}"
        chain = chain.__cause__ or chain.__context__


@pytest.mark.parametrize(
    ("url", "problem"),
    [(REFUSED, "connection refused"), (LOGIN, "authentication failed")],
    ids=["refused", "login"],
)
def test_publish_of_an_ordered_event_raises_a_state_store_error(
    env: Env, state_url: Any, url: str, problem: str
) -> None:
    # Given an ordered handler, and a state store that cannot be used
    env.bus.subscribe(OrderPlaced, name=env.name("ordered"), handler=lambda e: None, ordered=True)
    state_url(url)
    # When an event of an aggregate is published (it needs a sequence number)
    with pytest.raises(EventBusError) as raised:
        env.bus.publish(OrderPlaced(order_id="o-1", quantity=1), aggregate_id="o-1")
    # Then the error is eventbus's, names the store and the problem, and nothing was sent
    assert_names_the_store(raised.value, problem)
    assert env.queue_length() == 0


class Retries:
    """Counts Celery's retries of one task (the task_retry signal)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.reasons: list[BaseException] = []
        self._lock = threading.Lock()

    def __call__(self, sender: Any = None, reason: Any = None, **_: Any) -> None:
        if getattr(sender, "name", None) == self.name:
            with self._lock:
                self.count += 1
                self.reasons.append(reason)

    def __enter__(self) -> Retries:
        signals.task_retry.connect(self, weak=False)
        return self

    def __exit__(self, *exc: object) -> None:
        signals.task_retry.disconnect(self)


@pytest.mark.parametrize("guarantee", ["idempotent", "ordered"])
def test_a_delivery_without_its_state_store_is_retried_then_dead_lettered(
    env: Env, state_url: Any, guarantee: str
) -> None:
    # Given an idempotent (or ordered) handler that retries only KeyError, a state
    # store that cannot be used, and an event that carries its sequence number
    recorder = Recorder()
    name = env.name("guarded")
    env.bus.subscribe(
        OrderPlaced,
        name=name,
        handler=recorder.handler(name),
        retry_on=(KeyError,),
        max_retries=2,
        retry_backoff=0,
        **{guarantee: True},
    )
    state_url(REFUSED)
    event = create_event(OrderPlaced, {"order_id": "o-1", "quantity": 1}, aggregate_id="o-1")
    envelope = env.bus.publish(event.model_copy(update={"sequence": 1}))
    with Retries(name) as retries:
        env.start_worker()
        # When the worker cannot reach the state store
        # Then the delivery is retried (a failure of the store, not of the handler), and once
        # its retries are spent it is one dead letter, replayable, naming the store
        wait_for(lambda: len(env.bus.dead_letters) == 1, timeout=30, message="the dead letter")
    (record,) = env.bus.dead_letters.list()
    assert retries.count == 2, retries.reasons
    assert (record.handler, record.attempts, record.event_id) == (name, 3, str(envelope.event_id))
    assert record.exception_type == "eventbus.errors.StateStoreError"
    assert "eventbus_redis_url" in record.exception_message
    assert MARK not in record.model_dump_json()
    assert record.replayable
    assert recorder.count(name) == 0  # the handler never ran without its guarantee


def test_a_delivery_runs_once_its_state_store_is_back(
    env: Env, state_url: Any, private_redis: PrivateRedis
) -> None:
    # Given an idempotent handler whose state store is a Redis of its own, stopped
    recorder = Recorder()
    name = env.name("idempotent")
    env.bus.subscribe(
        OrderPlaced,
        name=name,
        handler=recorder.handler(name),
        idempotent=True,
        max_retries=10,
        retry_backoff=1,
        retry_jitter=False,
    )
    state_url(private_redis.url)
    private_redis.stop()
    with Retries(name) as retries:
        env.start_worker()
        # When an event is published while the store is down
        env.bus.publish(OrderPlaced(order_id="o-1", quantity=1))
        wait_for(lambda: retries.count >= 1, timeout=15, message="a retry of the delivery")
        assert recorder.count(name) == 0
        assert isinstance(retries.reasons[0].exc, StateStoreError)  # type: ignore[attr-defined]
        # And the store comes back
        private_redis.start()
        # Then a retry runs the handler, once, and nothing is dead-lettered
        wait_for(lambda: recorder.count(name) == 1, timeout=30, message="the handler ran")
        assert_stays(lambda: recorder.count(name) == 1, duration=0.5)
    assert len(env.bus.dead_letters) == 0
