"""A warm shutdown of a prefork worker acks what its pool processes ran.

As a worker stops, Celery's consumer calls the pool's ``flush`` (in
``Consumer.on_close``), and the prefork pool's ``flush`` drops from its job
table every job whose start the parent has not read yet ("they will be
redelivered by the broker": celery/celery#6863, written for a lost
connection; celery/celery#3802 is the open report of unacked runs at a warm
shutdown). That holds after a lost connection. On a warm
shutdown the connection stays open until the pool is joined, and a job
already written to a pool process is one that process may run: it did, in
the fault test, for the last message written before SIGTERM. Its result then
finds no job (no ack is sent), the pool's join stops reading results once its
table is empty (the process waits 30 s for its result to be read before it
exits), and the broker delivers the message again when the channel closes:
the handler runs twice, and the shutdown takes 30 s longer.
``tests/faults/test_delivery_under_faults.py::test_a_warm_shutdown_acks_every_run_it_finished``
saw it in 2 of 3 runs on RabbitMQ (``duplicate_effects=2``), with eventbus's
optimisations on or off.

:class:`KeepStartedJobs`, a consumer step, wraps the pool's ``flush``: while
the consumer still has its connection (a warm or cold shutdown: after a lost
connection Celery clears ``consumer.connection`` before it flushes), a job
whose write to a pool process began stays in the table. Its result is read
at the join and its message acked, as for any job the process started. A job
the process never takes (the pool drains its queue as it stops) leaves its
message unacked, and the broker delivers it again, as before. A job never
written is dropped as Celery drops it.

It reads the pool's ``_cache`` and a job's ``_accepted`` and ``_write_to``:
checked once (:mod:`.compat`, feature ``started_jobs``, a fallback); without
them Celery's ``flush`` runs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import bootsteps

from eventbus.celery.internals.compat import available

__all__ = ["KeepStartedJobs", "keep_started_jobs"]

_WRAPPED = "_eventbus_keeps_started_jobs"


class KeepStartedJobs(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step: the pool's flush keeps the jobs a pool process may run."""

    name = "eventbus.KeepStartedJobs"

    def start(self, consumer: Any) -> None:
        pool = getattr(consumer, "pool", None)
        if pool is not None and available("started_jobs"):
            keep_started_jobs(pool, lambda: consumer.connection is not None)


def keep_started_jobs(task_pool: Any, connected: Callable[[], bool]) -> None:
    """Wrap ``task_pool.flush`` (a prefork pool's): started jobs stay while ``connected()``.

    Does nothing for a pool without a job table (solo, threads: they have no
    ``flush`` that drops jobs), or when it is wrapped already.
    """
    flush = getattr(task_pool, "flush", None)
    pool: Any = getattr(flush, "__self__", None)
    if (
        flush is None
        or getattr(flush, _WRAPPED, False)
        or not isinstance(getattr(pool, "_cache", None), dict)
    ):
        return

    def flush_keeping_started_jobs() -> Any:
        if not connected():
            # The connection is gone: no ack can reach the broker any more, and
            # it delivers every unacked message again. Celery's way.
            return flush()
        cache = pool._cache
        started = {
            job_id: job
            for job_id, job in tuple(cache.items())
            if not job._accepted and job._write_to is not None and not job.ready()
        }
        try:
            return flush()
        finally:
            for job_id, job in started.items():
                cache.setdefault(job_id, job)

    setattr(flush_keeping_started_jobs, _WRAPPED, True)
    task_pool.flush = flush_keeping_started_jobs
