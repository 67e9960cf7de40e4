"""Metrics without a broker: the scrape-time collectors, signal counting, the worker's endpoint.

Handler runs go through Celery's real task signals: an eager app on the
embedded ``memory://`` transport runs the bus's tasks inside ``publish``.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery, signals
from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.parser import text_string_to_metric_families

from eventbus import Envelope, EventBus, InMemoryEventBus
from eventbus.metrics.handlers import DeadLetterCollector, HandlerMetrics, register
from eventbus.metrics.worker import start_worker_metrics
from tests.brokers import free_port
from tests.contract.events import ItemAdded, ItemRemoved
from tests.support import make_app, unique

ROOT = Path(__file__).resolve().parents[2]
OK, FLAKY, DOOMED = "unit.metrics.ok", "unit.metrics.flaky", "unit.metrics.doomed"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
def eager() -> Iterator[tuple[Celery, EventBus]]:
    """A bus whose tasks run inside publish, with a succeeding, a flaky and a doomed handler."""
    app = make_app("memory://", task_always_eager=True)
    bus = EventBus(app, default_queue=unique("unit-q"), dead_letter_queue=unique("unit-dlq"))
    attempts: Counter[str] = Counter()

    def ok(envelope: Envelope[ItemAdded]) -> None:
        bus.publish(ItemRemoved(sku=envelope.data.sku))  # a follow-up event

    def flaky(envelope: Envelope[ItemAdded]) -> None:
        attempts[str(envelope.event_id)] += 1
        if attempts[str(envelope.event_id)] == 1:
            raise ConnectionError("first attempt times out")

    def doomed(envelope: Envelope[ItemAdded]) -> None:
        raise ValueError("never works")

    retry_once = {"max_retries": 1, "retry_backoff": 1, "retry_jitter": False}
    bus.subscribe(ItemAdded, handler=ok, name=OK)
    bus.subscribe(ItemAdded, handler=flaky, name=FLAKY, **retry_once)
    bus.subscribe(ItemAdded, handler=doomed, name=DOOMED, **retry_once)
    yield app, bus
    bus.dead_letters.purge()
    app.close()


# -- read at scrape time -----------------------------------------------------


def test_published_events_are_read_from_the_bus_when_scraped() -> None:
    # Given a bus registered on a registry
    bus = InMemoryEventBus()
    registry = CollectorRegistry()
    register(bus, registry)
    # When events are published, some with no subscriber at all
    bus.publish(ItemAdded(sku="a", quantity=1))
    bus.publish(ItemAdded(sku="b", quantity=1))
    bus.publish(ItemRemoved(sku="a"))
    # Then a scrape shows the counts per event type
    text = generate_latest(registry).decode()
    name = "eventbus_events_published_total"
    assert value(text, name, event_type="contract.item_added") == 2
    assert value(text, name, event_type="contract.item_removed") == 1
    # And a later scrape sees later publishes
    bus.publish(ItemRemoved(sku="b"))
    assert value(generate_latest(registry).decode(), name, event_type="contract.item_removed") == 2


class CountingStore:
    """Stands in for a bus's dead-letter store: counts reads, can fail."""

    def __init__(self, depth: int = 0) -> None:
        self.depth = depth
        self.reads = 0
        self.error: Exception | None = None

    def count(self) -> int:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return self.depth


class Worker:
    """What the bus's worker signals read of a Celery worker: its app."""

    def __init__(self, app: Celery) -> None:
        self.app = app


def store_bus(store: CountingStore) -> Any:
    return SimpleNamespace(dead_letter_store=store)


def test_registering_the_depth_reads_nothing_until_a_scrape() -> None:
    store = CountingStore(depth=4)
    registry = CollectorRegistry(auto_describe=True)  # as prometheus_client's default one
    registry.register(DeadLetterCollector(store_bus(store), queue="dlq"))
    assert store.reads == 0
    text = generate_latest(registry).decode()
    assert value(text, "eventbus_dead_letters", queue="dlq") == 4
    assert store.reads == 1


