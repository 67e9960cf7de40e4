"""Quorum queues on RabbitMQ: ``eventbus_queue_type = "quorum"``.

Handler queues and the DLQ are quorum queues; retries wait in RabbitMQ
(Celery's native delayed delivery), not in the worker; a message that kills
its worker process every time ends in the DLQ (reason ``delivery_limit``)
instead of being given out forever. The tests that start ``celery worker``
subprocesses (prefork) are marked ``faults``; their app is
:mod:`tests.integration.quorum_app`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import pytest
from celery import signals
from kombu import Connection, Exchange, Queue

from eventbus import ConfigurationError, PublishError, create_event
from eventbus.celery.deadletter.amqp import AmqpDeadLetterStore
from eventbus.errors import DeadLetterError
from tests.support import delete_queues, make_app, require_broker

from .conftest import Env
from .helpers import Call, OrderPlaced, Recorder, assert_stays, wait_for
from .quorum_app import HANDLER, QuorumConfig, QuorumProbe, build_bus, effects_client

pytestmark = pytest.mark.rabbitmq

ROOT = Path(__file__).resolve().parents[2]
#: The routing key of a message Celery's native delayed delivery held: 28 bits, then the key.
DELAYED_KEY = re.compile(r"^(?:[01]\.){28}(?P<key>.+)$")


class GatewayDown(ConnectionError):
    """A transient failure: retrying may help."""


@pytest.fixture
def quorum(request: pytest.FixtureRequest) -> Iterator[Env]:
    """The test's app and bus on RabbitMQ, with ``eventbus_queue_type = "quorum"``."""
    url = require_broker("rabbitmq")
    with ExitStack() as stack:
        label = request.node.originalname.removeprefix("test_")[:24]
        yield Env(url, stack, label, eventbus_queue_type="quorum")


def broker_queue_type(env: Env, queue: Queue) -> str:
    """The type of an existing queue, as the broker has it: ``classic`` or ``quorum``.

    ``queue`` is how eventbus declares it. The same declaration saying
    ``x-queue-type: classic`` is refused (406) by a quorum queue, which names its
    type; a classic queue takes it.
    """
    arguments = {**(queue.queue_arguments or {}), "x-queue-type": "classic"}
    with env.connection() as conn:
        conn.default_channel.queue_declare(queue.name, passive=True)  # it exists
        try:
            conn.channel().queue_declare(
                queue.name, durable=True, auto_delete=False, arguments=arguments
            )
        except conn.channel_errors as exc:
            found = re.search(r"'x-queue-type' .* current is '(\w+)'", str(exc))
            assert found, exc
            return found.group(1)
        return "classic"


def test_handler_queues_and_the_dlq_are_quorum_queues_and_fan_out(quorum: Env) -> None:
    # Given two handlers of one event on two quorum queues, and a worker
    recorder = Recorder()
    other_queue = f"{quorum.queue}.other"
    quorum.extra_queues.append(other_queue)
    first, second = quorum.name("first"), quorum.name("second")
    quorum.bus.subscribe(OrderPlaced, handler=recorder.handler(first), name=first)
    quorum.bus.subscribe(
        OrderPlaced, handler=recorder.handler(second), name=second, queue=other_queue
    )
    quorum.start_worker(pool="threads", concurrency=2)

    # When events are published
    envelopes = [quorum.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1)) for n in range(5)]

    # Then each handler ran each event once
    wait_for(lambda: recorder.count() >= 10, message=lambda: f"{recorder.count()}/10 runs")
    assert_stays(lambda: recorder.count() == 10, message=lambda: f"{recorder.count()} runs")
    assert set(recorder.pairs()) == {
        (name, str(e.event_id)) for name in (first, second) for e in envelopes
    }
    # And both handler queues and the DLQ are quorum queues on the broker
    quorum.bus.dead_letter_store.declare()
    store = quorum.bus.dead_letter_store
    assert isinstance(store, AmqpDeadLetterStore)
    for queue in (
        quorum.bus.handler_queue(quorum.queue),
        quorum.bus.handler_queue(other_queue),
        store.queue,
    ):
        assert isinstance(queue, Queue)
        assert broker_queue_type(quorum, queue) == "quorum", queue.name


