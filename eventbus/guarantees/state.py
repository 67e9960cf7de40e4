"""Where eventbus keeps its coordination state: idempotency keys and sequence counters.

Idempotent and ordered handlers, and the per-aggregate sequence numbers given
at publish, need one store that every publisher and worker shares, with atomic
updates: Redis. It is found, in this order, from

1. ``eventbus_redis_url`` (e.g. ``redis://redis:6379/1``),
2. the broker URL, when the broker is Redis,
3. the result backend, when it is Redis.

On the ``memory://`` broker (the embedded demo: one process), or with
``eventbus_redis_url = "memory://"`` (one process that publishes and runs
every handler, such as the demo's in-process worker), the state lives in
memory. With RabbitMQ and no Redis configured, a worker with idempotent or
ordered handlers refuses to start, and publishing an event that needs a
sequence number raises :class:`~eventbus.errors.ConfigurationError`.

Keys start with ``eventbus_redis_prefix`` (default ``eventbus:``).

A Redis state store that cannot be used (a URL redis-py cannot parse, a
refused login, no answer, an error reply) raises
:class:`~eventbus.errors.StateStoreError` from every call, naming the store
and the setting its URL came from (:mod:`eventbus.guarantees.state_errors`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from eventbus.errors import ConfigurationError, StateStoreError
from eventbus.guarantees.state_errors import StateErrors
from eventbus.redaction import redact, redact_url

if TYPE_CHECKING:
    import redis

    from eventbus.guarantees.idempotency import IdempotencyStore
    from eventbus.guarantees.ordering import Resequencer, Sequencer

__all__ = ["DEFAULT_PREFIX", "State", "redact_url", "redis_url_from_config", "state_from_config"]

DEFAULT_PREFIX = "eventbus:"
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class State:
    """The three stores idempotent and ordered delivery use, on one backend."""

    idempotency: IdempotencyStore
    sequencer: Sequencer
    resequencer: Resequencer
    description: str  #: where it lives, password removed (for logs and errors)
    #: One round trip to the backend: raises :class:`~eventbus.errors.StateStoreError`
    #: naming it if it cannot be used (nothing to check in memory).
    check: Callable[[], None] = lambda: None


def redis_url_from_config(conf: Mapping[str, Any]) -> str | None:
    """The Redis URL eventbus's state lives at, or None (see the module docstring)."""
    found = _state_url(conf)
    return found[0] if found else None


def _state_url(conf: Mapping[str, Any]) -> tuple[str, str] | None:
    """(the state's URL, the setting it came from), or None."""
    configured = conf.get("eventbus_redis_url")
    if configured:
        return str(configured), "eventbus_redis_url"
    for key in ("broker_url", "result_backend"):
        value = str(conf.get(key) or "")
        # A broker URL may list fail-over hosts separated by ';': take the first.
        first = value.split(";")[0].strip()
        if first.startswith(_REDIS_SCHEMES):
            return first, key
    return None


_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def redis_client(url: str) -> redis.Redis:
    """One client (one connection pool) per URL and process.

    redis-py's pool notices a fork and opens new connections in the child, so
    a client made before a prefork worker forks is safe to use in its children.
    """
    client = _clients.get(url)
    if client is None:
        import redis

        with _clients_lock:
            client = _clients.get(url)
            if client is None:
                client = redis.Redis.from_url(
                    url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=30
                )
                _clients[url] = client
    return client


IN_MEMORY = "memory (this process only)"  #: the description of state kept in the process


def _locate(conf: Mapping[str, Any], *, purpose: str) -> tuple[str, str] | None:
    """(the state's Redis URL, its setting); None for in-process state; or the error."""
    found = _state_url(conf)
    url, setting = found or (None, "")
    if url is None or url.startswith("memory://"):
        broker = str(conf.get("broker_url") or "")
        if url or broker.startswith("memory://"):
            return None
        raise ConfigurationError(
            f"{purpose} need Redis for their state, and the broker is not Redis: "
            "set eventbus_redis_url (EVENTBUS_REDIS_URL), e.g. redis://localhost:6379/1"
        )
    return url, setting


def describe_state(conf: Mapping[str, Any], *, purpose: str) -> str:
    """Where :func:`state_from_config` keeps the state, checked without building it.

    A prefork worker's main process only checks the settings at start: its
    children run the handlers and make the Redis client, so the main process
    never loads redis-py (about 7 MiB) for them. Raises what
    :func:`state_from_config` would for a missing setting or a malformed URL.
    """
    located = _locate(conf, purpose=purpose)
    if located is None:
        return IN_MEMORY
    url, setting = located
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port, as redis-py would
    except ValueError as exc:
        text = f"state store {redact_url(url)} (set by {setting}): cannot use its URL"
        raise StateStoreError(redact(f"{text}: malformed URL ({exc})", [url])) from None
    return redact_url(url)


def state_from_config(conf: Mapping[str, Any], *, purpose: str) -> State:
    """The state stores for an app's configuration; ``purpose`` names who needs them."""
    from eventbus.guarantees.idempotency import InMemoryIdempotencyStore, RedisIdempotencyStore
    from eventbus.guarantees.ordering import (
        InMemoryResequencer,
        InMemorySequencer,
        RedisResequencer,
        RedisSequencer,
    )

    ttl = int(conf.get("eventbus_idempotency_ttl") or DEFAULT_IDEMPOTENCY_TTL)
    located = _locate(conf, purpose=purpose)
    if located is None:
        return State(
            idempotency=InMemoryIdempotencyStore(ttl=ttl),
            sequencer=InMemorySequencer(),
            resequencer=InMemoryResequencer(),
            description=IN_MEMORY,
        )
    url, setting = located
    prefix = str(conf.get("eventbus_redis_prefix") or DEFAULT_PREFIX)
    errors = StateErrors(url, setting)
    try:
        client = redis_client(url)
    except ValueError as exc:  # redis-py cannot parse it (the scheme, the port, ...)
        raise errors.error("use its URL", f"malformed URL ({exc})") from None
    return State(
        idempotency=RedisIdempotencyStore(client, prefix=prefix, ttl=ttl, errors=errors),
        sequencer=RedisSequencer(client, prefix=prefix, errors=errors),
        resequencer=RedisResequencer(
            client,
            prefix=prefix,
            ttl=int(conf.get("eventbus_ordering_ttl") or DEFAULT_ORDER_TTL),
            errors=errors,
        ),
        description=redact_url(url),
        check=functools.partial(_ping, client, errors),
    )


def _ping(client: redis.Redis, errors: StateErrors) -> None:
    with errors.translated("connect to it and ping it"):
        client.ping()


DEFAULT_IDEMPOTENCY_TTL = 7 * 24 * 3600  #: seconds a completed (handler, event_id) is remembered
DEFAULT_ORDER_TTL = 30 * 24 * 3600  #: seconds an idle aggregate's ordering position is kept
