"""Prometheus metrics: events published, handler runs and durations, dead-letter depth.

Every name starts with ``eventbus_``:

- ``eventbus_events_published_total{event_type}``
- ``eventbus_handler_executions_total{handler,outcome}``; ``outcome`` is
  ``success``, ``retry`` or ``dead_lettered`` (a terminal failure: exactly one
  dead letter each)
- ``eventbus_handler_duration_seconds{handler}``: a histogram, one observation
  per attempt
- ``eventbus_dead_letters{queue}``: the dead-letter queue's depth, read when scraped

In a worker, set ``eventbus_metrics_port`` (``EVENTBUS_METRICS_PORT``): the bus
calls :func:`start_worker_metrics` at ``worker_init`` and the worker's main
process serves ``http://ADDR:PORT/metrics``. Pool processes count into
prometheus_client's multiprocess files in ``PROMETHEUS_MULTIPROC_DIR``: when
unset, a private temporary directory removed at shutdown; a directory you set
is used as it is (empty it before the worker starts, as prometheus_client
asks). There the published counter counts the events handlers publish.

In a web process that publishes, :func:`register` adds the published counter
to a registry you already serve. Flower's ``/metrics`` has the task-level
figures; these complement it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

try:
    from prometheus_client import (
        REGISTRY,
        CollectorRegistry,
        Counter,
        Histogram,
        start_http_server,
        values,
    )
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.metrics_core import Metric
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
except ImportError as e:
    raise ImportError("pip install 'eventbus[metrics]'") from e

from celery import signals

from eventbus.bus import BaseEventBus
from eventbus.celery_bus import EventBus

__all__ = [
    "DEFAULT_DEAD_LETTER_CACHE_SECONDS",
    "DURATION_BUCKETS",
    "OUTCOMES",
    "DeadLetterCollector",
    "HandlerMetrics",
    "PublishedEventsCollector",
    "WorkerMetrics",
    "register",
    "start_worker_metrics",
]

logger = logging.getLogger(__name__)

DEFAULT_DEAD_LETTER_CACHE_SECONDS = 5.0  #: a DLQ depth read is reused this long across scrapes
#: Histogram buckets of handler run time, seconds: handlers may run for minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OUTCOMES = ("success", "retry", "dead_lettered")  #: values of the ``outcome`` label

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# -- read at scrape time ---------------------------------------------------


class PublishedEventsCollector:
    """``eventbus_events_published_total{event_type}``, read from ``bus.published`` when scraped.

    ``publish`` already keeps that count; nothing is added to its path. The
    count is the publishing process's own.
    """

    def __init__(self, bus: BaseEventBus) -> None:
        self.bus = bus

    def describe(self) -> Iterable[Metric]:
        return [_published_family()]

    def collect(self) -> Iterable[Metric]:
        family = _published_family()
        for event_type, count in sorted(dict(self.bus.published).items()):
            family.add_metric([event_type], count)
        return [family]


class DeadLetterCollector:
    """``eventbus_dead_letters{queue}``: the depth of the bus's dead-letter queue.

    Read from the broker when scraped, at most once per ``cache_seconds``, one
    read at a time (a scrape arriving during a read gets the previous value).
    A failed read is logged and exports nothing: it never fails the scrape.
    ``queue`` labels the value (default: the bus's dead-letter queue name).
    """

    def __init__(
        self,
        bus: BaseEventBus,
        *,
        queue: str | None = None,
        cache_seconds: float = DEFAULT_DEAD_LETTER_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.queue = queue or (bus.dead_letter_queue if isinstance(bus, EventBus) else "in-memory")
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._reading = threading.Lock()
        self._read_at: float | None = None
        self._depth: int | None = None

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        depth = self._current_depth()
        if depth is None:
            return []
        family = self._family()
        family.add_metric([self.queue], depth)
        return [family]

    def _current_depth(self) -> int | None:
        if self._read_at is not None and self._clock() - self._read_at < self.cache_seconds:
            return self._depth
        if not self._reading.acquire(blocking=False):
            return self._depth
        try:
            try:
                depth: int | None = self.bus.dead_letter_store.count()
            except Exception:  # any broker trouble: the scrape must still answer
                logger.warning(
                    "eventbus metrics: cannot read the depth of dead-letter queue %r",
                    self.queue,
                    exc_info=True,
                )
                depth = None
            # A failure is cached too: a broker that is down is not asked on every scrape.
            self._depth, self._read_at = depth, self._clock()
            return depth
        finally:
            self._reading.release()

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "eventbus_dead_letters", "Dead letters waiting in the queue.", labels=["queue"]
        )


def register(bus: BaseEventBus, registry: CollectorRegistry = REGISTRY) -> PublishedEventsCollector:
    """Export this process's published-event counts on ``registry``; return the collector.

    For web processes that publish; serve the registry as you already do
    (``prometheus_client.make_wsgi_app()``, ``django-prometheus``...)::

        from eventbus.metrics import register
        register(bus)  # prometheus_client's default registry

    ``registry.unregister(collector)`` takes it off again.
    """
    collector = PublishedEventsCollector(bus)
    registry.register(collector)
    return collector


def _published_family() -> CounterMetricFamily:
    return CounterMetricFamily(
        "eventbus_events_published", "Events published, by event type.", labels=["event_type"]
    )


# -- counted from Celery's task signals ------------------------------------


class HandlerMetrics:
    """Counts one bus's handler runs from Celery's task signals, in the process running them.

    ``eventbus_handler_executions_total{handler,outcome}``: ``task_success``,
    ``task_retry``, and ``task_failure`` (terminal: the bus dead-letters each
    one) as ``dead_lettered``. ``eventbus_handler_duration_seconds{handler}``:
    ``task_prerun`` to ``task_postrun``. ``eventbus_events_published_total``:
    what ``bus.published`` grew by, added after each run (the events handlers
    publish). Signals are process-wide: only the bus's own tasks count.

    ``registry=None`` registers nowhere (prometheus_client's multiprocess
    mode). :meth:`connect` starts counting; the signals hold this object
    weakly, so keep a reference.
    """

    def __init__(self, bus: EventBus, *, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.bus = bus
        self.executions = Counter(
            "eventbus_handler_executions",
            "Handler runs, by handler and outcome (success, retry, dead_lettered).",
            ["handler", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "eventbus_handler_duration_seconds",
            "Run time of one handler attempt, seconds.",
            ["handler"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.published = Counter(
            "eventbus_events_published",
            "Events published, by event type.",
            ["event_type"],
            registry=registry,
        )
        # Known handlers start at zero, so rate() and increase() count their first runs.
        for sub in bus.subscriptions():
            self.duration.labels(sub.name)
            for outcome in OUTCOMES:
                self.executions.labels(sub.name, outcome)
        self._started: dict[str, float] = {}
        self._published_seen = dict(bus.published)
        self._published_lock = threading.Lock()
        self._uid = f"eventbus-metrics-{id(self)}"

    def connect(self) -> None:
        signals.task_prerun.connect(self._on_prerun, dispatch_uid=self._uid)
        signals.task_postrun.connect(self._on_postrun, dispatch_uid=self._uid)
        signals.task_success.connect(self._on_success, dispatch_uid=self._uid)
        signals.task_retry.connect(self._on_retry, dispatch_uid=self._uid)
        signals.task_failure.connect(self._on_failure, dispatch_uid=self._uid)

    def disconnect(self) -> None:
        for signal in _TASK_SIGNALS:
            signal.disconnect(dispatch_uid=self._uid)

    def _on_prerun(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        if task_id and self.bus.owns(sender):
            self._started[task_id] = time.perf_counter()

    def _on_postrun(self, sender: Any = None, task_id: str | None = None, **_: Any) -> None:
        started = self._started.pop(task_id, None) if task_id else None
        if started is None:
            return  # not a handler of this bus
        self.duration.labels(sender.name).observe(time.perf_counter() - started)
        self._count_published()

    def _on_success(self, sender: Any = None, **_: Any) -> None:
        self._count(sender, "success")

    def _on_retry(self, sender: Any = None, **_: Any) -> None:
        self._count(sender, "retry")

    def _on_failure(self, sender: Any = None, **_: Any) -> None:
        self._count(sender, "dead_lettered")

    def _count(self, task: Any, outcome: str) -> None:
        if self.bus.owns(task):
            self.executions.labels(task.name, outcome).inc()

    def _count_published(self) -> None:
        with self._published_lock:  # two pool threads must not add the same growth twice
            current = dict(self.bus.published)
            for event_type, total in current.items():
                grown = total - self._published_seen.get(event_type, 0)
                if grown > 0:
                    self.published.labels(event_type).inc(grown)
            self._published_seen = current


_TASK_SIGNALS = (
    signals.task_prerun,
    signals.task_postrun,
    signals.task_success,
    signals.task_retry,
    signals.task_failure,
)


# -- the worker's endpoint -------------------------------------------------

_FORK_WAIT_SECONDS = 5.0  # a fork waits this long for a scrape (kombu's connect timeout is 4 s)


class _ForkGuard:
    """Keeps a scrape (in the server's thread) and a fork of the pool (in the main thread) apart.

    kombu tries ``import librabbitmq`` in every ``Connection()``; a pool process
    forked while the server thread holds that import's lock waits on it forever.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held_for_fork = False
        os.register_at_fork(
            before=self._before_fork,
            after_in_parent=self._after_fork,
            after_in_child=self._after_fork,
        )

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def _before_fork(self) -> None:
        # Bounded: a scrape stuck on an unreachable broker must not stop the pool.
        self._held_for_fork = self._lock.acquire(timeout=_FORK_WAIT_SECONDS)

    def _after_fork(self) -> None:
        if self._held_for_fork:
            self._held_for_fork = False
            self._lock.release()


_FORK_GUARD: list[_ForkGuard] = []


def _fork_guard() -> _ForkGuard:
    if not _FORK_GUARD:
        _FORK_GUARD.append(_ForkGuard())  # its at-fork hooks last the process's life: once
    return _FORK_GUARD[0]


class _ForkSafeRegistry(CollectorRegistry):
    def collect(self) -> Iterable[Metric]:
        with _fork_guard():
            return list(super().collect())


class WorkerMetrics:
    """A worker's ``/metrics``: :class:`HandlerMetrics` in multiprocess mode, plus the DLQ depth.

    :meth:`start` runs in the worker's main process before the pool forks;
    :meth:`stop` runs at ``worker_shutdown`` (connected by :meth:`start`).
    ``port`` 0 picks a free port; :attr:`port` is the one bound.
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        port: int,
        addr: str = "127.0.0.1",
        cache_seconds: float = DEFAULT_DEAD_LETTER_CACHE_SECONDS,
    ) -> None:
        self.bus = bus
        self.port = port
        self.addr = addr
        self.cache_seconds = cache_seconds
        self.directory: str | None = None
        self.handlers: HandlerMetrics | None = None
        self.registry: CollectorRegistry = _ForkSafeRegistry()
        self._pid = os.getpid()
        self._own_directory = False
        self._value_class: Any = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._uid = f"eventbus-worker-metrics-{id(self)}"

    def start(self) -> None:
        _fork_guard()  # before the pool forks
        self._pid = os.getpid()
        self.directory = os.environ.get(_MULTIPROC_ENV) or os.environ.get(_MULTIPROC_ENV.lower())
        if self.directory:
            os.makedirs(self.directory, exist_ok=True)
        else:
            self.directory = tempfile.mkdtemp(prefix="eventbus-metrics-")
            self._own_directory = True
            os.environ[_MULTIPROC_ENV] = self.directory  # inherited by the pool processes
        if not getattr(values.ValueClass, "_multiprocess", False):
            # prometheus_client picks its value class once, when first imported;
            # it was imported before the directory was set.
            self._value_class = values.ValueClass
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        self.handlers = HandlerMetrics(self.bus, registry=None)
        self.handlers.connect()
        MultiProcessCollector(self.registry, path=self.directory)  # type: ignore[no-untyped-call]
        self.registry.register(DeadLetterCollector(self.bus, cache_seconds=self.cache_seconds))
        try:
            self._server, self._thread = start_http_server(
                self.port, addr=self.addr, registry=self.registry
            )
        except OSError:
            logger.error(
                "eventbus metrics: cannot serve on %s:%s; this worker exports no metrics",
                self.addr,
                self.port,
                exc_info=True,
            )
            self.stop()
            return
        self.port = int(self._server.server_port)
        signals.worker_process_init.connect(
            self._on_process_init, weak=False, dispatch_uid=self._uid
        )
        signals.worker_process_shutdown.connect(
            self._on_process_shutdown, weak=False, dispatch_uid=self._uid
        )
        signals.worker_shutdown.connect(
            self._on_worker_shutdown, weak=False, dispatch_uid=self._uid
        )
        # worker_init comes before Celery sets up logging: say it once the worker is ready.
        signals.worker_ready.connect(self._on_worker_ready, weak=False, dispatch_uid=self._uid)

    def stop(self) -> None:
        if os.getpid() != self._pid:
            return  # a forked pool process: the server and the directory are the parent's
        signals.worker_process_init.disconnect(dispatch_uid=self._uid)
        signals.worker_process_shutdown.disconnect(dispatch_uid=self._uid)
        signals.worker_shutdown.disconnect(dispatch_uid=self._uid)
        signals.worker_ready.disconnect(dispatch_uid=self._uid)
        if self.handlers is not None:
            self.handlers.disconnect()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._value_class is not None:
            values.ValueClass.close_all_files()
            values.ValueClass = self._value_class
            self._value_class = None
        if self._own_directory and self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            if os.environ.get(_MULTIPROC_ENV) == self.directory:
                del os.environ[_MULTIPROC_ENV]
            self._own_directory = False

    def _on_process_init(self, **_: Any) -> None:
        if os.getpid() != self._pid and self._server is not None:
            # A forked pool process inherits the listening socket; only the
            # main process serves, and a pool process outliving it must not
            # keep the port.
            self._server.socket.close()

    def _on_process_shutdown(self, pid: int | None = None, **_: Any) -> None:
        if self.directory:
            mark_process_dead(pid or os.getpid(), self.directory)  # type: ignore[no-untyped-call]

    def _on_worker_ready(self, **_: Any) -> None:
        logger.info("eventbus metrics on http://%s:%d/metrics", self.addr, self.port)

    def _on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is self.bus.app:
            self.stop()


def start_worker_metrics(
    bus: EventBus,
    *,
    port: int | None = None,
    addr: str | None = None,
    cache_seconds: float | None = None,
) -> WorkerMetrics:
    """Serve this worker's metrics until ``worker_shutdown``.

    The bus calls it at ``worker_init`` when ``eventbus_metrics_port`` is set.
    Defaults come from the settings ``eventbus_metrics_port``,
    ``eventbus_metrics_addr`` (``127.0.0.1``) and
    ``eventbus_metrics_cache_seconds`` (how long a DLQ depth read is reused, 5).
    """
    conf = bus.app.conf
    if port is None:
        port = int(conf.get("eventbus_metrics_port") or 0)
    if cache_seconds is None:
        configured = conf.get("eventbus_metrics_cache_seconds")
        cache_seconds = (
            DEFAULT_DEAD_LETTER_CACHE_SECONDS if configured is None else float(configured)
        )
    metrics = WorkerMetrics(
        bus,
        port=port,
        addr=addr or str(conf.get("eventbus_metrics_addr") or "127.0.0.1"),
        cache_seconds=cache_seconds,
    )
    metrics.start()
    return metrics
