"""The broker transport follows the broker URL the app really uses (issue 11, item 9).

A worker of an app with an EventBus takes eventbus's atomic Redis transport on
``redis://`` and ``rediss://``, whatever configuration module it was loaded
from, and the URL's own transport on anything else; a ``broker_transport``
that cannot serve the URL stops the worker at start and fails ``publish``
with an error that names it; kombu's Redis transport is taken only when asked
for, with a warning.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import kombu.transport.redis as kombu_redis
import pytest
from celery import Celery

from eventbus import ConfigurationError, EventBus
from eventbus.celery.internals import redis_transport as eventbus_redis
from tests.brokers import PrivateRedis
from tests.support import (
    STATE_REDIS_URL,
    delete_queues,
    delete_state,
    make_app,
    require_broker,
    running_worker,
)

from .helpers import OrderPlaced, Recorder, wait_for

REPO = Path(__file__).resolve().parents[2]
EVENTBUS_TRANSPORT = "eventbus.celery.internals.redis_transport:Transport"


def load_celeryconfig() -> ModuleType:
    """A fresh copy of the repository's celeryconfig, read with the environment as it is now."""
    spec = importlib.util.spec_from_file_location("celeryconfig_copy", REPO / "celeryconfig.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: What keeps a test's app on the shared brokers to itself (as tests.support.make_app does).
ISOLATION: dict[str, Any] = {
    "worker_hijack_root_logger": False,
    "worker_send_task_events": False,
    "task_send_sent_event": False,
    "worker_enable_remote_control": False,
    "broker_connection_timeout": 3,
    "task_publish_retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
}


class Bus:
    """An EventBus on ``app`` with one recording handler on queues of its own."""

    def __init__(self, app: Celery) -> None:
        uid = uuid.uuid4().hex[:10]
        self.app = app
        self.queue = f"it.transport-choice.{uid}"
        self.bus = EventBus(app, default_queue=self.queue, dead_letter_queue=f"{self.queue}.dlq")
        self.recorder = Recorder()
        self.name = f"it.{uid}.handler"
        self.bus.subscribe(OrderPlaced, handler=self.recorder.handler(self.name), name=self.name)

    def publish_and_handle(self, worker: Any, events: int = 3) -> None:
        for n in range(events):
            self.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))
        wait_for(
            lambda: self.recorder.count() == events,
            message=lambda: f"{self.recorder.count()}/{events} events handled",
        )

    def close(self) -> None:
        try:
            delete_queues(self.app, self.queue, f"{self.queue}.dlq")
        finally:
            delete_state(self.app)
            self.app.close()


