"""Metrics: a real ``celery worker`` serves /metrics; the test scrapes it after a run.

The worker is a subprocess (``tests/integration/metrics_app.py``) so its pool
really forks: handler runs are counted in the pool processes and summed by the
main process's endpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eventbus.metrics.handlers import register
from tests.brokers import free_port

from . import metrics_app
from .conftest import Env
from .helpers import OrderPlaced, assert_stays, wait_for

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 3

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(port: int) -> Samples | None:
    """The worker's metrics, or None while it does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return parse(response.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


@contextmanager
def celery_worker(
    env: Env, pool: str, port: int, tmp_path: Path, handlers: str = "outcomes"
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery worker`` on the env's queue, in a process group of its own, stopped in time."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EVENTBUS_", "CELERY_", "PROMETHEUS_"))
    }
    environ.update(
        EVENTBUS_METRICS_TEST_BROKER=env.broker_url,
        EVENTBUS_METRICS_TEST_QUEUE=env.queue,
        EVENTBUS_METRICS_TEST_DLQ=env.dead_letter_queue,
        EVENTBUS_METRICS_PORT=str(port),
        EVENTBUS_METRICS_TEST_HANDLERS=handlers,
        PYTHONPATH=str(ROOT),
        TMPDIR=str(tmp_path),  # where the worker's private multiprocess directory goes
    )
    command = [
        sys.executable, "-m", "celery", "-A", "tests.integration.metrics_app", "worker",
        f"--pool={pool}", "--concurrency=2", "-Q", env.queue, "-n", f"metrics-{env.uid}@%h",
        "--loglevel=INFO", "--without-heartbeat", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with (tmp_path / "worker.log").open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)  # warm shutdown: worker_shutdown runs
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group: pool processes too
            proc.wait(timeout=5)


def worker_log(tmp_path: Path) -> str:
    """The worker's metrics lines (did it serve?), then the end of its log."""
    text = (tmp_path / "worker.log").read_text(errors="replace")
    metrics_lines = [line for line in text.splitlines() if "eventbus metrics" in line]
    return "\n".join([*metrics_lines, "...", text[-4000:]])


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_a_worker_serves_outcomes_durations_and_dead_letter_depth(
    env: Env, pool: str, tmp_path: Path
) -> None:
    # Given a real worker with metrics on a free port, running three handlers of
    # OrderPlaced: one succeeds, one fails once then succeeds, one always fails
    # (one retry, then the dead-letter queue)
    metrics_app.subscribe_handlers(env.bus)
    env.declare_handler_queue()
    published = CollectorRegistry()
    register(env.bus, published)
    port = free_port()
    with celery_worker(env, pool, port, tmp_path) as proc:
        # When three events are published
        for n in range(EVENTS):
            env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))

        # Then the worker's endpoint counts every run by handler and outcome,
        # observes every attempt's duration, and reads the DLQ's depth
        ship, flaky, doomed = metrics_app.SHIP, metrics_app.FLAKY, metrics_app.DOOMED
        runs = "eventbus_handler_executions_total"
        durations = "eventbus_handler_duration_seconds_count"
        expected = {
            key(runs, handler=ship, outcome="success"): EVENTS,
            key(runs, handler=ship, outcome="retry"): 0,
            key(runs, handler=ship, outcome="dead_lettered"): 0,
            key(runs, handler=flaky, outcome="success"): EVENTS,
            key(runs, handler=flaky, outcome="retry"): EVENTS,
            key(runs, handler=flaky, outcome="dead_lettered"): 0,
            key(runs, handler=doomed, outcome="success"): 0,
            key(runs, handler=doomed, outcome="retry"): EVENTS,
            key(runs, handler=doomed, outcome="dead_lettered"): EVENTS,
            key(durations, handler=ship): EVENTS,
            key(durations, handler=flaky): 2 * EVENTS,
            key(durations, handler=doomed): 2 * EVENTS,
            key("eventbus_dead_letters", queue=env.dead_letter_queue): EVENTS,
            # the events the handlers published (OrderShipped, by the ship handler)
            key("eventbus_events_published_total", event_type="it.order.shipped"): EVENTS,
        }
        seen: dict[object, float | None] = {}

        def all_counted() -> bool:
            samples = scrape(port) or {}
            seen.clear()
            seen.update({k: samples.get(k) for k in expected})
            return seen == expected or proc.poll() is not None

        wait_for(
            all_counted,
            timeout=20,
            message=lambda: f"scraped {seen}\nworker log:\n{worker_log(tmp_path)}",
        )
        assert proc.poll() is None, worker_log(tmp_path)
        # And the gauge is the queue's depth as the bus sees it
        assert len(env.bus.dead_letters) == EVENTS
        # And the counts live in a private multiprocess directory, written by
        # the pool processes under prefork
        [directory] = tmp_path.glob("eventbus-metrics-*")
        writers = {int(f.stem.rsplit("_", 1)[1]) for f in directory.glob("counter_*.db")}
        if pool == "prefork":
            assert writers - {proc.pid}, f"only the main process wrote counters: {writers}"
        else:
            assert writers == {proc.pid}

    # And the publishing process exports what it published, read at scrape time
    local = parse(generate_latest(published).decode())
    assert local[key("eventbus_events_published_total", event_type="it.order.placed")] == EVENTS
    # And the worker shut down cleanly and removed its directory
    assert proc.returncode == 0, worker_log(tmp_path)
    assert not list(tmp_path.glob("eventbus-metrics-*"))


