"""Helpers shared by the test suites: waiting, broker reachability, cleanup."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery import Celery
from kombu import Connection

REDIS_URL = os.environ.get("EVENTBUS_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
RABBITMQ_URL = os.environ.get("EVENTBUS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
BROKERS = {"redis": REDIS_URL, "rabbitmq": RABBITMQ_URL}
PORTS = {"redis": ("127.0.0.1", 6379), "rabbitmq": ("127.0.0.1", 5672)}


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # poll


def require_broker(kind: str) -> str:
    """The broker URL; skip if it is unreachable on a laptop, fail in CI."""
    host, port = PORTS[kind]
    try:
        with socket.create_connection((host, port), timeout=1):
            pass
    except OSError as exc:
        message = f"{kind} broker not reachable at {host}:{port}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return BROKERS[kind]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_app(broker_url: str, **conf: Any) -> Celery:
    app = Celery(unique("eventbus-test"), broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_send_sent_event=True,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        # An in-process worker on RabbitMQ only notices it should stop when its
        # event loop wakes; AMQP heartbeats wake it every second.
        broker_heartbeat=2,
        **conf,
    )
    return app


def delete_queues(app: Celery, *names: str) -> None:
    """Remove what a test created on the shared broker."""
    with Connection(app.conf.broker_url) as conn:
        channel = conn.channel()
        for name in names:
            try:
                channel.queue_delete(name)
            except Exception:
                channel = conn.channel()  # a failed delete closes the AMQP channel
            try:
                channel.exchange_delete(name)
            except Exception:
                channel = conn.channel()
        if conn.transport.driver_type == "redis":
            client = channel.client
            for name in names:
                client.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")


@contextmanager
def running_worker(
    app: Celery, queues: list[str], pool: str = "threads", concurrency: int = 2
) -> Iterator[None]:
    """A real Celery worker consuming ``queues``, in this process."""
    from celery.contrib.testing.worker import start_worker

    with start_worker(
        app,
        pool=pool,
        concurrency=concurrency,
        queues=queues,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=10,
    ):
        yield
