"""An idle consumer of eventbus's Redis transport: told by Redis, not polling (issue 13).

:mod:`eventbus.celery.internals.redis_wake`: a channel whose take found every
queue empty asks Redis to track its queue keys (``CLIENT TRACKING``), waits
for the invalidation on a second connection, and looks anyway every
``eventbus_idle_poll_interval`` seconds (one ``EXISTS``). These tests hold
what a user sees: an idle worker sends (almost) nothing, every producer's
message wakes it (the safety net made an hour long, so only a notification
can), a message reaches one consumer of many, a consumer killed between its
wake-up and its take loses nothing, one whose wake connection Redis closed
sets it up again, and a Redis that refuses or loses the notifications still
gets its messages taken. No test asserts a latency: ``bench/bench_idle.py``
measures it.

Each test has queue names of its own; the tests that count commands, crash
Redis or change its ACL use a private ``redis-server``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.message import Message

from eventbus import EventBus
from eventbus.celery.internals import redis_wake
from eventbus.celery.internals.redis_transport import CHECK, Channel
from eventbus.celery.internals.redis_wake import UNANNOUNCED_LIMIT
from tests.brokers import PrivateRedis
from tests.support import delete_state, make_app, running_worker

from .helpers import OrderPlaced, Recorder, assert_stays, wait_for
from .redis_box import TRANSPORT, Box

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.redis

AN_HOUR = 3600.0  #: a safety net that never comes within a test: only a notification wakes


def calls(client: redis.Redis, *names: str) -> int:
    """Commands Redis ran (INFO commandstats), those named or all but INFO and CONFIG."""
    stats = client.info("commandstats")
    return sum(
        int(value["calls"])
        for key, value in stats.items()
        if (key.removeprefix("cmdstat_") in names)
        or (not names and not key.startswith(("cmdstat_info", "cmdstat_config")))
    )


def settled(client: redis.Redis, *names: str, duration: float = 1.0) -> None:
    """Wait until Redis has run none of these commands for ``duration`` seconds."""
    last = [calls(client, *names), time.monotonic()]

    def still() -> bool:
        now = calls(client, *names)
        if now != last[0]:
            last[:] = [now, time.monotonic()]
            return False
        return time.monotonic() - last[1] >= duration

    wait_for(still, message=f"no {' or '.join(names)} for {duration} s")


#: What a consumer runs when it looks at its queues: the take script's reads, BRPOP, the arm.
LOOKS = ("lindex", "brpop", "exists")


class Consumer:
    """A consumer of a box's queue on eventbus's transport, in a thread: what it received."""

    def __init__(self, box: Box, **options: Any) -> None:
        self.box = box
        self.options = options
        self.received: list[Message] = []
        self.channel: Any = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            with (
                self.box.connection(**self.options) as conn,
                conn.Consumer([self.box.queue], callbacks=[self._got]),
            ):
                self.channel = conn.default_channel
                while not self._stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        conn.drain_events(timeout=0.2)
        except BaseException as exc:
            self.error = exc

    def _got(self, _body: Any, message: Message) -> None:
        message.ack()
        with self._lock:
            self.received.append(message)

    def payloads(self) -> list[Any]:
        with self._lock:
            return [m.payload for m in self.received]

    def armed(self) -> bool:
        """Idle, its queue keys tracked: only a notification (or the safety net) wakes it."""
        channel = self.channel
        return (
            channel is not None
            and channel._eventbus_next == CHECK
            and not channel._in_poll
            and channel.eventbus_idle_until > time.monotonic()
        )

    def __enter__(self) -> Consumer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert self.error is None, self.error


def armed(*consumers: Consumer) -> None:
    """Wait until every consumer is idle and armed."""
    wait_for(
        lambda: all(c.armed() for c in consumers),
        message=lambda: f"every consumer armed: {[c.armed() for c in consumers]}",
    )


def raw_element(box: Box, body: Any) -> bytes:
    """A kombu message as another language's producer writes it (no kombu involved)."""
    return json.dumps(
        {
            "body": base64.b64encode(json.dumps(body).encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {},
            "properties": {
                "body_encoding": "base64",
                "delivery_info": {"exchange": box.name, "routing_key": box.name},
                "delivery_mode": 2,
                "delivery_tag": str(uuid.uuid4()),
                "priority": 0,
            },
        }
    ).encode()


@pytest.fixture
def make_private_box(private_redis: PrivateRedis) -> Iterator[Callable[..., Box]]:
    boxes: list[Box] = []

    def make(**options: Any) -> Box:
        box = Box(private_redis.url, prefixed=False, **options)
        boxes.append(box)
        return box

    try:
        yield make
    finally:
        for box in boxes:
            with contextlib.suppress(redis.ConnectionError):
                box.close()


# -- a worker -----------------------------------------------------------------------


def idle_worker(url: str, **options: Any) -> tuple[Any, EventBus, Recorder, str]:
    uid = uuid.uuid4().hex[:10]
    queue = f"it.transport-idle.{uid}"
    app = make_app(url, broker_transport=TRANSPORT, broker_transport_options=options)
    bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")
    recorder = Recorder()
    bus.subscribe(OrderPlaced, handler=recorder.handler("idle"), name=f"it.{uid}.idle")
    return app, bus, recorder, queue


def test_an_idle_worker_sends_at_most_two_commands_a_second(private_redis: PrivateRedis) -> None:
    # Given a worker on eventbus's transport, idle on a private Redis
    app, bus, recorder, _queue = idle_worker(private_redis.url)
    try:
        with (
            private_redis.client() as client,
            running_worker(app, bus.queues, pool="solo", concurrency=1),
        ):
            wait_for(lambda: calls(client, "exists"), message="the worker armed and idle")
            bus.publish(OrderPlaced(order_id="o-0", quantity=1))
            wait_for(lambda: recorder.count() == 1, message="the first event handled")
            settled(client, "lindex", "brpop")

            # When it stays idle for 6 s
            takes = lambda: calls(client, "lindex", "brpop")  # noqa: E731
            before, taken, started = calls(client), takes(), time.monotonic()
            assert_stays(lambda: recorder.count() == 1, duration=6.0, message="no handler runs")
            sent = calls(client) - before
            elapsed = time.monotonic() - started

            # Then it sent at most 2 commands a second (those its scripts run included)
            assert sent / elapsed <= 2.0, f"{sent} commands in {elapsed:.1f} s"
            # And none of them was a BRPOP or a take script
            assert takes() == taken

            # And a new event is still handled
            bus.publish(OrderPlaced(order_id="o-1", quantity=1))
            wait_for(lambda: recorder.count() == 2, message="the second event handled")
    finally:
        delete_state(app)
        app.close()


def test_a_worker_wakes_after_redis_restarted(private_redis: PrivateRedis) -> None:
    # Given an idle worker whose safety net never comes (only a notification wakes it)
    app, bus, recorder, _queue = idle_worker(private_redis.url, eventbus_idle_poll_interval=AN_HOUR)
    try:
        with (
            private_redis.client() as client,
            running_worker(app, bus.queues, pool="solo", concurrency=1),
        ):
            wait_for(lambda: calls(client, "exists"), message="the worker armed and idle")

            # When Redis is killed and started again, and an event is published once
            # the worker armed on the new server
            private_redis.crash()
            private_redis.start()
            with private_redis.client() as fresh:
                wait_for(
                    lambda: calls(fresh, "client|caching"),
                    timeout=60,
                    message="the worker armed on the restarted Redis",
                )
            bus.publish(OrderPlaced(order_id="o-1", quantity=1))

            # Then the worker was told, and ran it
            wait_for(lambda: recorder.count() == 1, message="the event handled")
    finally:
        delete_state(app)
        app.close()


def test_a_worker_that_redis_does_not_notify_polls_at_the_interval(
    private_redis: PrivateRedis,
) -> None:
    # Given a worker with notifications off, idle on a private Redis
    app, bus, recorder, _queue = idle_worker(private_redis.url, eventbus_idle_wake=False)
    interval = Channel.eventbus_poll_interval
    try:
        with (
            private_redis.client() as client,
            running_worker(app, bus.queues, pool="solo", concurrency=1),
        ):
            takes = lambda: calls(client, "eval", "evalsha")  # noqa: E731
            wait_for(lambda: takes() > 0, message="the worker polling")
            # When it stays idle for 20 polls
            before, started = takes(), time.monotonic()
            wait_for(lambda: takes() - before >= 20, message="20 polls of the idle worker")
            polls = takes() - before
            elapsed = time.monotonic() - started
            # Then it polled about once per interval: not in a busy loop, not stalled
            expected = elapsed / interval
            assert expected / 4 <= polls <= expected * 1.5, f"{polls} polls in {elapsed:.1f}s"
            assert calls(client, "client|tracking", "client|caching", "brpop") == 0
            # And a new event still gets handled
            bus.publish(OrderPlaced(order_id="o-1", quantity=1))
            wait_for(lambda: recorder.count() == 1, message="the event handled")
    finally:
        delete_state(app)
        app.close()


# -- consumers ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3], ids=["RESP2", "RESP3"])
def test_every_producer_wakes_an_idle_consumer(
    make_private_box: Callable[..., Box],
    private_redis: PrivateRedis,
    protocol: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a consumer on eventbus's transport, idle and armed, whose safety net never comes
    connparams = Channel._connparams
    monkeypatch.setattr(
        Channel,
        "_connparams",
        lambda self, asynchronous=False: {**connparams(self, asynchronous), "protocol": protocol},
    )
    box = make_private_box(eventbus_idle_poll_interval=AN_HOUR)
    with private_redis.client() as client, Consumer(box) as consumer:
        # (which looks at no queue while it waits)
        armed(consumer)
        looks = lambda: calls(client, *LOOKS)  # noqa: E731
        before = looks()
        assert_stays(lambda: looks() == before, duration=1.0, message="no look at the queues")

        # When a message comes from eventbus's transport, from kombu's own (raw
        # Celery's), and as a raw LPUSH (another language's producer)
        def produce(how: str, n: int) -> None:
            if how == "eventbus":
                box.publish({"n": n})
            elif how == "kombu":
                with box.connection(transport=None) as conn:
                    conn.Producer().publish(
                        {"n": n}, exchange=box.queue.exchange, routing_key=box.name, retry=True
                    )
            else:
                client.lpush(box.key(box.name), raw_element(box, {"n": n}))

        for n, how in enumerate(("eventbus", "kombu", "raw")):
            armed(consumer)
            produce(how, n)
            # Then the consumer gets each
            wait_for(lambda n=n: {"n": n} in consumer.payloads(), message=f"message {n} ({how})")
        assert consumer.payloads() == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert client.info("clients")["tracking_clients"] >= 1


@pytest.mark.parametrize("protocol", [2, 3], ids=["RESP2", "RESP3"])
def test_a_consumer_whose_wake_connection_was_killed_gets_the_next_message(
    make_private_box: Callable[..., Box],
    private_redis: PrivateRedis,
    protocol: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an idle consumer whose safety net never comes
    connparams = Channel._connparams
    monkeypatch.setattr(
        Channel,
        "_connparams",
        lambda self, asynchronous=False: {**connparams(self, asynchronous), "protocol": protocol},
    )
    box = make_private_box(eventbus_idle_poll_interval=AN_HOUR)
    with private_redis.client() as client, Consumer(box) as consumer:
        for n in range(3):
            armed(consumer)
            # When Redis closes its wake connection, and a message comes right after
            assert client.client_kill_filter(_type="pubsub") == 1
            box.publish({"n": n})
            # Then the consumer set its notifications up again, and got the message
            wait_for(lambda n=n: {"n": n} in consumer.payloads(), message=f"message {n}")
    assert box.waiting() == 0


def test_a_restored_message_wakes_an_idle_consumer(
    make_private_box: Callable[..., Box], private_redis: PrivateRedis
) -> None:
    # Given a message taken by a consumer that died (the script alone ran), and an
    # idle consumer whose safety net never comes; kombu restores past the visibility timeout
    box = make_private_box(
        eventbus_idle_poll_interval=AN_HOUR, visibility_timeout=1, unacked_restore_throttle=1
    )
    box.publish({"n": 7})
    assert box.take() is not None
    with Consumer(box, unacked_restore_interval=1) as consumer:
        # When kombu's restore puts it back on its queue, Then the consumer is told and gets it
        wait_for(lambda: consumer.payloads() == [{"n": 7}], timeout=30, message="restored")
    assert box.unacked() == {}


def test_one_message_to_several_idle_consumers_is_taken_once(
    make_private_box: Callable[..., Box], private_redis: PrivateRedis
) -> None:
    # Given four consumers of one queue, idle and armed
    box = make_private_box(eventbus_idle_poll_interval=AN_HOUR)
    consumers = [Consumer(box) for _ in range(4)]
    with contextlib.ExitStack() as stack:
        for consumer in consumers:
            stack.enter_context(consumer)
        for n in range(10):
            # When a message is published while they are all idle (every one is told)
            armed(*consumers)
            box.publish({"n": n})
            # Then one of them got it
            wait_for(
                lambda n=n: sum(c.payloads().count({"n": n}) for c in consumers) >= 1,
                message=f"message {n} received",
            )
    # And each message was received once, by one consumer
    received = sorted(p["n"] for c in consumers for p in c.payloads())
    assert received == list(range(10))
    assert box.waiting() == 0
    assert box.unacked() == {}


KILLED_ON_WAKE = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from kombu import Connection, Exchange, Queue
    from eventbus.celery.internals import redis_transport

    queue = Queue({name!r}, Exchange({name!r}, type="direct"), routing_key={name!r}, max_priority=9)
    idle = redis_transport.Channel._eventbus_idle

    def told_to_idle(self, seconds):
        idle(self, seconds)
        print("armed", flush=True)

    def killed(self):
        os.kill(os.getpid(), signal.SIGKILL)  # told of the message, before any take

    redis_transport.Channel._eventbus_idle = told_to_idle
    redis_transport.Channel.eventbus_notified = killed
    transport = "eventbus.celery.internals.redis_transport:Transport"
    with (
        Connection({url!r}, transport=transport, transport_options={options!r}) as conn,
        conn.Consumer([queue], callbacks=[print]),
    ):
        while True:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
    """
)


def test_a_consumer_killed_between_its_wake_up_and_its_take_loses_nothing(
    make_private_box: Callable[..., Box], private_redis: PrivateRedis
) -> None:
    # Given a consumer process, idle and armed, that dies (SIGKILL) when Redis tells it
    # of a message, before it takes it
    box = make_private_box(eventbus_idle_poll_interval=AN_HOUR)
    script = KILLED_ON_WAKE.format(
        repo=str(REPO), url=private_redis.url, options=box.options, name=box.name
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "armed", (line, process.stderr.read() if process.stderr else "")

        # When a message is published
        box.publish({"n": 1})

        # Then the consumer died, told of it
        assert process.wait(30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)

    # And the message is still on its queue, recorded nowhere, and the next consumer gets it
    assert box.waiting() == 1
    assert box.unacked() == {}
    with Consumer(box) as consumer:
        wait_for(lambda: consumer.payloads() == [{"n": 1}], message="the message taken")
    assert box.waiting() == 0
    assert box.unacked() == {}


def test_a_redis_that_refuses_tracking_is_polled_with_one_warning(
    make_private_box: Callable[..., Box],
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a Redis whose ACL refuses CLIENT TRACKING
    monkeypatch.setattr(redis_wake, "_said", set())
    with private_redis.client() as client:
        client.execute_command("ACL", "SETUSER", "default", "-client|tracking")
        box = make_private_box()
        caplog.set_level(logging.WARNING, logger="eventbus.celery.internals.redis_wake")

        # When two consumers run there, one after the other
        for n in range(2):
            with Consumer(box) as consumer:
                wait_for(lambda: calls(client, "evalsha") >= 3, message="the consumer polling")
                box.publish({"n": n})
                # Then each gets its message
                wait_for(lambda n=n: consumer.payloads() == [{"n": n}], message="taken")

    # And the log said once why the idle workers poll
    said = [r.getMessage() for r in caplog.records if "CLIENT TRACKING" in r.getMessage()]
    assert len(said) == 1, said
    assert "polls its queues every 0.05 s" in said[0]


def test_a_message_no_notification_announced_is_found_by_the_safety_net(
    make_private_box: Callable[..., Box],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a consumer whose notifications are lost (read and dropped, as by a proxy
    # that loses them), and a safety net every 0.3 s
    dropped: list[float] = []

    def drop(self: Channel) -> None:
        if self._eventbus_wake is not None:
            self._eventbus_wake.read()
            dropped.append(time.monotonic())

    monkeypatch.setattr(Channel, "eventbus_notified", drop)
    monkeypatch.setattr(redis_wake, "_said", set())
    caplog.set_level(logging.INFO)
    box = make_private_box(eventbus_idle_poll_interval=0.3)
    count = UNANNOUNCED_LIMIT + 2
    with Consumer(box) as consumer:
        for n in range(count):
            # When messages come, one at a time, that no notification announces
            wait_for(
                lambda: (
                    consumer.armed()
                    or (consumer.channel is not None and consumer.channel._eventbus_wake is None)
                ),
                message="the consumer idle",
            )
            box.publish({"n": n})
            # Then the safety net finds each
            wait_for(lambda n=n: {"n": n} in consumer.payloads(), message=f"message {n}")
        assert consumer.payloads() == [{"n": n} for n in range(count)]
        assert dropped  # (the notifications came, and were dropped)
        # And after UNANNOUNCED_LIMIT in a row the consumer stopped waiting to be told
        assert consumer.channel._eventbus_wake is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("reconnecting the wake connection" in m for m in messages) == UNANNOUNCED_LIMIT - 1
    off = [m for m in messages if "no notification from Redis announced them" in m]
    assert len(off) == 1, messages
