"""What every test suite shares: brokers, a per-test Celery app, a real worker, waiting.

A broker that does not answer makes its tests skip on a laptop and fail when
the environment variable ``CI`` is set. The brokers are shared with other
runs: tests use queue names with a random suffix, Redis its own database.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from celery import Celery
from celery import _state as celery_state
from celery.contrib.testing.worker import start_worker
from celery.worker import state as worker_state
from kombu import Connection

T = TypeVar("T")

BROKER_URLS = {
    "redis": os.environ.get("EVENTBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/9"),
    "rabbitmq": os.environ.get("EVENTBUS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//"),
}
#: Where idempotency claims and sequence positions live in tests (any broker).
STATE_REDIS_URL = os.environ.get("EVENTBUS_TEST_STATE_URL", "redis://127.0.0.1:6379/9")
DEFAULT_TIMEOUT = 20.0  #: seconds a test waits for a worker before failing
#: The Redis transport of :func:`make_app`'s apps (their ``eventbus_redis_transport``):
#: eventbus's (celery.internals.redis_transport, which a bus's worker picks from a redis:// URL
#: by itself), or kombu's own with EVENTBUS_TEST_REDIS_TRANSPORT=kombu.
REDIS_TRANSPORT = os.environ.get("EVENTBUS_TEST_REDIS_TRANSPORT", "eventbus")

_reachability: dict[str, str | None] = {}


def require_broker(kind: str) -> str:
    """The broker's URL; skip the test if it is unreachable, fail instead when CI is set."""
    if kind not in _reachability:
        parts = urlsplit(BROKER_URLS[kind])
        port = parts.port or (6379 if kind == "redis" else 5672)
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", port), timeout=1.0):
                _reachability[kind] = None
        except OSError as exc:
            _reachability[kind] = f"{kind} broker at {parts.hostname}:{port} unreachable: {exc}"
    reason = _reachability[kind]
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the integration brokers must be up)")
        pytest.skip(reason)
    return BROKER_URLS[kind]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.02,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Fails the test with ``message`` (a string, or a callable describing the
    current state) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout}s waiting for: {text}")
        time.sleep(interval)  # poll


def assert_stays(
    predicate: Callable[[], object],
    *,
    duration: float = 0.5,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> None:
    """Assert that ``predicate`` holds on every poll for ``duration`` seconds."""
    deadline = time.monotonic() + duration
    while True:
        if not predicate():
            text = message() if callable(message) else message
            raise AssertionError(f"stopped holding: {text}")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)  # poll


def run_concurrently(fn: Callable[[], object], n: int, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Run ``fn`` in ``n`` threads at once (named ``op0``, ``op1``, ...) and wait for them all.

    The threads start ``fn`` together (a barrier), as operators acting at the
    same moment would. Fails the test if any thread is still running
    ``timeout`` seconds after the start; re-raises what the threads raised,
    as one exception group, once all have finished.
    """
    start = threading.Barrier(n)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            start.wait(timeout)
            fn()
        except BaseException as exc:  # re-raised in the test's thread below
            raised.append(exc)

    # Daemons: a thread that hangs must not keep the test run from exiting.
    threads = [threading.Thread(target=run, name=f"op{i}", daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    running = [thread.name for thread in threads if thread.is_alive()]
    if running:
        raise AssertionError(f"still running after {timeout}s: {', '.join(running)}")
    if raised:
        raise BaseExceptionGroup(f"{len(raised)} of {n} threads raised", raised)


def make_app(broker_url: str, *, default_queue: str | None = None, **overrides: Any) -> Celery:
    """A Celery app of its own for one test: JSON only, a small publish retry policy."""
    app = Celery(unique("eventbus-test"), broker=broker_url, set_as_current=False)
    app.conf.update(
        # Idempotency and ordering state: its own key prefix, removed by delete_state().
        eventbus_redis_url=STATE_REDIS_URL,
        eventbus_redis_prefix=f"{app.main}:",
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_send_sent_event=True,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # No pidbox queue per worker: nothing to clean up on the shared broker.
        worker_enable_remote_control=False,
        worker_prefetch_multiplier=4,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        # kombu pools connections per URL and transport options, process-wide:
        # an option of its own keeps this app's pool from sharing connections
        # that another test's teardown closes (RabbitMQ: named in its UI).
        broker_transport_options={"client_properties": {"connection_name": app.main}},
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
    )
    if default_queue:
        app.conf.task_default_queue = default_queue
    app.conf.eventbus_redis_transport = REDIS_TRANSPORT
    app.conf.update(overrides)
    return app


def delete_state(app: Celery) -> None:
    """Remove the idempotency and ordering keys of an app made by :func:`make_app`."""
    import redis

    prefix = app.conf.get("eventbus_redis_prefix")
    if not prefix:
        return
    client = redis.Redis.from_url(app.conf.eventbus_redis_url, socket_connect_timeout=3)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.ConnectionError:
        pass  # no Redis, so nothing was written
    finally:
        client.close()


def delete_queues(app: Celery, *names: str) -> None:
    """Remove queues (and their exchanges and Redis keys) a test created on a shared broker."""
    with Connection(app.conf.broker_url, connect_timeout=3) as conn:
        if conn.transport.driver_type == "redis":
            client = conn.default_channel.client
            for name in names:
                keys = list(client.scan_iter(match=f"*{name}*", count=1000))
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
                    with suppress(*conn.connection_errors, *conn.channel_errors):
                        channel.close()


@contextmanager
def running_worker(app: Celery, queues: list[str] | None, **kwargs: Any) -> Iterator[Any]:
    """A real Celery worker consuming ``queues`` in a thread of this process, stopped promptly.

    start_worker asks the worker to terminate and joins its thread, but the
    event loop only looks at that request between two polls, and an idle AMQP
    connection polls for up to 10 s: ask, then wake the loop (thread-safe).
    """
    options: dict[str, Any] = {
        "pool": "threads",
        "concurrency": 2,
        "perform_ping_check": False,
        "loglevel": "WARNING",
        "shutdown_timeout": 15,
        **kwargs,
    }
    previous_default = celery_state.default_app
    previous_current = getattr(celery_state._tls, "current_app", None)
    try:
        with start_worker(app, queues=queues, **options) as worker:
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