def test_retries_with_backoff_wait_in_rabbitmq(quorum: Env) -> None:
    # Given a handler that fails twice per event, 1 s backoff doubling, no jitter
    recorder = Recorder()
    name = quorum.name("flaky")
    deliveries: list[tuple[str, str]] = []  # (exchange, routing key) of each run's message

    def fail_twice(call: Call) -> BaseException | None:
        attempt = sum(1 for c in recorder.calls(name) if c.event_id == call.event_id)
        return GatewayDown(f"timeout on attempt {attempt}") if attempt <= 2 else None

    def note_delivery(task: Any = None, **_: Any) -> None:
        if getattr(task, "name", None) == name:
            info = task.request.delivery_info or {}
            deliveries.append((str(info.get("exchange")), str(info.get("routing_key"))))

    signals.task_prerun.connect(note_delivery, weak=False)
    try:
        quorum.bus.subscribe(
            OrderPlaced,
            handler=recorder.handler(name, fail=fail_twice),
            name=name,
            max_retries=2,
            retry_backoff=1,
            retry_jitter=False,
        )
        quorum.start_worker(pool="threads", concurrency=2)

        # When one event is published
        envelope = quorum.bus.publish(OrderPlaced(order_id="o-1", quantity=1))

        # Then the handler is attempted three times, the third one succeeding
        wait_for(
            lambda: recorder.count(name) >= 3,
            timeout=30,
            message=lambda: f"{recorder.count(name)}/3 attempts",
        )
    finally:
        signals.task_prerun.disconnect(note_delivery)
    calls = recorder.calls(name)
    assert [c.event_id for c in calls] == [str(envelope.event_id)] * 3
    # And the waits grow: ~1 s, then ~2 s (RabbitMQ's delay queues hold whole seconds)
    first_gap, second_gap = calls[1].at - calls[0].at, calls[2].at - calls[1].at
    assert first_gap >= 0.9, f"first retry after {first_gap:.2f}s, expected ~1s"
    assert second_gap >= 1.8, f"second retry after {second_gap:.2f}s, expected ~2s"
    # And each retry came back through Celery's delay exchanges (celery_delayed_*),
    # its routing key prefixed with the countdown's bits: RabbitMQ held it, not the worker
    assert deliveries[0] == (quorum.queue, quorum.queue)
    for exchange, key in deliveries[1:]:
        assert exchange.startswith("celery_delayed_"), deliveries
        found = DELAYED_KEY.match(key)
        assert found and found.group("key") == quorum.queue, deliveries
    assert len(quorum.bus.dead_letters) == 0
    assert quorum.queue_length() == 0


def test_spent_retries_are_dead_lettered_to_the_quorum_dlq_and_replayed(quorum: Env) -> None:
    # Given a handler that fails until it is fixed, with one retry
    recorder = Recorder()
    name = quorum.name("broken")
    fixed = threading.Event()
    quorum.bus.subscribe(
        OrderPlaced,
        handler=recorder.handler(name, fail=lambda _: None if fixed.is_set() else GatewayDown()),
        name=name,
        max_retries=1,
        retry_backoff=1,
        retry_jitter=False,
    )
    quorum.start_worker(pool="threads", concurrency=2)

    # When an event is published
    envelope = quorum.bus.publish(OrderPlaced(order_id="o-dead", quantity=1))

    # Then after two attempts one record is in the DLQ, a quorum queue
    [record] = wait_for(lambda: quorum.bus.dead_letters.list(), timeout=30, message="the record")
    assert record.reason == "retries_exhausted"
    assert record.attempts == 2
    assert record.event_id == str(envelope.event_id)
    store = quorum.bus.dead_letter_store
    assert isinstance(store, AmqpDeadLetterStore)
    assert broker_queue_type(quorum, store.queue) == "quorum"
    # And listing it often (each browse returns it to the queue) never drops it
    for _ in range(8):
        assert [r.id for r in quorum.bus.dead_letters.list()] == [record.id]
    # And once the handler is fixed, replaying it runs the event again, once
    fixed.set()
    quorum.bus.dead_letters.replay(record.id)
    wait_for(lambda: recorder.count(name) == 3, message=lambda: f"{recorder.count(name)}/3 runs")
    assert recorder.calls(name)[-1].event_id == str(envelope.event_id)
    assert len(quorum.bus.dead_letters) == 0


