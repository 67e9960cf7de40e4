"""Which kombu transport an app's broker gets: eventbus's atomic Redis transport where it can.

What Celery and kombu do: Celery gives every connection of an app the
``broker_transport`` setting (``Celery._connection``); kombu's ``Connection``
then uses that transport and reads only host, port, credentials and database
from the URL. When the setting is unset, kombu takes the transport from the
URL's scheme: ``redis://`` and ``rediss://`` get kombu's Redis transport,
which takes a message with ``BRPOP`` and records it in a second round trip
(the loss window of celery/kombu#1733; see :mod:`eventbus.celery.internals.redis_transport`).

Where it went wrong (issue 11): the repository's ``celeryconfig`` set
``broker_transport`` when the URL *in the environment* was ``redis://``. An
app configured from it and then given ``broker_url = "amqp://..."`` kept the
Redis transport, and its publish spoke Redis to RabbitMQ's port; a
``rediss://`` URL silently got kombu's lossy transport.

What this module changes: the choice is made from the app's own broker URLs
(read and write, fail-over lists included), when a worker of an app with an
:class:`~eventbus.EventBus` starts (``worker_init``, before its consumer
connects), and checked before the bus first publishes:

* ``redis://`` (eventbus's ``Transport``), ``rediss://`` (``SecureTransport``:
  TLS also without ``broker_use_ssl``, as kombu's ``rediss``) and
  ``sentinel://`` (``SentinelTransport``; every URL of the list a sentinel,
  the ``master_name`` transport option set), when ``broker_transport`` is
  unset, unless ``eventbus_redis_transport = "kombu"``
  (``EVENTBUS_REDIS_TRANSPORT=kombu`` with the repository's ``celeryconfig``).
  With ``sentinel://`` the app also gets :func:`sentinel_failover_hosts` as
  its ``broker_failover_strategy`` (when unset): kombu's
  ``Connection.switch`` to the next URL of a list takes that URL's own
  transport from its scheme, kombu's, but keeps the connection's for a host
  name;
* a Redis URL eventbus's transport cannot serve (``redis+socket://``, a
  fail-over list of ``redis://`` URLs: on a fail-over kombu takes the next
  URL's own transport, read and write URLs of different brokers) keeps
  kombu's transport, and the worker logs a warning that names why;
* ``broker_transport`` set to eventbus's transport with a URL it cannot serve
  is a :class:`~eventbus.errors.ConfigurationError`: the worker stops at
  start, ``publish`` raises it;
* any other URL (``amqp://``, ``memory://``...) keeps its own transport, and
  a ``broker_transport`` set to anything else is left alone;
* eventbus's transport with a kombu that lacks what it subclasses, or outside
  the supported range (:mod:`eventbus.celery.internals.compat`), is an
  :class:`~eventbus.errors.IncompatibleDependency` (a ``ConfigurationError``)
  that names ``eventbus_redis_transport = "kombu"``: the worker stops at
  start, ``publish`` raises it; kombu's transport runs only when asked for.

A worker logs the transport it consumes with. What it leaves alone: kombu's
parsing of URLs, and processes that never start a worker or publish through
an ``EventBus`` (their connections publish the same way on either transport).
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from celery import bootsteps, signals

from eventbus.celery.internals.compat import transport_problem
from eventbus.errors import ConfigurationError, IncompatibleDependency
from eventbus.guarantees.state import redact_url

if TYPE_CHECKING:
    from collections.abc import Mapping

    from celery import Celery

__all__ = [
    "KOMBU",
    "REDIS_TRANSPORT",
    "SECURE_REDIS_TRANSPORT",
    "SENTINEL_REDIS_TRANSPORT",
    "TransportChoice",
    "apply_transport",
    "bind_transport",
    "check_transport",
    "choose_transport",
    "sentinel_failover_hosts",
]

logger = logging.getLogger(__name__)

REDIS_TRANSPORT = "eventbus.celery.internals.redis_transport:Transport"  #: for ``redis://`` URLs
SECURE_REDIS_TRANSPORT = (
    "eventbus.celery.internals.redis_transport:SecureTransport"  #: for ``rediss://`` URLs
)
SENTINEL_REDIS_TRANSPORT = (
    "eventbus.celery.internals.sentinel_transport:SentinelTransport"  #: for ``sentinel://`` URLs
)
#: ``eventbus_redis_transport`` values: eventbus's transport (default), or kombu's own.
EVENTBUS, KOMBU = "eventbus", "kombu"

_SETTING: Any = object()  #: choose_transport: read broker_transport from conf

_REDIS_SCHEMES = {
    "redis": REDIS_TRANSPORT,
    "rediss": SECURE_REDIS_TRANSPORT,
    "sentinel": SENTINEL_REDIS_TRANSPORT,
}
#: Schemes of kombu's Redis transports that eventbus's cannot take the place of.
_OTHER_REDIS_SCHEMES = {"redis+socket"}


@dataclass(frozen=True)
class TransportChoice:
    """What ``broker_transport`` an app's worker consumes with, and why."""

    transport: Any  #: the value for ``broker_transport`` (None: the URL's own)
    description: str  #: the transport and the URL, password removed (for the log)
    warning: str | None = None  #: set when a Redis broker does not get eventbus's transport


