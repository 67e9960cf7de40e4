"""Fixtures of the integration tests: brokers, a per-test Celery app and bus, a real worker.

Every broker-facing test runs twice, on Redis and on RabbitMQ (``broker_url``).
A broker that does not answer makes its tests skip on a laptop and fail when
the environment variable CI is set.

The brokers are shared with other runs: each test gets queue names with a
random suffix, Redis uses its own database, and teardown deletes what the test
created (lists and binding keys on Redis, queues and exchanges on RabbitMQ).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from _pytest.terminal import TerminalReporter
from kombu import Connection, Exchange, Queue

from eventbus import EventBus
from tests.support import delete_queues, delete_state, make_app, require_broker, running_worker

from .redis_box import make_box  # noqa: F401 - a fixture of the Redis transport tests

#: Brokers that refuse connections at once: nothing listens on port 1.
CLOSED_BROKER_URLS = {
    "redis": "redis://127.0.0.1:1/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:1//",
}


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def broker_url(request: pytest.FixtureRequest) -> str:
    """The URL of a live broker: each test using it runs on Redis and on RabbitMQ."""
    return require_broker(request.param)


@pytest.fixture(params=["redis", "rabbitmq"])
def closed_broker_url(request: pytest.FixtureRequest) -> str:
    """A broker URL of each transport where nothing listens."""
    return CLOSED_BROKER_URLS[request.param]


class Env:
    """One test's world: a Celery app, an EventBus on it, its queues and its worker."""

    def __init__(
        self, broker_url: str, stack: ExitStack, label: str = "t", **app_options: Any
    ) -> None:
        self.broker_url = broker_url
        self.kind = "redis" if broker_url.startswith("redis") else "rabbitmq"
        self.uid = uuid.uuid4().hex[:12]
        self.queue = f"it.{label}.{self.uid}"
        self.dead_letter_queue = f"it.{label}.{self.uid}.dlq"
        self._stack = stack
        # Teardown runs in reverse: stop the worker, close the app, then delete queues.
        stack.callback(self._delete_broker_objects)
        self.app = make_app(broker_url, **app_options)
        stack.callback(self.app.close)
        self.bus = EventBus(
            self.app, default_queue=self.queue, dead_letter_queue=self.dead_letter_queue
        )
        self.worker: Any = None
        self.extra_queues: list[str] = []  # deleted at teardown too

    def name(self, short: str) -> str:
        """A handler name unique to this test (it is also the Celery task name)."""
        return f"it.{self.uid}.{short}"

    def start_worker(self, pool: str = "solo", consume_all: bool = False, **kwargs: Any) -> Any:
        """Start a real worker in a thread of this process, consuming the bus's queues.

        ``consume_all``: start it as ``celery worker`` without ``-Q`` would.
        """
        assert self.worker is None, "one worker per Env"
        self.worker = self._stack.enter_context(
            running_worker(
                self.app,
                None if consume_all else self.bus.queues,
                pool=pool,
                concurrency=kwargs.pop("concurrency", 1),
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
        """Declare the handler queue as the bus does (RabbitMQ: with its dead-letter exchange)."""
        declared = self.bus.handler_queue(self.queue)
        queue = (
            Queue(self.queue, Exchange(self.queue, type="direct"), routing_key=self.queue)
            if isinstance(declared, str)
            else declared
        )
        with self.connection() as conn:
            queue(conn.default_channel).declare()

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
        delete_queues(self.app, self.queue, self.dead_letter_queue, *self.extra_queues)
        delete_state(self.app)


@pytest.fixture
def rabbitmq_env(request: pytest.FixtureRequest) -> Iterator[Env]:
    """The test's app and bus on RabbitMQ (skips on a laptop without it, fails in CI)."""
    url = require_broker("rabbitmq")
    with ExitStack() as stack:
        yield Env(url, stack, request.node.originalname.removeprefix("test_")[:24])


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


#: The figure lines of this pytest run's integration tests, listed again at its end.
FIGURES: list[str] = []


@pytest.fixture
def figure() -> Callable[[str], str]:
    """Record a figure line: printed now, listed again at the end of the run."""

    def record(line: str) -> str:
        print(line)
        FIGURES.append(line)
        return line

    return record


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("integration figures")
        for line in FIGURES:
            terminalreporter.write_line(line)
