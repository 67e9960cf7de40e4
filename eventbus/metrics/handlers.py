"""The metrics of handlers and publishing (see :mod:`eventbus.metrics`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import (
        REGISTRY,
        CollectorRegistry,
        Counter,
        Histogram,
    )
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.metrics_core import Metric
except ImportError as e:
    raise ImportError("pip install 'eventbus[metrics]'") from e

from celery import signals

from eventbus.bus.base import BaseEventBus
from eventbus.celery.dead_letter_signals import dead_letter_written
from eventbus.celery.deferral import Deferred
from eventbus.deadletter.record import DeadLetter
from eventbus.guarantees.delivery import DUPLICATE

if TYPE_CHECKING:
    from eventbus.celery.bus import EventBus

__all__ = [
    "DEFAULT_DEAD_LETTER_CACHE_SECONDS",
    "DURATION_BUCKETS",
    "OUTCOMES",
    "DeadLetterCollector",
    "HandlerMetrics",
    "PublishedEventsCollector",
    "register",
]

logger = logging.getLogger(__name__)

DEFAULT_DEAD_LETTER_CACHE_SECONDS = 5.0  #: a DLQ depth read is reused this long across scrapes
#: Histogram buckets of handler run time, seconds: handlers may run for minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Values of the ``outcome`` label: ``duplicate`` is a delivery an idempotent or
#: ordered handler skipped (already handled), ``deferred`` one sent back to wait
#: for its turn (ordering) or for another delivery's claim (idempotency).
OUTCOMES = ("success", "retry", "dead_lettered", "duplicate", "deferred")


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
        self.queue = queue or bus.dead_letter_queue
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

        from eventbus.metrics.handlers import register
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
    ``task_retry``, and ``dead_lettered`` when the record of a handler's failed
    run was written (:data:`~eventbus.celery.dead_letter_signals.dead_letter_written`,
    once per record a worker wrote; in the pool process or in the worker's
    dead-letter writer). Not from Celery's ``task_failure``: it fires twice for
    a hard time limit, and for a retry the broker did not take (the message
    goes back to its queue and runs again: no outcome yet), and before the
    record is written (it may not be). ``eventbus_handler_duration_seconds{handler}``:
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
            "Handler runs, by handler and outcome "
            "(success, retry, dead_lettered, duplicate, deferred).",
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
        dead_letter_written.connect(self._on_dead_letter, dispatch_uid=self._uid)

    def disconnect(self) -> None:
        for signal in _SIGNALS:
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

    def _on_success(self, sender: Any = None, result: object = None, **_: Any) -> None:
        self._count(sender, "duplicate" if result == DUPLICATE else "success")

    def _on_retry(self, sender: Any = None, reason: object = None, **_: Any) -> None:
        self._count(sender, "deferred" if isinstance(reason, Deferred) else "retry")

    def _on_dead_letter(
        self, sender: Any = None, record: DeadLetter | None = None, ran: bool = False, **_: Any
    ) -> None:
        # A message that never became a run is not a handler execution.
        if sender is self.bus and ran and record is not None and record.handler:
            self.executions.labels(record.handler, "dead_lettered").inc()

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


_SIGNALS = (
    signals.task_prerun,
    signals.task_postrun,
    signals.task_success,
    signals.task_retry,
    dead_letter_written,
)