def test_a_dead_letter_counts_once_when_written_and_a_retry_sent_back_is_no_dead_letter(
    env: Env, tmp_path: Path
) -> None:
    # Given a real prefork worker with metrics, running a handler that overruns its
    # hard time limit (Celery reports that failure twice), and one whose first
    # retry the broker does not take (its message goes back to the queue: no
    # dead letter), whose next run retries and succeeds
    metrics_app.subscribe_limit_handlers(env.bus)
    env.declare_handler_queue()
    port = free_port()
    with celery_worker(env, "prefork", port, tmp_path, handlers="limits") as proc:
        # When three events are published
        for n in range(EVENTS):
            env.bus.publish(OrderPlaced(order_id=f"o-{n}", quantity=1))

        # Then each timed-out run counts one dead letter (its one record), and the
        # retry that went back to the queue counts none: only the retry sent and
        # the success that followed
        timed, unsent = metrics_app.TIMED, metrics_app.RETRY_UNSENT
        runs = "eventbus_handler_executions_total"
        expected = {
            key(runs, handler=timed, outcome="dead_lettered"): EVENTS,
            key(runs, handler=timed, outcome="retry"): 0,
            key(runs, handler=timed, outcome="success"): 0,
            key(runs, handler=unsent, outcome="dead_lettered"): 0,
            key(runs, handler=unsent, outcome="retry"): EVENTS,
            key(runs, handler=unsent, outcome="success"): EVENTS,
            key("eventbus_dead_letters", queue=env.dead_letter_queue): EVENTS,
        }
        seen: dict[object, float | None] = {}

        def counted() -> dict[object, float | None]:
            samples = scrape(port) or {}
            seen.clear()
            seen.update({k: samples.get(k) for k in expected})
            return seen

        wait_for(
            lambda: counted() == expected or proc.poll() is not None,
            timeout=40,
            message=lambda: f"scraped {seen}\nworker log:\n{worker_log(tmp_path)}",
        )
        # and it stays so (no second count of a time limit arrives late)
        assert_stays(
            lambda: counted() == expected,
            duration=1.5,
            interval=0.3,
            message=lambda: f"scraped {seen}\nworker log:\n{worker_log(tmp_path)}",
        )
        assert proc.poll() is None, worker_log(tmp_path)
        records = env.bus.dead_letters.list()
        assert sorted((r.handler, r.reason) for r in records) == [(timed, "time_limit")] * EVENTS
