"""The state store's failures as one error, :class:`~eventbus.errors.StateStoreError`.

redis-py raises its own errors: ``ConnectionError`` (refused, reset),
``TimeoutError``, ``AuthenticationError`` (a subclass of its
``ConnectionError``), ``ResponseError`` (``NOPERM``, ``OOM``, ``WRONGTYPE``,
...), and ``ValueError`` from ``Redis.from_url`` for a URL it cannot parse.
Let through, they reached the caller of ``publish`` (an ordered event's
sequence number), a handler's delivery and the CLI as redis-py's, naming
nothing of eventbus's. The Redis stores of :mod:`eventbus.guarantees.idempotency` and
:mod:`eventbus.guarantees.ordering` run every call inside :meth:`StateErrors.translated`,
which raises :class:`~eventbus.errors.StateStoreError` instead: the store
(its URL, password masked), the setting that URL came from, what was being
done, and the problem in a few words (:func:`~eventbus.broker_errors.describe_broker_error`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from eventbus.broker_errors import describe_broker_error
from eventbus.errors import StateStoreError
from eventbus.redaction import redact, redact_url, safe_cause

__all__ = ["StateErrors"]


class StateErrors:
    """Translates a Redis state store's errors; one per store (its URL and setting)."""

    def __init__(self, url: str, setting: str) -> None:
        # Imported here: redis-py costs ~8 MiB and ~150 ms to import, and only
        # a Redis state store makes one of these.
        from redis.exceptions import RedisError

        self._caught: tuple[type[BaseException], ...] = (RedisError,)
        self.url = url
        self.setting = setting

    @classmethod
    def of_client(cls, client: Any) -> StateErrors:
        """For a store given a client of its own: named by the client's address."""
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
        where = f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        return cls(where, "the client given to the store")

    @property
    def where(self) -> str:
        """The store, for a message: its URL (password masked) and the setting it came from."""
        return f"{redact_url(self.url)} (set by {self.setting})"

    def error(self, doing: str, problem: str) -> StateStoreError:
        text = f"state store {self.where}: cannot {doing}: {problem}"
        return StateStoreError(redact(text, [self.url]))

    @contextmanager
    def translated(self, doing: str) -> Iterator[None]:
        """Raise the block's Redis errors as :class:`StateStoreError`; ``doing``: what failed."""
        try:
            yield
        except self._caught as exc:
            raise self.error(doing, describe_broker_error(exc, [self.url])) from safe_cause(
                exc, [self.url]
            )