def test_a_worker_keeps_its_prefetch_on_quorum_queues(quorum: Env) -> None:
    # Given a solo worker with a prefetch of 1 and a handler held mid-run
    quorum.app.conf.worker_prefetch_multiplier = 1
    release = threading.Event()
    recorder = Recorder()
    name = quorum.name("held")

    def held(call: Call) -> None:
        release.wait(30)

    quorum.bus.subscribe(OrderPlaced, handler=recorder.handler(name, fail=held), name=name)
    quorum.start_worker(pool="solo")

    # When three events are published while the first one runs
    for n in range(3):
        quorum.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))
    try:
        wait_for(lambda: recorder.count(name) == 1, message="the first run")
        # Then the worker holds only its prefetch (1): two wait in the queue
        # (global QoS, which quorum queues lack, would have been unlimited)
        assert_stays(
            lambda: quorum.queue_length() == 2,
            duration=1.0,
            message=lambda: f"{quorum.queue_length()} ready in the queue, expected 2",
        )
    finally:
        release.set()
    # And once it is released, the worker takes and handles the rest
    wait_for(lambda: recorder.count(name) == 3, message=lambda: f"{recorder.count(name)}/3 runs")


def test_ordered_deferrals_wait_a_whole_second_on_quorum_queues(quorum: Env) -> None:
    # Given an ordered handler
    recorder = Recorder()
    name = quorum.name("ordered")
    deferred: list[str] = []

    def note_retry(sender: Any = None, reason: Any = None, **_: Any) -> None:
        if getattr(sender, "name", None) == name:
            deferred.append(str(reason))

    signals.task_retry.connect(note_retry, weak=False)
    try:
        quorum.bus.subscribe(OrderPlaced, handler=recorder.handler(name), name=name, ordered=True)
        quorum.start_worker(pool="threads", concurrency=2)
        first, second = (
            create_event(
                OrderPlaced, {"order_id": f"o-{n}", "quantity": n}, aggregate_id="agg-1"
            ).model_copy(update={"sequence": n})
            for n in (1, 2)
        )

        # When an aggregate's sequence 2 arrives first, and is deferred (Celery's
        # delayed delivery cannot send its 0.25 s: it raised ValueError in the worker)
        quorum.bus.publish(second)
        wait_for(lambda: deferred, timeout=30, message="sequence 2 deferred")
        quorum.bus.publish(first)

        # Then both run, in order, and nothing is dead-lettered
        wait_for(lambda: recorder.count(name) == 2, timeout=30, message="both events")
    finally:
        signals.task_retry.disconnect(note_retry)
    assert [c.envelope.sequence for c in recorder.calls(name)] == [1, 2]
    # And each retry of sequence 2 was a deferral, not a failure spending a retry
    assert all("waiting for sequence" in reason for reason in deferred), deferred
    assert len(quorum.bus.dead_letters) == 0


# -- queues declared otherwise before ------------------------------------------------


def test_publishing_to_a_classic_queue_as_quorum_names_the_queue_and_the_setting(
    quorum: Env,
) -> None:
    # Given a handler queue that exists as a classic queue (eventbus before the switch)
    with quorum.connection() as conn:
        Queue(quorum.queue, Exchange(quorum.queue, type="direct"), routing_key=quorum.queue)(
            conn.default_channel
        ).declare()
    name = quorum.name("orders")
    quorum.bus.subscribe(OrderPlaced, handler=lambda envelope: None, name=name)

    # When the quorum bus publishes to it
    with pytest.raises(PublishError) as raised:
        quorum.bus.publish(OrderPlaced(order_id="o-1", quantity=1))

    # Then the error names the exchange (declared first), the setting, and what to do
    text = str(raised.value)
    assert f"exchange {quorum.queue!r}" in text
    assert "eventbus_queue_type" in text
    assert "received 'topic' but current is 'direct'" in text
    assert "delete" in text


def test_a_classic_dlq_is_not_taken_for_a_quorum_one(quorum: Env) -> None:
    # Given a DLQ that exists as a classic queue
    with quorum.connection() as conn:
        dlq = quorum.dead_letter_queue
        Queue(dlq, Exchange(dlq, type="direct"), routing_key=dlq, durable=True)(
            conn.default_channel
        ).declare()

    # When the quorum bus declares it, or reads it
    with pytest.raises(ConfigurationError) as declared:
        quorum.bus.dead_letter_store.declare()
    with pytest.raises(DeadLetterError) as listed:
        quorum.bus.dead_letters.list()

    # Then both errors name the queue, its type and the setting
    for text in (str(declared.value), str(listed.value)):
        assert f"queue {dlq!r}" in text
        assert "'x-queue-type'" in text
        assert "eventbus_queue_type" in text


# -- real `celery worker` subprocesses (prefork) ---------------------------------------