def test_the_depth_is_reused_for_the_cache_time() -> None:
    # Given a collector caching for 5 s on a clock the test moves
    now = [100.0]
    store = CountingStore(depth=1)
    collector = DeadLetterCollector(
        store_bus(store), queue="dlq", cache_seconds=5, clock=lambda: now[0]
    )
    registry = CollectorRegistry()
    registry.register(collector)

    def depth() -> float | None:
        return value(generate_latest(registry).decode(), "eventbus_dead_letters", queue="dlq")

    assert depth() == 1
    # When the queue grows within the cache time, scrapes reuse the first read
    store.depth = 3
    now[0] += 4.9
    assert depth() == 1
    assert store.reads == 1
    # Then after it, the next scrape reads again
    now[0] += 0.2
    assert depth() == 3
    assert store.reads == 2


def test_a_failed_depth_read_exports_nothing_and_never_fails_the_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a broker that does not answer
    now = [0.0]
    store = CountingStore(depth=2)
    store.error = ConnectionRefusedError("broker down")
    bus = InMemoryEventBus()
    registry = CollectorRegistry()
    register(bus, registry)
    registry.register(
        DeadLetterCollector(store_bus(store), queue="dlq", cache_seconds=5, clock=lambda: now[0])
    )
    bus.publish(ItemAdded(sku="a", quantity=1))
    # When scraped, the scrape answers with everything else, and the failure is logged
    with caplog.at_level(logging.WARNING, logger="eventbus.metrics.handlers"):
        text = generate_latest(registry).decode()
    assert value(text, "eventbus_events_published_total", event_type="contract.item_added") == 1
    assert "eventbus_dead_letters" not in text
    assert "cannot read the depth of dead-letter queue 'dlq'" in caplog.text
    # And the broker is not asked again until the cache time has passed
    generate_latest(registry)
    assert store.reads == 1
    # Then once it answers again, the depth is back
    store.error = None
    now[0] += 5
    assert value(generate_latest(registry).decode(), "eventbus_dead_letters", queue="dlq") == 2


def test_the_depth_of_an_in_memory_bus_counts_its_dead_letters() -> None:
    bus = InMemoryEventBus()
    bus.subscribe(ItemAdded, handler=lambda e: 1 / 0, name="unit.fails", max_retries=0)
    registry = CollectorRegistry()
    registry.register(DeadLetterCollector(bus))
    bus.publish(ItemAdded(sku="a", quantity=1))
    text = generate_latest(registry).decode()
    assert value(text, "eventbus_dead_letters", queue="in-memory") == 1


# -- counted from Celery's task signals --------------------------------------


def test_handler_runs_are_counted_by_outcome_with_their_durations(
    eager: tuple[Celery, EventBus],
) -> None:
    # Given handler metrics on a bus: one handler succeeds, one fails once,
    # one always fails (one retry, then the dead-letter queue)
    _, bus = eager
    registry = CollectorRegistry()
    metrics = HandlerMetrics(bus, registry=registry)
    metrics.connect()
    runs = "eventbus_handler_executions_total"
    # Then every known handler starts at zero
    before = generate_latest(registry).decode()
    assert value(before, runs, handler=DOOMED, outcome="dead_lettered") == 0
    assert value(before, "eventbus_handler_duration_seconds_count", handler=OK) == 0

    # When two events are published
    bus.publish(ItemAdded(sku="a", quantity=1))
    bus.publish(ItemAdded(sku="b", quantity=1))

    # Then each run is counted once, by handler and outcome
    text = generate_latest(registry).decode()
    counted = {
        (handler, outcome): value(text, runs, handler=handler, outcome=outcome)
        for handler in (OK, FLAKY, DOOMED)
        for outcome in ("success", "retry", "dead_lettered")
    }
    assert counted == {
        (OK, "success"): 2,
        (OK, "retry"): 0,
        (OK, "dead_lettered"): 0,
        (FLAKY, "success"): 2,
        (FLAKY, "retry"): 2,
        (FLAKY, "dead_lettered"): 0,
        (DOOMED, "success"): 0,
        (DOOMED, "retry"): 2,
        (DOOMED, "dead_lettered"): 2,
    }
    # And each terminal failure is exactly one dead letter
    assert len(bus.dead_letters) == 2
    # And every attempt's duration is observed
    durations = "eventbus_handler_duration_seconds_count"
    assert value(text, durations, handler=OK) == 2
    assert value(text, durations, handler=FLAKY) == 4
    assert value(text, durations, handler=DOOMED) == 4
    # And the events the handlers published are counted after their runs
    published = "eventbus_events_published_total"
    assert value(text, published, event_type="contract.item_removed") == 2


