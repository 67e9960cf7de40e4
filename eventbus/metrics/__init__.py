"""Prometheus metrics: events published, handler runs and durations, dead-letter depth.

Every name starts with ``eventbus_``:

- ``eventbus_events_published_total{event_type}``
- ``eventbus_handler_executions_total{handler,outcome}``; ``outcome`` is
  ``success``, ``retry``, ``dead_lettered`` (a terminal failure whose dead
  letter was written: one per record), ``duplicate`` (skipped: already
  handled) or ``deferred`` (sent back to wait for its turn or for another
  delivery's claim). A run whose message goes back to its queue without an
  outcome (its retry or its dead letter could not be sent) counts nothing:
  its next run does.
- ``eventbus_handler_duration_seconds{handler}``: a histogram, one observation
  per attempt
- ``eventbus_dead_letters{queue}``: the dead-letter queue's depth, read when scraped

In a worker, set ``eventbus_metrics_port`` (``EVENTBUS_METRICS_PORT``): the bus
calls :func:`eventbus.metrics.worker.start_worker_metrics` at ``worker_init`` and the worker's main
process serves ``http://ADDR:PORT/metrics``. Pool processes count into
prometheus_client's multiprocess files in ``PROMETHEUS_MULTIPROC_DIR``: when
unset, a private temporary directory removed at shutdown; a directory you set
is used as it is (empty it before the worker starts, as prometheus_client
asks). There the published counter counts the events handlers publish.

In a web process that publishes, :func:`register` adds the published counter
to a registry you already serve. Flower's ``/metrics`` has the task-level
figures; these complement it.
"""

from eventbus.metrics.handlers import (
    DEFAULT_DEAD_LETTER_CACHE_SECONDS,
    DURATION_BUCKETS,
    OUTCOMES,
    DeadLetterCollector,
    HandlerMetrics,
    PublishedEventsCollector,
    register,
)

__all__ = [
    "DEFAULT_DEAD_LETTER_CACHE_SECONDS",
    "DURATION_BUCKETS",
    "OUTCOMES",
    "DeadLetterCollector",
    "HandlerMetrics",
    "PublishedEventsCollector",
    "register",
]