class Worker:
    """``celery -A tests.integration.quorum_app worker`` (prefork) in a process group of its own."""

    def __init__(self, config: QuorumConfig, log: Path, *, concurrency: int = 2) -> None:
        own = ("EVENTBUS_", "CELERY_")  # the test's config only
        environ = {k: v for k, v in os.environ.items() if not k.startswith(own)}
        environ.update(config.environ(), PYTHONPATH=str(ROOT))
        self.log_path = log
        command = [
            sys.executable, "-m", "celery", "-A", "tests.integration.quorum_app", "worker",
            "--pool=prefork", f"--concurrency={concurrency}", "-Q", config.queue,
            "-n", f"{log.stem}@%h", "--loglevel=INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log()}")
        return " ready." in self.log()

    def kill(self) -> None:
        """SIGKILL the whole group (main process and pool): the figures are taken."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def land_waiting_retries(app: Any, queue: str) -> None:
    """Let retries still waiting in Celery's delay queues land in ``queue`` before it goes.

    The delay queues are the broker's, shared by every app on the vhost, and
    dead-letter at least once: a retry whose queue is gone stays there, and
    enough of them hold up every later retry (README, "Limits, stated"). A test
    that failed may leave some: wait until ``queue`` has not grown for longer
    than a retry waits (3 s), at most 30 s.
    """
    deadline = time.monotonic() + 30
    last, since = -1, time.monotonic()
    with Connection(app.conf.broker_url, connect_timeout=3) as conn:
        channel = conn.channel()
        while time.monotonic() < deadline and time.monotonic() - since < 4:
            try:
                _, count, _ = channel.queue_declare(queue, passive=True)
            except conn.channel_errors:
                return  # never declared
            if count != last:
                last, since = count, time.monotonic()
            time.sleep(0.2)  # poll


@pytest.fixture
def quorum_config(request: pytest.FixtureRequest) -> Iterator[QuorumConfig]:
    """Queue names and a Redis key prefix of the test's own; queues and keys removed after."""
    url = require_broker("rabbitmq")
    require_broker("redis")
    uid = uuid.uuid4().hex[:10]
    label = request.node.originalname.removeprefix("test_")[:20]
    config = QuorumConfig(
        queue=f"it.q.{label}.{uid}", dead_letter_queue=f"it.q.{label}.{uid}.dlq",
        prefix=f"it.quorum.{uid}:", delivery_limit=2,
    )  # fmt: skip
    failed_before = request.session.testsfailed
    yield config
    app = make_app(url)
    if request.session.testsfailed > failed_before:
        land_waiting_retries(app, config.queue)
    delete_queues(app, config.queue, config.dead_letter_queue)
    app.close()
    client = effects_client()
    keys = list(client.scan_iter(match=f"{config.prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """Start worker subprocesses for a test (waited for until ready); killed after."""
    workers: list[Worker] = []

    def start(config: QuorumConfig, *, concurrency: int = 2) -> Worker:
        worker = Worker(config, tmp_path / f"quorum{len(workers)}.log", concurrency=concurrency)
        workers.append(worker)
        wait_for(worker.ready, timeout=60, message=lambda: f"worker ready\n{worker.log()}")
        return worker

    yield start
    for worker in workers:
        worker.kill()


def counts(config: QuorumConfig, what: str) -> dict[str, int]:
    """The handler's counts by event id in Redis: ``attempts`` or ``handled``."""
    client = effects_client()
    try:
        raw = client.hgetall(f"{config.prefix}{what}")
    finally:
        client.close()
    return {key.decode(): int(value) for key, value in raw.items()}


@pytest.mark.faults
def test_a_message_that_kills_its_worker_every_time_ends_in_the_dlq(
    quorum_config: QuorumConfig, start_worker: Callable[..., Worker]
) -> None:
    # Given a prefork worker on a quorum queue with a delivery limit of 2
    bus = build_bus(quorum_config)
    worker = start_worker(quorum_config)
    main_pid = worker.process.pid

    # When an event whose handler SIGKILLs its pool process every time is published,
    # and good events after it
    poison = bus.publish(QuorumProbe(n=0, kill=True))
    good = [bus.publish(QuorumProbe(n=n)) for n in range(1, 6)]

    # Then it ran limit + 1 = 3 times, and RabbitMQ dead-lettered it: one record,
    # reason delivery_limit, listed by `eventbus dlq list`
    [record] = wait_for(
        lambda: bus.dead_letters.list(), timeout=60,
        message=lambda: f"the record; attempts={counts(quorum_config, 'attempts')}\n{worker.log()}",
    )  # fmt: skip
    assert record.reason == "delivery_limit"
    assert record.event_id == str(poison.event_id)
    assert record.handler == HANDLER
    assert record.queue == quorum_config.queue
    assert "delivery_limit" in record.exception_message
    assert counts(quorum_config, "attempts")[str(poison.event_id)] == 3
    listed = subprocess.run(
        [sys.executable, "-m", "eventbus.cli", "-A", "tests.integration.quorum_app",
         "dlq", "list", "--json"],
        cwd=ROOT, env={**os.environ, **quorum_config.environ(), "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    [line] = listed.stdout.splitlines()
    assert json.loads(line)["reason"] == "delivery_limit"
    assert json.loads(line)["event_id"] == str(poison.event_id)
    # And the worker (its main process) kept running and handled every other event
    wait_for(
        lambda: len(counts(quorum_config, "handled")) == len(good),
        message=lambda: f"handled {counts(quorum_config, 'handled')}",
    )
    assert set(counts(quorum_config, "handled")) == {str(e.event_id) for e in good}
    assert worker.process.poll() is None and worker.process.pid == main_pid
    assert worker.log().count("exited with 'signal 9 (SIGKILL)'") == 3
    # And nothing more: the record stays one, the poison is not run again
    assert_stays(lambda: counts(quorum_config, "attempts")[str(poison.event_id)] == 3)
    assert len(bus.dead_letters) == 1


def test_a_worker_on_a_classic_queue_set_to_quorum_stops_naming_the_setting(
    quorum_config: QuorumConfig, tmp_path: Path
) -> None:
    # Given a handler queue that exists as a classic queue
    with Connection(require_broker("rabbitmq"), connect_timeout=3) as conn:
        name = quorum_config.queue
        Queue(name, Exchange(name, type="direct"), routing_key=name, durable=True)(
            conn.default_channel
        ).declare()

    # When a worker of the quorum app starts on it
    worker = Worker(quorum_config, tmp_path / "mismatch.log", concurrency=1)
    try:
        # Then it stops, and its log says which queue, which setting, and what to do
        wait_for(lambda: worker.process.poll() is not None, timeout=60, message="worker to stop")
    finally:
        worker.kill()
    log = worker.log()
    assert worker.process.returncode != 0, log
    [line] = [ln for ln in log.splitlines() if ln.startswith("eventbus: this worker cannot")]
    assert f"exchange {name!r}" in line, line
    assert "eventbus_queue_type" in line and "delete" in line, line


#: Events of the retries test, each failing its first two attempts (retried 1 s later).
RETRIED_EVENTS = 1000


@pytest.mark.faults
def test_a_thousand_events_through_two_retries_each_lose_none(
    quorum_config: QuorumConfig,
    start_worker: Callable[..., Worker],
    figure: Callable[[str], str],
) -> None:
    # celery/celery#9867: on quorum queues, retries through Celery's delay queues
    # (dead-lettered from level to level) were dropped as a dead-letter cycle.
    # Given two prefork workers on a quorum queue
    bus = build_bus(quorum_config)
    workers = [start_worker(quorum_config, concurrency=3) for _ in range(2)]
    started = time.monotonic()

    # When 1,000 events are published, each failing its first two attempts
    with bus.batch():
        events = [bus.publish(QuorumProbe(n=n, fails=2)) for n in range(RETRIED_EVENTS)]

    # Then every event is handled, after exactly two retries
    def progress() -> str:
        attempts = counts(quorum_config, "attempts")
        return (
            f"handled {len(counts(quorum_config, 'handled'))}/{RETRIED_EVENTS}, "
            f"attempts {sum(attempts.values())}\n" + "\n".join(w.log()[-2000:] for w in workers)
        )

    wait_for(
        lambda: len(counts(quorum_config, "handled")) >= RETRIED_EVENTS,
        timeout=180, interval=0.5, message=progress,
    )  # fmt: skip
    took = time.monotonic() - started
    attempts, handled = counts(quorum_config, "attempts"), counts(quorum_config, "handled")
    retried = sum(attempts.values()) - len(attempts)
    lost = sum(1 for e in events if str(e.event_id) not in handled)
    figure(
        f"quorum-retries: events={len(events)} retried={retried} handled={len(handled)} lost={lost}"
    )
    figure(f"quorum-retries: 2 workers x 3 prefork processes, {took:.1f}s from the first publish")
    assert lost == 0
    assert retried == 2 * len(events), f"{retried} retries: some attempt ran twice"
    assert all(count == 1 for count in handled.values())
    assert len(bus.dead_letters) == 0
