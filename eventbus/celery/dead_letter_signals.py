"""The signal a worker sends when it wrote a dead letter.

:data:`dead_letter_written` is sent once per record a worker wrote (the store
took it), in the process and thread that wrote it: a pool process for a
handler's own failure, the worker's dead-letter writer thread for failures
Celery reports in the main process and for messages that never became a task
run. A record submitted again while its write is pending, or after it was
written, is not sent again (its message delivered again in the same worker).
Receivers get ``record`` (the :class:`~eventbus.deadletter.record.DeadLetter`)
and ``ran``: True for a failed run of a handler, False for a message that
never became one (undecodable, rejected, oversized). The sender is the
:class:`~eventbus.EventBus`. Metrics count ``dead_lettered`` from it
(:mod:`eventbus.metrics.handlers`), not from Celery's ``task_failure``, which fires
twice for a hard time limit and also for a retry that goes back to its queue.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

__all__ = ["dead_letter_written"]

#: Sent with ``record`` and ``ran`` once a worker wrote a dead letter; the sender is the bus.
dead_letter_written = Signal(name="eventbus.dead_letter_written", providing_args={"record", "ran"})
