"""Fixtures of the integration tests: brokers, a per-test Celery app and bus, a real worker.

Every broker-facing test runs twice, on Redis and on RabbitMQ (``broker_url``).
A broker that does not answer makes its tests skip on a laptop and fail when
the environment variable CI is set.

The brokers are shared with other runs: each test gets queue names with a
random suffix, Redis uses its own database, and teardown deletes what the test
created (lists and binding keys on Redis, queues and exchanges on RabbitMQ).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import Celery
from celery import _state as celery_state
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state
from kombu import Connection, Exchange, Queue

from eventbus import EventBus

BROKER_URLS = {
    "redis": os.environ.get("EVENTBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/9"),
    "rabbitmq": os.environ.get("EVENTBUS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//"),
}

#: Brokers that refuse connections at once: nothing listens on port 1.
CLOSED_BROKER_URLS = {
    "redis": "redis://127.0.0.1:1/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:1//",
}

_reachability: dict[str, str | None] = {}


def _unreachable_reason(kind: str) -> str | None:
    """None if the broker accepts a TCP connection, else why not (checked once per session)."""
    if kind not in _reachability:
        parts = urlsplit(BROKER_URLS[kind])
        port = parts.port or (6379 if kind == "redis" else 5672)
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=1.0):
                _reachability[kind] = None
        except OSError as exc:
            _reachability[kind] = f"{kind} broker at {parts.hostname}:{port} unreachable: {exc}"
    return _reachability[kind]


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def broker_url(request: pytest.FixtureRequest) -> str:
    """The URL of a live broker: each test using it runs on Redis and on RabbitMQ."""
    reason = _unreachable_reason(request.param)
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the integration brokers must be up)")
        pytest.skip(reason)
    return BROKER_URLS[request.param]


@pytest.fixture(params=["redis", "rabbitmq"])
def closed_broker_url(request: pytest.FixtureRequest) -> str:
    """A broker URL of each transport where nothing listens."""
    return CLOSED_BROKER_URLS[request.param]


def make_app(broker_url: str, *, default_queue: str, **overrides: Any) -> Celery:
    """A Celery app of its own for one test: JSON only, small publish retry policy."""
    app = Celery(f"it-{default_queue}", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_send_sent_event=True,
        task_ignore_result=True,
        task_default_queue=default_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # No pidbox queue per worker: nothing to clean up on the shared broker.
        worker_enable_remote_control=False,
        worker_prefetch_multiplier=4,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
    )
    app.conf.update(overrides)
    return app


class Env:
    """One test's world: a Celery app, an EventBus on it, its queues and its worker."""

    def __init__(self, broker_url: str, stack: ExitStack, label: str = "t") -> None:
        self.broker_url = broker_url
        self.kind = "redis" if broker_url.startswith("redis") else "rabbitmq"
        self.uid = uuid.uuid4().hex[:12]
        self.queue = f"it.{label}.{self.uid}"
        self.dead_letter_queue = f"it.{label}.{self.uid}.dlq"
        self._stack = stack
        # Teardown runs in reverse: stop the worker, close the app, then delete queues.
        stack.callback(self._delete_broker_objects)
        self.app = make_app(broker_url, default_queue=self.queue)
        stack.callback(self.app.close)
        self.bus = EventBus(
            self.app, default_queue=self.queue, dead_letter_queue=self.dead_letter_queue
        )
        self.worker: Any = None

    def name(self, short: str) -> str:
        """A handler name unique to this test (it is also the Celery task name)."""
        return f"it.{self.uid}.{short}"

    def start_worker(self, pool: str = "solo", **kwargs: Any) -> Any:
        """Start a real worker in a thread of this process, consuming the bus's queues."""
        assert self.worker is None, "one worker per Env"
        self.worker = self._stack.enter_context(
            _running_worker(
                self.app,
                pool=pool,
                concurrency=kwargs.pop("concurrency", 1),
                perform_ping_check=False,
                queues=self.bus.queues,
                loglevel="WARNING",
                shutdown_timeout=15,
                **kwargs,
            )
        )
        return self.worker

    def connection(self) -> Connection:
        return Connection(self.broker_url, connect_timeout=3)

    def queue_length(self, name: str | None = None) -> int:
        """Messages waiting (not yet delivered) in a queue; 0 if it does not exist."""
        name = name or self.queue
        with self.connection() as conn:
            channel = conn.default_channel
            if self.kind == "redis":
                # kombu keeps one list per priority step: sum them all.
                keys = {channel._q_for_pri(name, pri) for pri in channel.priority_steps}
                return sum(int(channel.client.llen(key)) for key in keys)
            try:
                _, count, _ = channel.queue_declare(queue=name, passive=True)
            except conn.channel_errors:
                return 0
            return int(count)

    def declare_handler_queue(self) -> None:
        """Declare the handler queue as Celery routes to it (exchange = routing key = name)."""
        with self.connection() as conn:
            Queue(self.queue, Exchange(self.queue, type="direct"), routing_key=self.queue)(
                conn.default_channel
            ).declare()

    def publish_raw(self, body: Any, *, headers: dict[str, Any], **kwargs: Any) -> None:
        """Publish a message straight onto the handler queue, bypassing Celery."""
        with self.connection() as conn:
            conn.Producer().publish(
                body,
                exchange=self.queue,
                routing_key=self.queue,
                headers=headers,
                retry=True,
                **kwargs,
            )

    def _delete_broker_objects(self) -> None:
        names = [self.queue, self.dead_letter_queue]
        with self.connection() as conn:
            if self.kind == "redis":
                client = conn.default_channel.client
                # Queue lists (one per priority step) and binding sets all carry the uid.
                keys = list(client.scan_iter(match=f"*{self.uid}*", count=1000))
                if keys:
                    client.delete(*keys)
                return
            for name in names:
                for delete in ("queue_delete", "exchange_delete"):
                    channel = conn.channel()
                    try:
                        getattr(channel, delete)(name)
                    except conn.channel_errors:
                        pass  # never declared
                    finally:
                        try:
                            channel.close()
                        except conn.connection_errors + conn.channel_errors:
                            pass


@contextmanager
def _running_worker(app: Celery, **kwargs: Any) -> Iterator[Any]:
    """``start_worker`` that also stops promptly.

    start_worker asks the worker to terminate and joins its thread, but the
    event loop only looks at that request between two polls, and an idle AMQP
    connection polls for up to 10 s. Ask, then wake the loop (thread-safe).
    """
    previous_default = celery_state.default_app
    previous_current = getattr(celery_state._tls, "current_app", None)
    try:
        with start_worker(app, **kwargs) as worker:
            try:
                yield worker
            finally:
                worker_state.should_terminate = 0
                hub = getattr(worker, "hub", None)
                if hub is not None:
                    hub.call_soon(lambda: None)
    finally:
        # start_worker made this app the process default; do not leak it to later tests.
        celery_state.set_default_app(previous_default)
        celery_state._set_current_app(previous_current)


@pytest.fixture
def make_env(broker_url: str) -> Iterator[Callable[..., Env]]:
    """Build as many independent apps/buses on the test's broker as the test needs."""
    with ExitStack() as stack:
        yield lambda label="t": Env(broker_url, stack, label)


@pytest.fixture
def env(make_env: Callable[..., Env], request: pytest.FixtureRequest) -> Env:
    """The test's app, bus and queue names (label: the test's short name)."""
    label = request.node.originalname.removeprefix("test_")[:24]
    return make_env(label)
