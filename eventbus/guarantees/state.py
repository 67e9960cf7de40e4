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

Behind Redis Sentinel the URL lists the sentinels, as a broker URL does:
``sentinel://[:password@]host:26379[/db];sentinel://host2:26379``. The
master's name comes from ``eventbus_redis_master_name``, else from the
broker's ``broker_transport_options["master_name"]``; the password and
database of the first URL that has them are the master's, and
``broker_transport_options["sentinel_kwargs"]`` (kombu's option) is given to
the sentinels. redis-py's ``Sentinel.master_for`` asks the sentinels where
the master is at every connect; a master demoted by a fail-over answers
``READONLY``, which closes the connection, and the next call connects to
the new one.

State kept on the broker (its URL from ``broker_url``) is reached as the
broker is: with ``broker_use_ssl``'s ``ssl_*`` options on a ``rediss://``
URL (or to a Sentinel's master). Unlike kombu, which checks no certificate
when a ``rediss://`` URL comes with no TLS options (and says so), the state's
client (redis-py) checks the server's certificate against the system's CAs:
name the CA (``ssl_ca_certs``) in the URL or in ``broker_use_ssl``.

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
from urllib.parse import unquote, urlsplit

from eventbus.errors import ConfigurationError, StateStoreError
from eventbus.guarantees.state_errors import StateErrors
from eventbus.redaction import redact, redact_url

if TYPE_CHECKING:
    import redis

    from eventbus.guarantees.idempotency import IdempotencyStore
    from eventbus.guarantees.ordering import Resequencer, Sequencer

__all__ = [
    "DEFAULT_PREFIX",
    "RedisOptions",
    "State",
    "redact_url",
    "redis_options",
    "redis_url_from_config",
    "state_from_config",
]

DEFAULT_PREFIX = "eventbus:"
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")
SENTINEL_PORT = 26379  #: a sentinel's port when its URL names none


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
        # A broker URL may list fail-over hosts separated by ';': take the first
        # (of a list of sentinels, all: together they find the master).
        first = value.split(";")[0].strip()
        if first.startswith("sentinel://"):
            return value.strip(), key
        if first.startswith(_REDIS_SCHEMES):
            return first, key
    return None


@dataclass(frozen=True)
class RedisOptions:
    """What a state URL may need besides itself: the master behind Sentinel, the broker's TLS."""

    master_name: str | None = None  #: a ``sentinel://`` URL's master
    sentinel_kwargs: Mapping[str, Any] | None = None  #: for the sentinels (kombu's option)
    #: ``ssl_*`` options of ``broker_use_ssl``, for state kept on the broker
    ssl: Mapping[str, Any] | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        """What tells two clients of one URL apart."""
        return (
            self.master_name,
            repr(sorted((self.sentinel_kwargs or {}).items())),
            repr(sorted((self.ssl or {}).items())),
        )


def redis_options(conf: Mapping[str, Any], setting: str = "") -> RedisOptions:
    """The options of an app's configuration for its state at a URL from ``setting``.

    The master's name: ``eventbus_redis_master_name``, else the broker's
    ``master_name`` transport option; the sentinels' options: the broker's
    ``sentinel_kwargs``. State kept on the broker (``setting`` is
    ``broker_url``) also takes the broker's TLS options (``broker_use_ssl``),
    as kombu's connections do (the CA to check the server's certificate against, ...).
    """
    transport = conf.get("broker_transport_options") or {}
    use_ssl = conf.get("broker_use_ssl") if setting == "broker_url" else None
    ssl = (
        {k: v for k, v in use_ssl.items() if str(k).startswith("ssl_")}
        if isinstance(use_ssl, Mapping)
        else None
    )
    return RedisOptions(
        master_name=conf.get("eventbus_redis_master_name") or transport.get("master_name"),
        sentinel_kwargs=transport.get("sentinel_kwargs"),
        ssl=ssl or None,
    )


_clients: dict[tuple[Any, ...], redis.Redis] = {}
_clients_lock = threading.Lock()
_TIMEOUTS: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 10}


def redis_client(url: str, options: RedisOptions | None = None) -> redis.Redis:
    """One client (one connection pool) per URL (and options) and process.

    A ``sentinel://`` URL (``;``-separated sentinels) gives a client of the
    master named by ``options.master_name``; raises ``ValueError`` without one.
    redis-py's pool notices a fork and opens new connections in the child, so
    a client made before a prefork worker forks is safe to use in its children.
    """
    options = options or RedisOptions()
    key = (url, *options.key)
    client = _clients.get(key)
    if client is None:
        with _clients_lock:
            client = _clients.get(key)
            if client is None:
                client = _make_client(url, options)
                _clients[key] = client
    return client


def _make_client(url: str, options: RedisOptions) -> redis.Redis:
    import redis

    # The broker's TLS options for a TLS URL (the URL's own ssl_* query wins, as in redis-py)
    tls = dict(options.ssl or {})
    if not url.startswith("sentinel://"):
        return redis.Redis.from_url(
            url,
            health_check_interval=30,
            **_TIMEOUTS,
            **(tls if url.startswith("rediss://") else {}),
        )
    from redis.sentinel import Sentinel

    if not options.master_name:
        raise ValueError(
            "a sentinel:// URL needs the master's name: set eventbus_redis_master_name, "
            'or broker_transport_options = {"master_name": ...}'
        )
    hosts: list[tuple[str, int]] = []
    master: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in url.split(";"))):
        parts = urlsplit(part)
        if parts.scheme != "sentinel":
            raise ValueError(f"not a sentinel:// URL: {redact_url(part)}")
        hosts.append((parts.hostname or "127.0.0.1", parts.port or SENTINEL_PORT))
        if parts.password and "password" not in master:
            master.update(username=unquote(parts.username or "") or None)
            master["password"] = unquote(parts.password)
        db = parts.path.strip("/")
        if db and "db" not in master:
            master["db"] = int(db)
    if tls:  # TLS to the master (kombu: broker_use_ssl with a sentinel:// URL)
        master.update(ssl=True, **tls)
    sentinels = Sentinel(
        hosts,
        sentinel_kwargs={**_TIMEOUTS, **(options.sentinel_kwargs or {})},
        **_TIMEOUTS,
    )
    client: redis.Redis = sentinels.master_for(
        options.master_name, health_check_interval=30, **master
    )
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
    if url.startswith("sentinel://") and not redis_options(conf).master_name:
        raise ConfigurationError(
            f"{purpose} keep their state at {redact_url(url)} (set by {setting}), a Redis "
            "Sentinel URL, and no master name is set: set eventbus_redis_master_name, or "
            'broker_transport_options = {"master_name": ...}'
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
        for part in url.split(";") if url.startswith("sentinel://") else [url]:
            urlsplit(part.strip()).port  # noqa: B018 - raises ValueError on a malformed port
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
        client = redis_client(url, redis_options(conf, setting))
    except ValueError as exc:  # redis-py cannot parse it (the scheme, the port, ...)
        raise errors.error("use its URL", f"malformed URL ({exc})") from None
    return State(
        idempotency=RedisIdempotencyStore(client, prefix=prefix, ttl=ttl, errors=errors),
        sequencer=RedisSequencer(
            client,
            prefix=prefix,
            errors=errors,
            wait_replicas=int(conf.get("eventbus_redis_wait_replicas") or 0),
            wait_timeout=float(conf.get("eventbus_redis_wait_timeout") or DEFAULT_WAIT_TIMEOUT),
        ),
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


#: Seconds an ``INCR`` waits for ``eventbus_redis_wait_replicas`` replicas (``WAIT``).
DEFAULT_WAIT_TIMEOUT = 1.0
DEFAULT_IDEMPOTENCY_TTL = 7 * 24 * 3600  #: seconds a completed (handler, event_id) is remembered
DEFAULT_ORDER_TTL = 30 * 24 * 3600  #: seconds an idle aggregate's ordering position is kept