def choose_transport(conf: Mapping[str, Any], *, explicit: Any = _SETTING) -> TransportChoice:
    """The transport for the broker URLs in ``conf``; raises :class:`ConfigurationError`.

    ``conf`` is a Celery app's configuration (``broker_url``, ``broker_read_url``,
    ``broker_write_url``, ``broker_transport``, ``broker_use_ssl``,
    ``eventbus_redis_transport``); ``explicit`` stands for its
    ``broker_transport`` when given. Pure: nothing is changed.
    """
    urls = _broker_urls(conf)
    shown = ", ".join(redact_url(url) for url in urls)
    schemes = {_scheme(url) for url in urls}
    if explicit is _SETTING:
        explicit = conf.get("broker_transport")
    wanted = str(conf.get("eventbus_redis_transport") or EVENTBUS).lower()
    if wanted not in (EVENTBUS, KOMBU):
        raise ConfigurationError(
            f"eventbus_redis_transport (EVENTBUS_REDIS_TRANSPORT) is {wanted!r}: "
            f"use {EVENTBUS!r} (eventbus's atomic Redis transport) or {KOMBU!r} (kombu's own)"
        )

    if explicit is not None and _is_eventbus_transport(explicit):
        return _check_explicit(explicit, urls, schemes, shown, conf)
    redis_like = schemes & (set(_REDIS_SCHEMES) | _OTHER_REDIS_SCHEMES)
    lossy = (
        "kombu's Redis transport takes a message (BRPOP) and records it in a second "
        "round trip: a worker or Redis that dies in between loses that message"
    )
    if explicit is not None:
        return TransportChoice(
            explicit,
            f"broker_transport {_name(explicit)} for {shown}",
            f"broker_transport is not eventbus's atomic Redis transport; {lossy}"
            if redis_like
            else None,
        )
    if not redis_like:
        kinds = ", ".join(sorted(s or "amqp" for s in schemes))
        return TransportChoice(None, f"kombu's {kinds} transport for {shown}")
    if wanted == KOMBU:
        return TransportChoice(
            None,
            f"kombu's Redis transport for {shown}",
            f"eventbus_redis_transport is 'kombu': {lossy}",
        )
    reason = _cannot_serve(urls, schemes)
    if reason:
        return TransportChoice(
            None,
            f"kombu's transport for {shown}",
            f"eventbus's atomic Redis transport is not used: {reason}; {lossy}",
        )
    (scheme,) = schemes
    _refuse_if_incompatible()
    if scheme == "sentinel":
        _require_master_name(conf, shown)
    return TransportChoice(
        _REDIS_SCHEMES[str(scheme)], f"eventbus's atomic Redis transport for {shown}"
    )


def apply_transport(app: Celery) -> TransportChoice:
    """Choose the transport of ``app`` and set ``broker_transport`` to it when unset.

    A value set here counts as unset the next time: if the URL changed
    meanwhile, the choice follows it.
    """
    explicit = _explicit(app)
    choice = choose_transport(app.conf, explicit=explicit)
    if explicit is None:
        app.conf.broker_transport = choice.transport
        _applied[app] = choice.transport
    if _is_sentinel_transport(app.conf.broker_transport) and not app.conf.get(
        "broker_failover_strategy"
    ):
        app.conf.broker_failover_strategy = sentinel_failover_hosts
    return choice