def test_only_the_bus_own_handler_tasks_are_counted(eager: tuple[Celery, EventBus]) -> None:
    # Given handler metrics on a bus, and tasks that are not its handlers:
    # one of the same name on another app, one more task on its own app
    app, bus = eager
    registry = CollectorRegistry()
    metrics = HandlerMetrics(bus, registry=registry)
    metrics.connect()
    other = make_app("memory://", task_always_eager=True)

    def noop() -> None:
        pass

    namesake = other.task(name=OK, shared=False)(noop)
    plain = app.task(name="unit.metrics.plain", shared=False)(noop)
    # When they run
    namesake.apply()
    plain.apply()
    # Then nothing is counted
    text = generate_latest(registry).decode()
    assert value(text, "eventbus_handler_executions_total", handler=OK, outcome="success") == 0
    assert "unit.metrics.plain" not in text
    other.close()


def test_disconnected_metrics_count_no_more(eager: tuple[Celery, EventBus]) -> None:
    _, bus = eager
    registry = CollectorRegistry()
    metrics = HandlerMetrics(bus, registry=registry)
    metrics.connect()
    bus.publish(ItemAdded(sku="a", quantity=1))
    metrics.disconnect()
    bus.publish(ItemAdded(sku="b", quantity=1))
    text = generate_latest(registry).decode()
    assert value(text, "eventbus_handler_executions_total", handler=OK, outcome="success") == 1


# -- the worker's endpoint ---------------------------------------------------


def test_a_worker_with_a_port_serves_its_metrics_and_cleans_up_at_shutdown(
    eager: tuple[Celery, EventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker whose configuration sets a metrics port
    app, bus = eager
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    port = free_port()
    app.conf.eventbus_metrics_port = port
    app.conf.eventbus_metrics_cache_seconds = 0
    value_class = values.ValueClass
    worker = Worker(app)
    # When it starts (solo: the tasks run in this process)
    signals.worker_init.send(sender=worker)
    try:
        directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        assert directory.is_dir()
        bus.publish(ItemAdded(sku="a", quantity=1))
        # Then its endpoint shows the runs (through the multiprocess files)
        # and the dead-letter queue's depth
        text = scrape(port)
        runs = "eventbus_handler_executions_total"
        assert value(text, runs, handler=FLAKY, outcome="retry") == 1
        assert value(text, runs, handler=DOOMED, outcome="dead_lettered") == 1
        assert value(text, "eventbus_handler_duration_seconds_count", handler=OK) == 1
        assert value(text, "eventbus_dead_letters", queue=bus.dead_letter_queue) == 1
        assert list(directory.glob("counter_*.db"))
    finally:
        # When it shuts down
        signals.worker_shutdown.send(sender=worker)
    # Then the endpoint, the directory and the environment variable are gone
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        scrape(port)
    assert not directory.exists()
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    assert values.ValueClass is value_class


def test_a_port_already_taken_is_logged_and_leaves_nothing_behind(
    eager: tuple[Celery, EventBus],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, bus = eager
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    value_class = values.ValueClass
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="eventbus.metrics.handlers"):
            metrics = start_worker_metrics(bus, port=port)
    assert f"cannot serve on 127.0.0.1:{port}" in caplog.text
    assert metrics.directory is not None and not Path(metrics.directory).exists()
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    assert values.ValueClass is value_class
    # And its handler metrics were disconnected: publishing still works, uncounted
    bus.publish(ItemAdded(sku="a", quantity=1))


def test_a_worker_without_a_port_imports_no_metrics_code() -> None:
    code = (
        "import sys\n"
        "from celery import signals\n"
        "from eventbus import EventBus\n"
        "from tests.support import make_app\n"
        "app = make_app('memory://')\n"
        "EventBus(app, default_queue='q')\n"
        "class Worker:\n    app = app\n"
        "signals.worker_init.send(sender=Worker())\n"
        "names = ('eventbus.metrics.handlers', 'prometheus_client')\n"
        "print(sorted(m for m in names if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
