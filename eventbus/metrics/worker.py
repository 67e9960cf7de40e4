"""A worker's ``/metrics`` endpoint: eventbus's metrics under a prefork pool.

The worker's main process serves ``http://ADDR:PORT/metrics``; pool processes
count into prometheus_client's multiprocess files in
``PROMETHEUS_MULTIPROC_DIR`` (when unset, a private temporary directory
removed at shutdown). Started by the bus at ``worker_init`` when
``eventbus_metrics_port`` is set; see :mod:`eventbus.metrics.handlers` for the metrics.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from celery import signals
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from eventbus.celery.internals.prometheus_values import use_multiprocess_values
from eventbus.metrics.handlers import (
    DEFAULT_DEAD_LETTER_CACHE_SECONDS,
    DeadLetterCollector,
    HandlerMetrics,
)

if TYPE_CHECKING:
    from eventbus.celery.bus import EventBus

__all__ = ["WorkerMetrics", "start_worker_metrics"]

logger = logging.getLogger(__name__)

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

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
        self._restore_values: Callable[[], None] | None = None
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
        # prometheus_client picks its value class once, when first imported;
        # it was imported before the directory was set.
        self._restore_values = use_multiprocess_values()
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
        if self._restore_values is not None:
            self._restore_values()
            self._restore_values = None
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