def sentinel_failover_hosts(urls: Iterable[str]) -> Iterator[str]:
    """``broker_failover_strategy`` of a Sentinel broker: its sentinels' host names, in turn.

    kombu's ``Connection.switch`` (a reconnect that failed: the master was
    killed and the sentinels still name it) takes a URL's transport from its
    scheme, which for ``sentinel://`` is kombu's own (``BRPOP``), but keeps
    the connection's transport, port, credentials and database for a bare
    host name. The sentinels the channel asks are the connection's whole
    list of URLs, whatever host it switched to.
    """
    hosts = [(urlsplit(url).hostname or url) if "://" in url else url for url in urls]
    return itertools.cycle(hosts)


def check_transport(app: Celery) -> None:
    """Raise :class:`ConfigurationError` if ``app``'s broker_transport cannot serve its URL."""
    choose_transport(app.conf, explicit=_explicit(app))


#: The broker_transport apply_transport set, per app (not the user's choice).
_applied: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _explicit(app: Celery) -> Any:
    """The app's broker_transport when set by the user (None: unset, or set by us)."""
    value = app.conf.get("broker_transport")
    if app in _applied and value is _applied[app]:
        return None
    return value


# -- in a worker ------------------------------------------------------------------

_bound: weakref.WeakSet[Any] = weakref.WeakSet()


def bind_transport(app: Celery) -> None:
    """Choose ``app``'s transport when a worker of it starts (its bus calls this).

    At ``worker_init`` (before the worker's first connection) the choice is
    applied and logged; a worker step started before the consumer raises the
    configuration error, if any: Celery logs it as an unrecoverable error and
    the worker exits.
    """
    _bound.add(app)
    signals.worker_init.connect(_on_worker_init, dispatch_uid="eventbus.celery.transport_selection")
    app.steps["worker"].add(TransportCheck)


def _on_worker_init(sender: Any = None, **_: Any) -> None:
    app = getattr(sender, "app", None)
    if app is None or app not in _bound:
        return
    try:
        choice = apply_transport(app)
    except ConfigurationError as exc:
        # Said first, before anything tries to connect; TransportCheck stops the worker.
        logger.critical("broker transport: %s; the worker stops", exc)
        return
    if choice.warning:
        logger.warning("broker transport: %s (%s)", choice.description, choice.warning)
    else:
        logger.info("broker transport: %s", choice.description)


class TransportCheck(bootsteps.StartStopStep):  # type: ignore[misc]
    """Stops a worker whose ``broker_transport`` cannot serve its broker URL."""

    label = "eventbus transport check"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        # When the worker is built (after worker_init): an error stops it before
        # any step starts or connects.
        check_transport(worker.app)

    def start(self, worker: Any) -> None:
        check_transport(worker.app)


# -- the rules ---------------------------------------------------------------------


def _broker_urls(conf: Mapping[str, Any]) -> list[str]:
    """The URLs the app's connections use: read and write, each fail-over server."""
    urls: list[str] = []
    for name in ("broker_read_url", "broker_write_url"):
        try:
            # Celery's Settings: the environment (CELERY_BROKER_URL...) first, as
            # Celery's own connections; read and write default to broker_url.
            value = getattr(conf, name)
        except AttributeError:
            value = conf.get(name) or conf.get("broker_url")
        for item in value if isinstance(value, (list, tuple)) else [value]:
            urls.extend(part.strip() for part in str(item or "").split(";") if part.strip())
    # No URL at all: kombu's default broker, amqp on localhost.
    return list(dict.fromkeys(urls)) or ["amqp://localhost//"]


def _scheme(url: str) -> str | None:
    return url.split("://", 1)[0].lower() if "://" in url else None


