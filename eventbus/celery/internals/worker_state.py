"""Asking an in-process worker's event loop to stop, as Celery's own test worker does.

``celery.worker.state.should_terminate`` (undocumented) set to 0 makes every
worker loop of the process stop at its next turn (Celery's
``contrib.testing.worker`` stops its threads so). ``eventbus demo`` runs its
worker in a thread and stops it this way: closing its AMQP channels from
another thread would race the loop that reads them. Without the name, the
demo's worker thread (a daemon) ends with the process.
"""

from __future__ import annotations

from celery.worker import state as worker_state

from eventbus.celery.internals.compat import available

__all__ = ["ask_worker_loops_to_stop", "forget_stop_request"]


def ask_worker_loops_to_stop() -> bool:
    """Ask every worker loop of this process to stop; False if Celery has no way to be asked."""
    if not available("worker_stop"):
        return False
    worker_state.should_terminate = 0
    return True


def forget_stop_request() -> None:
    """Clear the request (a later worker of this process runs)."""
    if available("worker_stop"):
        worker_state.should_terminate = None
