"""Publisher confirms: on RabbitMQ an event's messages are confirmed by the broker, once per event.

A confirmed publish has returned only after the broker took every message;
a message the broker refuses (here: a queue that rejects every publish) is
a ``PublishError``. eventbus puts its own channels in confirm mode, not the
whole connection: a ``--pool threads`` worker sending task events keeps
running. On Redis nothing changes.

This module is also the app of the thread-pool worker subprocess
(``celery -A tests.integration.test_publish_confirms worker``), configured
from ``EVENTBUS_CONFIRMS_TEST_*`` environment variables.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import amqp
import pytest
from amqp import spec
from kombu import Exchange, Queue

from eventbus import DeadLetter, Envelope, EventBus, PublishError
from eventbus.celery.internals import compat
from eventbus.celery.internals.confirms import PublishNotConfirmed
from tests.support import delete_queues, make_app, require_broker

from .conftest import Env
from .helpers import OrderPlaced, OrderShipped, Recorder, wait_for

ROOT = Path(__file__).resolve().parents[2]


def trace_wire(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What py-amqp channels do from now on, in order: "publish" and "wait" (for confirms).

    A publish is traced where py-amqp sends it, under any wrapper of
    ``basic_publish`` (eventbus counts a channel's publishes with one).
    """
    trace: list[str] = []
    send_method, wait = amqp.Channel.send_method, amqp.Channel.wait

    def traced_send_method(self: Any, sig: Any, *args: Any, **kwargs: Any) -> Any:
        if sig == spec.Basic.Publish:
            trace.append("publish")
        return send_method(self, sig, *args, **kwargs)

    def traced_wait(self: Any, method: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(method, list) and spec.Basic.Ack in method:
            trace.append("wait")
        return wait(self, method, *args, **kwargs)

    monkeypatch.setattr(amqp.Channel, "send_method", traced_send_method)
    monkeypatch.setattr(amqp.Channel, "wait", traced_wait)
    return trace


def assert_each_publish_waited(trace: list[str]) -> None:
    """Celery's stock path (batched confirms off): py-amqp waits after every publish."""
    assert trace and trace[-1] == "wait", trace
    assert all(trace[i + 1] == "wait" for i, op in enumerate(trace[:-1]) if op == "publish"), trace


def close_pooled_connection(app: Any) -> None:
    """Close the connection the app's next publish takes: it connects anew.

    kombu pools connections per URL and transport options, across apps:
    without this, a test's app may publish on an earlier test's channel.
    """
    with app.producer_or_acquire() as producer:
        producer.connection.close()


def subscribe_three(env: Env) -> None:
    for short in ("audit", "mailer", "stats"):
        env.bus.subscribe(OrderPlaced, name=env.name(short), handler=Recorder().handler(short))


@pytest.mark.optimization
@pytest.mark.rabbitmq
def test_an_event_is_confirmed_once_after_all_its_messages(
    rabbitmq_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = rabbitmq_env
    # Given three handlers of one event type, on a bus that has not connected yet
    subscribe_three(env)
    close_pooled_connection(env.app)

    # When two events are published
    trace = trace_wire(monkeypatch)
    env.bus.publish(OrderPlaced(order_id="o-1", quantity=1))
    first, trace[:] = trace[:], []
    env.bus.publish(OrderPlaced(order_id="o-2", quantity=1))

    # Then each event's 3 task messages and its task-sent events (one
    # message) went out first, then the publisher waited for the broker's
    # confirms: once for all of them, not per message (the Acks may come in a
    # few frames, one read each), the first event on the new connection included
    for event in (first, trace):
        assert event[:4] == ["publish"] * 4, event
        assert event[4:] and set(event[4:]) == {"wait"}, event
    # And the 6 handler messages are on the handler queue
    wait_for(lambda: env.queue_length() == 6, message=lambda: f"{env.queue_length()} queued")
    # And no connection-wide confirm_publish was set for it
    assert "confirm_publish" not in env.app.conf.broker_transport_options


@pytest.mark.optimization
@pytest.mark.rabbitmq
def test_an_events_polls_are_left_to_its_wait(
    rabbitmq_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = rabbitmq_env
    # Given three handlers, on a bus that has published (its channel is in confirm mode)
    subscribe_three(env)
    close_pooled_connection(env.app)
    env.bus.publish(OrderPlaced(order_id="o-1", quantity=1))
    reads: list[float | None] = []  # the timeout of every frame read on any connection
    blocking_read = amqp.Connection.blocking_read

    def traced_read(connection: Any, timeout: float | None = None) -> Any:
        reads.append(timeout)
        return blocking_read(connection, timeout)

    monkeypatch.setattr(amqp.Connection, "blocking_read", traced_read)

    # When an event is published
    trace = trace_wire(monkeypatch)
    env.bus.publish(OrderPlaced(order_id="o-2", quantity=1))

    # Then py-amqp's poll before each of its 4 messages read nothing (timeout
    # 0); the wait for the confirms that followed them read every frame
    assert trace[:4] == ["publish"] * 4, trace
    assert reads and 0 not in reads, reads
    wait_for(lambda: env.queue_length() == 6, message=lambda: f"{env.queue_length()} queued")

    # And outside an event py-amqp polls as it does: a plain task and its
    # task-sent event, through the same pooled producer, poll once each
    reads[:] = []
    env.app.send_task(env.name("plain"), queue=env.queue)
    assert reads == [0, 0]
    with env.app.producer_or_acquire() as producer:
        assert "drain_events" not in vars(producer.connection.connection)


@pytest.mark.rabbitmq
def test_an_events_messages_go_out_in_one_socket_write(
    rabbitmq_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = rabbitmq_env
    # Given three handlers, on a bus that has published (connected, queues declared)
    subscribe_three(env)
    env.bus.publish(OrderPlaced(order_id="o-1", quantity=1))
    with env.app.producer_or_acquire() as producer:
        transport = producer.connection.connection.transport
    writes: list[int] = []
    send = transport._write  # the socket's sendall

    def counted(data: Any) -> Any:
        writes.append(len(data))
        return send(data)

    monkeypatch.setattr(transport, "_write", counted)

    # When an event is published
    env.bus.publish(OrderPlaced(order_id="o-2", quantity=1))

    # Then its 3 task messages and its task-sent events went out in one
    # write (Celery's and py-amqp's own path: a write per message and per event)
    assert len(writes) == (1 if compat.optimizations_on(env.app.conf) else 6), writes
    # And the broker has all 6 handler messages
    wait_for(lambda: env.queue_length() == 6, message=lambda: f"{env.queue_length()} queued")


@pytest.mark.rabbitmq
@pytest.mark.parametrize("batched", [None, False], ids=["as-set", "stock-path"])
@pytest.mark.parametrize("connected", [False, True], ids=["new-connection", "connected"])
def test_a_message_the_broker_nacks_is_a_publish_error(
    connected: bool, batched: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a handler whose queue RabbitMQ refuses every message for (its own
    # declaration: no dead-letter exchange), and a second handler's queue
    url = require_broker("rabbitmq")
    full, other = (f"it.nack.{uuid.uuid4().hex[:12]}{suffix}" for suffix in ("", ".ok"))
    refusing = Queue(
        full,
        Exchange(full, type="direct"),
        routing_key=full,
        queue_arguments={"x-max-length": 0, "x-overflow": "reject-publish"},
    )
    app = make_app(
        url,
        eventbus_broker_dead_lettering=False,
        task_queues=[refusing],
        eventbus_optimizations=batched,  # None: EVENTBUS_OPTIMIZATIONS decides
    )
    try:
        bus = EventBus(app, default_queue=other, dead_letter_queue=f"{other}.dlq")
        bus.subscribe(OrderPlaced, name=f"{full}.h", handler=lambda e: None, queue=full)
        bus.subscribe(OrderShipped, name=f"{other}.h", handler=lambda e: None)
        if connected:  # the publisher's channel is in confirm mode already
            for n in range(2):
                bus.publish(OrderShipped(order_id=f"o-{n}", carrier="ups"))
        else:
            close_pooled_connection(app)

        # When an event for the refusing queue is published
        trace = trace_wire(monkeypatch)
        with pytest.raises(PublishError) as raised:
            bus.publish(OrderPlaced(order_id="o-1", quantity=1))

        # Then the publisher gets a PublishError, caused by the broker's nack
        assert isinstance(raised.value.__cause__, PublishNotConfirmed)
        assert "nacked" in str(raised.value)
        assert bus.published[OrderPlaced.event_type] == 0
        if compat.optimizations_on(app.conf):
            # (the task message and its task-sent event first, then the wait that hears the nack)
            assert trace[:3] == ["publish", "publish", "wait"], trace
        else:  # (py-amqp's own: the task message, then its wait hears the nack)
            assert trace[:2] == ["publish", "wait"], trace
    finally:
        app.close()
        delete_queues(app, full, other, f"{other}.dlq")


@pytest.mark.rabbitmq
def test_a_dead_letter_write_is_confirmed(
    rabbitmq_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = rabbitmq_env
    # Given a bus and two dead letters to keep
    name = env.name("h")
    env.bus.subscribe(OrderPlaced, name=name, handler=lambda e: None)
    records = [
        DeadLetter(
            handler=name,
            reason="retries_exhausted",
            attempts=3,
            exception_type="ValueError",
            exception_message=f"boom {n}",
        )
        for n in range(2)
    ]

    for record in records:
        # When a record is written to the dead-letter store
        trace = trace_wire(monkeypatch)
        env.bus.dead_letter_store.append(record)

        # Then the record and its task-sent event went out, then the broker's confirm was awaited
        if compat.optimizations_on(env.app.conf):
            assert trace[:2] == ["publish"] * 2, trace
            assert trace[2:] and set(trace[2:]) == {"wait"}, trace
        else:
            assert_each_publish_waited(trace)
        monkeypatch.undo()

    # And the records are in the dead-letter queue
    assert [r.id for r in env.bus.dead_letters] == [r.id for r in records]


@pytest.mark.rabbitmq
def test_confirms_turned_off_are_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a bus on RabbitMQ whose app opts out of publisher confirms
    url = require_broker("rabbitmq")
    queue = f"it.noconfirm.{uuid.uuid4().hex[:12]}"
    app = make_app(url, eventbus_publish_confirms=False)
    try:
        bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")
        for short in ("audit", "mailer"):
            bus.subscribe(OrderPlaced, name=f"{queue}.{short}", handler=lambda e: None)
        close_pooled_connection(app)

        # When events are published
        trace = trace_wire(monkeypatch)
        for n in range(2):
            bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))

        # Then nothing waited for the broker (per event: 2 task messages, 1 of
        # task-sent events; on Celery's stock path one task-sent event each)
        per_event = 3 if compat.optimizations_on(app.conf) else 4
        assert trace == ["publish"] * 2 * per_event
    finally:
        app.close()
        delete_queues(app, queue, f"{queue}.dlq")


@pytest.mark.optimization
@pytest.mark.rabbitmq
def test_other_publishes_on_the_channel_do_not_wait_and_keep_the_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a bus on RabbitMQ that has published (its pooled channel is in
    # confirm mode), with a short confirm timeout: a wrong count would fail fast
    url = require_broker("rabbitmq")
    queue = f"it.outside.{uuid.uuid4().hex[:12]}"
    app = make_app(url, eventbus_confirm_timeout=2)
    try:
        bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")
        for short in ("audit", "mailer"):
            bus.subscribe(OrderPlaced, name=f"{queue}.{short}", handler=lambda e: None)
        bus.publish(OrderPlaced(order_id="o-1", quantity=1))

        # When the application sends plain tasks through the same pooled
        # producer (kombu's pool hands out the last one released)
        trace = trace_wire(monkeypatch)
        for _ in range(3):
            app.send_task("it.outside.plain", queue=queue)

        # Then they are not waited for
        assert trace == ["publish"] * 6
        # And the next events are confirmed: their tags follow the plain ones
        for n in range(2):
            trace[:] = []
            bus.publish(OrderPlaced(order_id=f"o-{n + 2}", quantity=1))
            assert trace[:3] == ["publish"] * 3, trace
            assert trace[3:] and set(trace[3:]) == {"wait"}, trace
        assert bus.published[OrderPlaced.event_type] == 3
    finally:
        app.close()
        delete_queues(app, queue, f"{queue}.dlq")


@pytest.mark.optimization
@pytest.mark.rabbitmq
@pytest.mark.parametrize("first", ["event", "plain-task"])
def test_an_applications_connection_wide_confirms_are_kept(
    first: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an app that set kombu's connection-wide confirm_publish itself
    url = require_broker("rabbitmq")
    queue = f"it.appconfirm.{uuid.uuid4().hex[:12]}"
    app = make_app(url, broker_transport_options={"confirm_publish": True})
    try:
        bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")
        for short in ("audit", "mailer"):
            bus.subscribe(OrderPlaced, name=f"{queue}.{short}", handler=lambda e: None)
        close_pooled_connection(app)
        trace = trace_wire(monkeypatch)

        if first == "plain-task":
            # When a plain task goes first, py-amqp puts the channel in
            # confirm mode and confirms it on its own
            app.send_task("it.appconfirm.plain", queue=queue)
            assert trace == ["publish", "wait", "publish", "wait"]
            # Then an event's first message is confirmed on its own (its Ack
            # tells the broker's count), the other two in one wait
            trace[:] = []
            bus.publish(OrderPlaced(order_id="o-0", quantity=1))
            assert trace[:2] == ["publish", "wait"], trace
            assert trace[2:4] == ["publish"] * 2, trace
            assert trace[4:] and set(trace[4:]) == {"wait"}, trace

        # When events are published
        for n in range(2):
            trace[:] = []
            bus.publish(OrderPlaced(order_id=f"o-{n + 1}", quantity=1))
            # Then each is confirmed once after all its messages
            assert trace[:3] == ["publish"] * 3, trace
            assert trace[3:] and set(trace[3:]) == {"wait"}, trace

        # And the application's own publishes are still confirmed one by one
        trace[:] = []
        app.send_task("it.appconfirm.plain", queue=queue)
        assert trace == ["publish", "wait", "publish", "wait"]
        assert app.conf.broker_transport_options == {"confirm_publish": True}
    finally:
        app.close()
        delete_queues(app, queue, f"{queue}.dlq")


@pytest.mark.rabbitmq
def test_an_event_published_across_a_reconnect_is_still_confirmed(
    rabbitmq_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = rabbitmq_env
    # Given a bus that has published, whose pooled connection then drops
    # (kombu finds out on the next write, and reconnects on a new channel)
    for short in ("audit", "mailer"):
        env.bus.subscribe(OrderPlaced, name=env.name(short), handler=lambda e: None)
    env.bus.publish(OrderPlaced(order_id="o-1", quantity=1))
    with env.app.producer_or_acquire() as producer:
        producer.connection.connection.sock.shutdown(socket.SHUT_RDWR)

    # When an event is published
    trace = trace_wire(monkeypatch)
    env.bus.publish(OrderPlaced(order_id="o-2", quantity=1))

    # Then publish returned only after a wait for the broker's confirms
    # that followed its last message (a message sent on the new channel,
    # outside confirm mode, made the event go out again: at-least-once)
    last = len(trace) - 1 - trace[::-1].index("publish")
    assert "wait" in trace[last:], trace
    # And both handlers' messages of both events are on the queue (maybe twice)
    wait_for(lambda: env.queue_length() >= 4, message=lambda: f"{env.queue_length()} queued")


@pytest.mark.redis
@pytest.mark.parametrize("configured", [False, True], ids=["default", "confirm_publish"])
def test_redis_publishing_is_unchanged(configured: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a bus on Redis with three handlers; confirm_publish set or not:
    # Redis ignores it, eventbus does not add it
    with ExitStack() as stack:
        env = Env(require_broker("redis"), stack, "confirms.redis")
        assert "confirm_publish" not in env.app.conf.broker_transport_options
        if configured:
            env.app.conf.broker_transport_options = {"confirm_publish": True}
        subscribe_three(env)

        # When an event is published
        trace = trace_wire(monkeypatch)
        env.bus.publish(OrderPlaced(order_id="o-1", quantity=1))

        # Then its three messages are on the queue, and no AMQP channel was involved
        wait_for(lambda: env.queue_length() == 3, message=lambda: f"{env.queue_length()} queued")
        assert trace == []


# -- a --pool threads worker with task events -------------------------------------

WORKER_APP = "tests.integration.test_publish_confirms"  #: this module, as the worker imports it
WORKER_HANDLERS = ("audit", "mailer", "shipper")


def record_run(runs: Path, label: str, envelope: Envelope[Any]) -> None:
    """Append one line per handler run; one small O_APPEND write is atomic between threads."""
    fd = os.open(runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{label} {envelope.event_id}\n".encode())
    finally:
        os.close(fd)


def subscribe_worker_handlers(bus: EventBus, queue: str, downstream: str, runs: Path) -> None:
    """Three handlers of OrderPlaced; "shipper" publishes an OrderShipped (confirmed) first.

    OrderShipped's handler lives on ``downstream``, a queue the worker does
    not consume: its messages wait there to be counted.
    """

    def audit(envelope: Envelope[OrderPlaced]) -> None:
        record_run(runs, "audit", envelope)

    def mailer(envelope: Envelope[OrderPlaced]) -> None:
        record_run(runs, "mailer", envelope)

    def shipper(envelope: Envelope[OrderPlaced]) -> None:
        bus.publish(OrderShipped(order_id=envelope.data.order_id, carrier="post"))
        record_run(runs, "shipper", envelope)

    for handler in (audit, mailer, shipper):
        bus.subscribe(OrderPlaced, name=f"{queue}.{handler.__name__}", handler=handler)
    bus.subscribe(OrderShipped, name=f"{downstream}.h", handler=lambda e: None, queue=downstream)


@contextmanager
def threads_worker(env: Env, downstream: str, runs: Path, log: Path) -> Iterator[Any]:
    """``celery worker --pool threads --concurrency 4`` with task events, in a process group."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTBUS_", "CELERY_"))}
    environ.update(
        EVENTBUS_CONFIRMS_TEST_BROKER=env.broker_url,
        EVENTBUS_CONFIRMS_TEST_QUEUE=env.queue,
        EVENTBUS_CONFIRMS_TEST_DLQ=env.dead_letter_queue,
        EVENTBUS_CONFIRMS_TEST_DOWNSTREAM=downstream,
        EVENTBUS_CONFIRMS_TEST_RUNS=str(runs),
        PYTHONPATH=str(ROOT),
    )
    command = [
        sys.executable, "-m", "celery", "-A", WORKER_APP, "worker",
        "--pool=threads", "--concurrency=4", "-Q", env.queue, "-n", f"confirms-{env.uid}@%h",
        "--loglevel=INFO", "--without-heartbeat", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        # Killed, not stopped: an idle worker without a heartbeat would take
        # seconds to notice a SIGTERM, and a hung one never would. What it
        # has not acked goes with the test's queues.
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its whole process group
        proc.wait(timeout=10)


def thread_dump(proc: Any, log: Path) -> str:
    """Where each thread of a (hung) worker stands: Celery's SIGUSR1 handler logs the stacks."""
    if proc.poll() is not None:
        return f"(the worker exited with {proc.returncode})"
    start = log.stat().st_size
    os.kill(proc.pid, signal.SIGUSR1)

    sizes: list[int] = []

    def dumped() -> str:
        # Written at once by the handler: done when it has stacks and stopped growing.
        with log.open("rb") as read:
            read.seek(start)
            text = read.read().decode(errors="replace")
        sizes.append(len(text))
        return text if "LOCAL VARIABLES" in text and sizes[-3:] == [len(text)] * 3 else ""

    try:
        dump = wait_for(dumped, timeout=5, interval=0.1, message="a thread dump")
        # The stacks only: each thread's local variables follow its stack.
        return re.sub(r"LOCAL VARIABLES\n=+\n.*?\n\n\n", "", dump, flags=re.S)[-12000:]
    except AssertionError:
        with log.open("rb") as read:
            read.seek(start)
            return read.read().decode(errors="replace")[-12000:] or "(no dump)"


@pytest.mark.rabbitmq
def test_a_threads_worker_with_task_events_does_not_hang(rabbitmq_env: Env, tmp_path: Path) -> None:
    env = rabbitmq_env
    # Given a real `celery worker --pool threads --concurrency 4` sending task
    # events, running three handlers of OrderPlaced; one of them publishes an
    # event itself (confirmed, from a pool thread)
    events = 200
    downstream = f"{env.queue}.downstream"
    env.extra_queues.append(downstream)
    runs, log = tmp_path / "runs.txt", tmp_path / "worker.log"
    subscribe_worker_handlers(env.bus, env.queue, downstream, runs)
    env.declare_handler_queue()

    with threads_worker(env, downstream, runs, log) as proc:
        # When 200 events are published
        published = {
            str(env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1)).event_id)
            for n in range(events)
        }

        # Then all 600 handler runs complete, each once, well within the deadline
        expected = {(label, event_id) for label in WORKER_HANDLERS for event_id in published}

        def done() -> list[tuple[str, str]]:
            if not runs.exists():
                return []
            lines = [tuple(line.split()) for line in runs.read_text().splitlines()]
            seen = [(label, event_id) for label, event_id in lines]
            return seen if set(seen) >= expected or proc.poll() is not None else []

        seen = wait_for(
            done,
            timeout=15,
            message=lambda: (
                f"{len(runs.read_text().splitlines()) if runs.exists() else 0} of "
                f"{len(expected)} runs\nworker log:\n{log.read_text(errors='replace')[-4000:]}"
                f"\nthe worker's threads:\n{thread_dump(proc, log)}"
            ),
        )
        assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
        assert Counter(seen) == Counter(expected)
        # And every OrderShipped the handlers published is on its queue
        wait_for(
            lambda: env.queue_length(downstream) == events,
            message=lambda: f"{env.queue_length(downstream)} OrderShipped queued",
        )


if os.environ.get("EVENTBUS_CONFIRMS_TEST_BROKER"):
    # The worker's app, configured as the test's Env configures its own (so
    # both declare the handler queues alike), with task events on.
    app = make_app(
        os.environ["EVENTBUS_CONFIRMS_TEST_BROKER"],
        worker_hijack_root_logger=True,  # the worker's log is the test's evidence
        worker_send_task_events=True,
        task_send_sent_event=True,
        # No short broker_heartbeat (the metrics test's way to stop promptly):
        # with one, the old design's worker hung only now and then (and ran
        # handlers twice). The test kills the worker instead.
    )
    bus = EventBus(
        app,
        default_queue=os.environ["EVENTBUS_CONFIRMS_TEST_QUEUE"],
        dead_letter_queue=os.environ["EVENTBUS_CONFIRMS_TEST_DLQ"],
    )
    subscribe_worker_handlers(
        bus,
        os.environ["EVENTBUS_CONFIRMS_TEST_QUEUE"],
        os.environ["EVENTBUS_CONFIRMS_TEST_DOWNSTREAM"],
        Path(os.environ["EVENTBUS_CONFIRMS_TEST_RUNS"]),
    )