def _cannot_serve(urls: list[str], schemes: set[str | None]) -> str | None:
    """Why eventbus's transport cannot serve these Redis URLs (None: it can)."""
    others = sorted(str(s) for s in schemes if s in _OTHER_REDIS_SCHEMES)
    if others:
        return f"it does not serve {', '.join(s + '://' for s in others)} URLs"
    if len(schemes) > 1:
        return (
            "the broker URLs are of different kinds ("
            + ", ".join(sorted(f"{s}://" if s else "a host name" for s in schemes))
            + ")"
        )
    if len(urls) > 1 and schemes != {"sentinel"}:  # (a list of sentinels is one broker)
        return (
            "the broker URL lists fail-over servers, and on a fail-over kombu switches "
            "to the next URL's own transport"
        )
    return None


def _require_master_name(conf: Mapping[str, Any], shown: str) -> None:
    options = conf.get("broker_transport_options") or {}
    if not options.get("master_name"):
        raise ConfigurationError(
            f"the broker URL is sentinel:// ({shown}) and broker_transport_options has no "
            "'master_name': set it to the name the sentinels monitor the master by "
            '(broker_transport_options = {"master_name": "mymaster"})'
        )


def _check_explicit(
    explicit: Any,
    urls: list[str],
    schemes: set[str | None],
    shown: str,
    conf: Mapping[str, Any],
) -> TransportChoice:
    """``broker_transport`` names eventbus's transport: can it serve these URLs?"""
    _refuse_if_incompatible()
    name = _name(explicit)
    sentinel = _is_sentinel_transport(explicit)
    # (a bare host name: Redis by this setting)
    served = {"sentinel"} if sentinel else {"redis", "rediss", None}
    if not schemes <= served:
        kinds = ", ".join(sorted(f"{s}://" if s else "a host name" for s in schemes - served))
        serves = "sentinel:// URLs" if sentinel else "redis:// and rediss:// URLs"
        raise ConfigurationError(
            f"broker_transport is {name}, eventbus's Redis transport, and the broker URL is "
            f"{kinds} ({shown}): it serves {serves} only. Remove "
            "broker_transport: eventbus picks the transport from the broker URL"
        )
    if sentinel:
        _require_master_name(conf, shown)
    secure = _load(explicit) is _load(SECURE_REDIS_TRANSPORT)
    if "rediss" in schemes and not secure and not _ssl_configured(urls, conf):
        raise ConfigurationError(
            f"broker_transport is {name} and the broker URL is rediss:// ({shown}): that "
            "transport opens TLS connections only with broker_use_ssl or ssl_* options in "
            f"the URL. Remove broker_transport (eventbus picks {SECURE_REDIS_TRANSPORT}), "
            "or set broker_use_ssl"
        )
    warning = None
    if len(urls) > 1 and not sentinel:
        warning = (
            "the broker URL lists fail-over servers; after a fail-over kombu uses the next "
            "URL's own transport (BRPOP), which can lose a message between take and record"
        )
    return TransportChoice(explicit, f"broker_transport {name} for {shown}", warning)


def _refuse_if_incompatible() -> None:
    """Raise :class:`IncompatibleDependency` if the installed kombu cannot run our transport."""
    problem = transport_problem()
    if problem:
        raise IncompatibleDependency(problem)


def _ssl_configured(urls: list[str], conf: Mapping[str, Any]) -> bool:
    return bool(conf.get("broker_use_ssl")) or all("ssl_" in url for url in urls)


def _name(transport: Any) -> str:
    if isinstance(transport, type):
        return f"{transport.__module__}:{transport.__qualname__}"
    return str(transport)


def _load(transport: Any) -> type | None:
    from kombu.transport import resolve_transport

    try:
        return resolve_transport(transport)
    except (ImportError, AttributeError, KeyError, ValueError):
        return None


def _is_eventbus_transport(transport: Any) -> bool:
    return _is_subclass(transport, REDIS_TRANSPORT)


def _is_sentinel_transport(transport: Any) -> bool:
    return transport is not None and _is_subclass(transport, SENTINEL_REDIS_TRANSPORT)


def _is_subclass(transport: Any, of: str) -> bool:
    cls, ours = _load(transport), _load(of)
    return isinstance(cls, type) and ours is not None and issubclass(cls, ours)
