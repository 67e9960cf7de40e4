"""A prefork pool's flush at a worker's stop keeps the jobs a pool process may run.

Celery's own ``AsynPool.flush`` runs here, on a stand-in for the pool (no
processes: the pool is closing, so ``flush`` writes nothing), with billiard's
own job objects. The fault test that shows the effect on a real worker:
``tests/faults/test_delivery_under_faults.py::test_a_warm_shutdown_acks_every_run_it_finished``.
"""

from __future__ import annotations

import types
from typing import Any

from billiard.pool import CLOSE, ApplyResult  # type: ignore[import-untyped]
from celery.concurrency.asynpool import AsynPool

from eventbus.celery.internals.warm_shutdown import keep_started_jobs


class _Process:
    inqW_fd = 7

    def _is_alive(self) -> bool:
        return True


class _ClosingPool:
    """What ``AsynPool.flush`` reads of its pool, once the pool is closing."""

    def __init__(self) -> None:
        self._state = CLOSE
        self._cache: dict[int, Any] = {}
        self.synack = False
        self.outbound_buffer: list[Any] = []
        self._active_writers: set[Any] = set()
        self._active_writes: set[Any] = set()
        self._busy_workers: set[int] = set()
        self.flush = types.MethodType(AsynPool.flush, self)

    def maintain_pool(self) -> None:
        pass


class _TaskPool:
    """Celery's prefork TaskPool holds the AsynPool's bound ``flush``."""

    def __init__(self, pool: _ClosingPool) -> None:
        self.flush = pool.flush


def _jobs(pool: _ClosingPool) -> dict[str, ApplyResult]:
    never_written = ApplyResult(pool._cache, None)
    written = ApplyResult(pool._cache, None)
    written._write_to = _Process()
    accepted = ApplyResult(pool._cache, None)
    accepted._write_to = _Process()
    accepted._accepted = True
    written_and_done = ApplyResult(pool._cache, None)
    written_and_done._write_to = _Process()
    written_and_done._event.set()  # its result was read (its start not yet)
    return {
        "never_written": never_written,
        "written": written,
        "accepted": accepted,
        "written_and_done": written_and_done,
    }


def _left(pool: _ClosingPool, jobs: dict[str, ApplyResult]) -> set[str]:
    return {name for name, job in jobs.items() if job._job in pool._cache}


def test_celerys_flush_drops_a_job_a_pool_process_may_be_running() -> None:
    # Given a closing pool with a job written to a process whose start the
    # parent has not read yet
    pool = _ClosingPool()
    jobs = _jobs(pool)

    # When Celery's own flush runs
    pool.flush()

    # Then only the accepted job stays: the written one's result would find no
    # job, and its message would not be acked (what this module is for)
    assert _left(pool, jobs) == {"accepted"}


def test_while_connected_a_written_job_stays_and_a_never_written_one_goes() -> None:
    # Given the consumer's connection still open (a warm shutdown)
    pool = _ClosingPool()
    jobs = _jobs(pool)
    task_pool = _TaskPool(pool)
    keep_started_jobs(task_pool, lambda: True)

    # When the consumer flushes the pool as it closes
    task_pool.flush()

    # Then the job a process may run stays (its result is read at the join and
    # its message acked); a job never written goes, as Celery drops it
    assert _left(pool, jobs) == {"accepted", "written"}


def test_after_a_lost_connection_celerys_flush_runs_unchanged() -> None:
    pool = _ClosingPool()
    jobs = _jobs(pool)
    task_pool = _TaskPool(pool)
    keep_started_jobs(task_pool, lambda: False)

    task_pool.flush()

    # The broker delivers every unacked message again: nothing to keep
    assert _left(pool, jobs) == {"accepted"}


def test_it_wraps_once_and_leaves_a_pool_without_a_job_table_alone() -> None:
    pool = _ClosingPool()
    task_pool = _TaskPool(pool)
    keep_started_jobs(task_pool, lambda: True)
    wrapped = task_pool.flush
    keep_started_jobs(task_pool, lambda: True)
    assert task_pool.flush is wrapped

    class _ThreadsPool:
        def flush(self) -> None:
            pass

    threads = _ThreadsPool()
    keep_started_jobs(threads, lambda: True)
    assert threads.flush.__func__ is _ThreadsPool.flush  # type: ignore[attr-defined]


def test_a_pool_without_flush_is_left_alone() -> None:
    solo = types.SimpleNamespace(flush=None)
    keep_started_jobs(solo, lambda: True)
    assert solo.flush is None
