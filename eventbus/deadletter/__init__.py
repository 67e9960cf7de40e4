"""The dead-letter queue: records of failures, their storage, and replay."""

from eventbus.deadletter.queue import DeadLetterQueue
from eventbus.deadletter.record import DeadLetter, DeadLetterReason
from eventbus.deadletter.store import DEFAULT_DEAD_LETTER_QUEUE, DeadLetterStore

__all__ = [
    "DEFAULT_DEAD_LETTER_QUEUE",
    "DeadLetter",
    "DeadLetterQueue",
    "DeadLetterReason",
    "DeadLetterStore",
]
