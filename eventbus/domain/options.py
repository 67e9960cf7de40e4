"""Per-handler delivery options and their defaults.

An option resolves handler → Celery configuration → the module default below.
The configuration keys are the option names prefixed with ``eventbus_``
(``eventbus_max_retries = 5`` in ``celeryconfig.py``, or
``CELERY_EVENTBUS_MAX_RETRIES`` in Django settings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from eventbus.errors import (
    EnvelopeDecodeError,
    PermanentHandlerError,
    StateStoreError,
    SubscriptionError,
)

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_RETRY_BACKOFF",
    "DEFAULT_RETRY_BACKOFF_MAX",
    "DEFAULT_RETRY_JITTER",
    "HandlerOptions",
]

DEFAULT_MAX_RETRIES = 5  #: retries after the first attempt; total attempts = max_retries + 1
DEFAULT_RETRY_BACKOFF = 2  #: seconds; the n-th retry waits up to backoff * 2**n (Celery autoretry)
DEFAULT_RETRY_BACKOFF_MAX = 600  #: seconds; cap of one wait, kept below Redis visibility_timeout
DEFAULT_RETRY_JITTER = True  #: full jitter: a wait is drawn from [0, backoff * 2**n]

#: Never retried, whatever ``retry_on`` says: retrying cannot fix them.
ALWAYS_PERMANENT: tuple[type[BaseException], ...] = (PermanentHandlerError, EnvelopeDecodeError)
#: Always retried (added to ``retry_on``): the handler never ran, its state store failed.
ALWAYS_RETRIED: tuple[type[BaseException], ...] = (StateStoreError,)

_CONFIGURABLE = ("max_retries", "retry_backoff", "retry_backoff_max", "retry_jitter", "idempotent")


@dataclass(frozen=True)
class HandlerOptions:
    """How one handler's task is delivered, retried and dead-lettered.

    ``retry_on`` lists the exception types that are retried
    (:class:`~eventbus.errors.StateStoreError` is always added: the handler
    did not run); ``dont_retry_on``
    the ones that go straight to the dead-letter queue (it wins over
    ``retry_on``; :class:`~eventbus.errors.PermanentHandlerError` is always
    in it). ``retry_backoff`` is whole seconds, as Celery's autoretry uses it.
    ``idempotent``: a (handler, event_id) that completed is not run again
    (:mod:`eventbus.guarantees.idempotency`); ``ordered``: each aggregate's events run
    one at a time in sequence order (:mod:`eventbus.guarantees.ordering`).
    """

    queue: str | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    retry_backoff: int = DEFAULT_RETRY_BACKOFF
    retry_backoff_max: int = DEFAULT_RETRY_BACKOFF_MAX
    retry_jitter: bool = DEFAULT_RETRY_JITTER
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    dont_retry_on: tuple[type[BaseException], ...] = ()
    time_limit: float | None = None
    soft_time_limit: float | None = None
    rate_limit: str | None = None
    idempotent: bool = False
    ordered: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def resolve(cls, given: Mapping[str, Any], config: Mapping[str, Any]) -> HandlerOptions:
        """Merge the options given to ``subscribe`` over the configured defaults."""
        known = {f.name for f in fields(cls)} - {"extra"}
        unknown = set(given) - known
        if unknown:
            raise SubscriptionError(
                f"unknown subscribe option(s): {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for name in _CONFIGURABLE:
            configured = config.get(f"eventbus_{name}")
            if configured is not None:
                values[name] = configured
        values.update({k: v for k, v in given.items() if v is not None})
        for name in ("retry_on", "dont_retry_on"):
            if name in values:
                values[name] = _exception_tuple(name, values[name])
        if "retry_on" in values:
            retry_on = values["retry_on"]
            values["retry_on"] = retry_on + tuple(
                exc for exc in ALWAYS_RETRIED if not issubclass(exc, retry_on)
            )
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        def bad(message: str) -> SubscriptionError:
            return SubscriptionError(f"invalid handler option: {message}")

        if not _is_int(self.max_retries) or self.max_retries < 0:
            raise bad(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        if not _is_int(self.retry_backoff) or self.retry_backoff < 0:
            # Celery's autoretry truncates the factor to whole seconds (and to
            # at least 1); accepting 0.5 would silently mean 1.
            raise bad(f"retry_backoff must be whole seconds >= 0, got {self.retry_backoff!r}")
        if not _is_int(self.retry_backoff_max) or self.retry_backoff_max < 1:
            raise bad(f"retry_backoff_max must be an int >= 1, got {self.retry_backoff_max!r}")
        for name in ("retry_jitter", "idempotent", "ordered"):
            if not isinstance(getattr(self, name), bool):
                raise bad(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("time_limit", "soft_time_limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise bad(f"{name} must be a positive number of seconds, got {value!r}")
        if self.queue is not None and (not isinstance(self.queue, str) or not self.queue):
            raise bad(f"queue must be a non-empty string, got {self.queue!r}")

    @property
    def permanent_errors(self) -> tuple[type[BaseException], ...]:
        return ALWAYS_PERMANENT + tuple(
            exc for exc in self.dont_retry_on if exc not in ALWAYS_PERMANENT
        )

    def with_queue(self, queue: str) -> HandlerOptions:
        return replace(self, queue=queue)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (for ``eventbus events``)."""
        return {
            "queue": self.queue,
            "max_retries": self.max_retries,
            "retry_backoff": self.retry_backoff,
            "retry_backoff_max": self.retry_backoff_max,
            "retry_jitter": self.retry_jitter,
            "retry_on": [exc.__name__ for exc in self.retry_on],
            "dont_retry_on": [exc.__name__ for exc in self.permanent_errors],
            "time_limit": self.time_limit,
            "soft_time_limit": self.soft_time_limit,
            "rate_limit": self.rate_limit,
            "idempotent": self.idempotent,
            "ordered": self.ordered,
        }


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _exception_tuple(name: str, value: object) -> tuple[type[BaseException], ...]:
    items = value if isinstance(value, (tuple, list, set, frozenset)) else (value,)
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise SubscriptionError(f"{name} must list exception classes, got {item!r}")
    return tuple(items)