def test_an_app_given_an_amqp_url_after_celeryconfig_publishes_and_consumes_on_rabbitmq(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the repository's celeryconfig, loaded with no broker URL in the environment
    # (its default is redis://)
    url = require_broker("rabbitmq")
    for name in ("EVENTBUS_BROKER_URL", "CELERY_BROKER_URL", "EVENTBUS_REDIS_TRANSPORT"):
        monkeypatch.delenv(name, raising=False)
    app = Celery(f"it-transport-{uuid.uuid4().hex[:8]}", set_as_current=False)
    app.config_from_object(load_celeryconfig())
    # When the app is then given a RabbitMQ URL in code, as the user did
    app.conf.broker_url = url
    app.conf.update(
        ISOLATION, eventbus_redis_url=STATE_REDIS_URL, eventbus_redis_prefix=f"{app.main}:"
    )
    bus = Bus(app)
    try:
        # Then publishing works, and a worker consumes from RabbitMQ and runs the handler
        with running_worker(app, bus.bus.queues) as worker:
            assert worker.consumer.connection.transport.driver_type == "amqp"
            bus.publish_and_handle(worker)
    finally:
        bus.close()


@pytest.fixture
def tls_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis(persistent=False, tls=True)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("checked", [True, False], ids=["certificate-checked", "unchecked"])
def test_a_rediss_broker_gets_eventbus_transport_over_tls(
    tls_redis: PrivateRedis, checked: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an app on a Redis that speaks TLS only (rediss://), with no broker_transport:
    # with the server's certificate checked, or a bare rediss:// URL (as kombu: unchecked)
    url = tls_redis.url if checked else tls_redis.bare_url
    caplog.set_level(logging.INFO, logger="eventbus")
    bus = Bus(make_app(url, broker_transport=None, eventbus_redis_transport=None))
    try:
        # When a worker runs its handler
        with running_worker(bus.app, bus.bus.queues) as worker:
            transport = worker.consumer.connection.transport
            bus.publish_and_handle(worker)
        # Then it consumed with eventbus's transport, over TLS: no BRPOP, only the take script
        with tls_redis.client() as client:
            stats = client.info("commandstats")
        assert "cmdstat_brpop" not in stats
        assert sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("eval", "evalsha"))
        assert isinstance(transport, eventbus_redis.SecureTransport)
        assert "eventbus's atomic Redis transport for rediss://127.0.0.1" in caplog.text
        # And only a bare URL is told that the certificate goes unchecked
        assert ("without checking the server's certificate" in caplog.text) is not checked
    finally:
        bus.close()


def test_a_redis_broker_gets_eventbus_transport_without_any_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = require_broker("redis")
    caplog.set_level(logging.INFO, logger="eventbus")
    bus = Bus(make_app(url, broker_transport=None, eventbus_redis_transport=None))
    try:
        with running_worker(bus.app, bus.bus.queues) as worker:
            assert isinstance(worker.consumer.connection.transport, eventbus_redis.Transport)
            bus.publish_and_handle(worker)
    finally:
        bus.close()
    assert "broker transport: eventbus's atomic Redis transport for redis://" in caplog.text


def test_kombus_redis_transport_is_taken_when_asked_for_and_the_worker_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = require_broker("redis")
    caplog.set_level(logging.INFO, logger="eventbus")
    bus = Bus(make_app(url, broker_transport=None, eventbus_redis_transport="kombu"))
    try:
        with running_worker(bus.app, bus.bus.queues) as worker:
            assert type(worker.consumer.connection.transport) is kombu_redis.Transport
            bus.publish_and_handle(worker)
    finally:
        bus.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("eventbus_redis_transport is 'kombu'" in r.getMessage() for r in warnings)


def test_publish_refuses_eventbus_transport_set_for_an_amqp_url() -> None:
    # Given broker_transport set by hand to eventbus's Redis transport, and a RabbitMQ URL
    url = require_broker("rabbitmq")
    bus = Bus(make_app(url, broker_transport=EVENTBUS_TRANSPORT, **ISOLATION))
    try:
        # When the app publishes, Then the error names the setting and the URL's scheme
        with pytest.raises(ConfigurationError) as err:
            bus.bus.publish(OrderPlaced(order_id="o-1", quantity=1))
        message = str(err.value)
        assert "broker_transport" in message and EVENTBUS_TRANSPORT in message
        assert "amqp://" in message and ":guest@" not in message  # (no password)
    finally:
        bus.app.close()  # nothing was declared


def test_a_worker_with_eventbus_transport_set_for_an_amqp_url_stops_at_start() -> None:
    # Given broker_transport set by hand to eventbus's Redis transport, and a RabbitMQ URL
    url = require_broker("rabbitmq")
    queue = f"it.transport-app.{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "TRANSPORT_APP_BROKER_URL": url,
        "TRANSPORT_APP_BROKER_TRANSPORT": EVENTBUS_TRANSPORT,
        "TRANSPORT_APP_QUEUE": queue,
    }
    # When its worker starts
    command = [sys.executable, "-m", "celery", "-A", "tests.integration.transport_app:app",
               "worker", "--pool", "solo", "-Q", queue, "-l", "INFO"]  # fmt: skip
    try:
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the worker kept running:\n{exc.stderr}") from None
    # Then it exits at once with an error that names the setting and the broker
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "ConfigurationError" in output and "broker_transport is " + EVENTBUS_TRANSPORT in output
    assert "amqp://" in output
