"""What every ``eventbus`` command shares: finding the bus, printing safely, failing in one line.

A module of its own so that the root group (:mod:`eventbus.cli.main`) and its
sub-commands (:mod:`eventbus.cli.dlq`, ...) both import it without importing
each other.

Whatever goes wrong ends in one line on stderr, ``error: ...``, and exit
status 1: an eventbus error says what it is, a broker error is named
(:mod:`eventbus.broker_errors`), anything else is ``unexpected`` (the
traceback with ``EVENTBUS_DEBUG=1``). No line carries a password of the URLs
in play (:mod:`eventbus.redaction`), and text output shows control
characters escaped, never raw (:func:`printable`).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from eventbus.bus.base import BaseEventBus
from eventbus.celery.bus import bus_for_app
from eventbus.errors import EventBusError
from eventbus.redaction import redact

__all__ = [
    "OPERATOR_RETRY",
    "BusContext",
    "NoAppGiven",
    "bus_of",
    "echo",
    "fail",
    "fail_fast",
    "handle_errors",
    "printable",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Environment variables that hold URLs (with their passwords) a command may echo.
URL_VARIABLES = (
    "EVENTBUS_BROKER_URL",
    "CELERY_BROKER_URL",
    "EVENTBUS_REDIS_URL",
    "EVENTBUS_OUTBOX_URL",
    "CELERY_RESULT_BACKEND",
)
#: Celery settings that hold URLs.
URL_SETTINGS = ("broker_url", "broker_read_url", "broker_write_url", "result_backend")


#: How an operator's command retries the broker: once more, 0.5 s later, then it
#: fails in one line. Set as kombu's connection retry (transport options, which
#: otherwise retry for up to the connect timeout, 4 s) and as the publish retry
#: policy (celeryconfig's: 3 retries, 0.5 + 1 + 1.5 s), in the command's process.
OPERATOR_RETRY: dict[str, float] = {
    "max_retries": 1,
    "interval_start": 0.5,
    "interval_step": 0.0,
    "interval_max": 0.5,
}


B = TypeVar("B", bound=BaseEventBus)


def fail_fast(bus: B) -> B:
    """Make ``bus``'s app, in this process, retry the broker as :data:`OPERATOR_RETRY` says.

    A web process or a worker keeps the app's own settings: they wait for a
    broker that restarts. An operator at a prompt wants the answer, and can
    run the command again.
    """
    conf = getattr(getattr(bus, "app", None), "conf", None)  # (the in-memory bus has none)
    if conf is not None:
        conf.broker_transport_options = {**(conf.broker_transport_options or {}), **OPERATOR_RETRY}
        conf.task_publish_retry_policy = dict(OPERATOR_RETRY)
    return bus


class NoAppGiven(click.UsageError):
    """Neither ``-A`` nor ``EVENTBUS_APP`` named the app: one line, exit status 2.

    There is no default app: a guessed module name (``handlers``) would find a
    user's own module of that name, or nothing. Shown without click's usage
    text, which would bury the one thing to do.
    """

    def __init__(self) -> None:
        super().__init__(
            "no app given: name the module that creates your EventBus (or its Celery app) "
            "with -A module[:attr] or EVENTBUS_APP=module[:attr]"
        )

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class BusContext:
    """Lazily loads the bus: ``demo`` and ``--help`` must not import the app."""

    def __init__(self, loader: Callable[[], BaseEventBus]) -> None:
        self._loader = loader
        self._bus: BaseEventBus | None = None

    @property
    def bus(self) -> BaseEventBus:
        if self._bus is None:
            self._bus = fail_fast(self._loader())
        return self._bus

    @property
    def loaded(self) -> BaseEventBus | None:
        return self._bus


def bus_of(ctx: click.Context) -> BaseEventBus:
    """The bus of ``eventbus -A ...``, or of the Celery app of ``celery -A proj eventbus``."""
    obj = ctx.find_object(BusContext)
    if obj is not None:
        return obj.bus
    root = ctx.find_root()
    app = getattr(root.obj, "app", None)  # under `celery -A proj eventbus`
    bus = bus_for_app(app) if app is not None else None
    if bus is not None:
        return fail_fast(bus)
    if not root.params.get("app"):
        raise click.UsageError(
            "no Celery app given: run 'celery -A proj eventbus ...' with -A naming the "
            "module that creates your EventBus (or 'eventbus -A proj ...')"
        )
    raise click.UsageError(
        f"the Celery app {getattr(app, 'main', None) or '?'} (-A {root.params['app']}) has "
        "no EventBus: -A must name the module that creates it, EventBus(app)"
    )


# -- printing ------------------------------------------------------------------------

#: C0 controls, DEL and C1 controls, and the Unicode controls that move or
#: reorder text (line/paragraph separators, bidi overrides and isolates).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_LINE_CONTROLS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: object, *, multiline: bool = False) -> str:
    """``str(value)`` safe for a terminal: control characters escaped (ESC as ``\\x1b``).

    ``multiline`` keeps newlines and tabs (a traceback, a raw body); a field
    of one line escapes those too, so that it cannot forge another line.
    """
    pattern = _LINE_CONTROLS if multiline else _CONTROLS
    return pattern.sub(_escape, str(value))


def echo(text: object = "", *, err: bool = False, nl: bool = True) -> None:
    """``click.echo`` of text output: secrets masked, control characters escaped."""
    click.echo(printable(redact(text, known_urls()), multiline=True), err=err, nl=nl)


def known_urls() -> list[str]:
    """The URLs this command may echo: options, environment, and the loaded app's settings.

    Worked out once per command (and again once the app is loaded): ``echo``
    asks for every line it prints.
    """
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return _collect_urls(None)
    root = ctx.find_root()
    loaded = tuple(id(c.obj.loaded) for c in _chain(ctx) if isinstance(c.obj, BusContext))
    cached = root.meta.get(_URLS_KEY)
    if cached is None or cached[0] != loaded:
        cached = root.meta[_URLS_KEY] = (loaded, _collect_urls(ctx))
    urls: list[str] = cached[1]
    return urls


_URLS_KEY = "eventbus.known_urls"


def _chain(ctx: click.Context) -> list[click.Context]:
    chain: list[click.Context] = []
    current: click.Context | None = ctx
    while current is not None:
        chain.append(current)
        current = current.parent
    return chain


def _collect_urls(ctx: click.Context | None) -> list[str]:
    urls = [os.environ.get(name) or "" for name in URL_VARIABLES]
    for context in _chain(ctx) if ctx is not None else []:
        urls += [str(v) for v in context.params.values() if _is_url(v)]
        obj = context.obj
        bus = obj.loaded if isinstance(obj, BusContext) else None
        app = getattr(bus, "app", None) or getattr(obj, "app", None)
        conf = getattr(app, "conf", None)
        if conf is not None:
            urls += [str(conf.get(key) or "") for key in URL_SETTINGS]
            urls += [str(v) for k, v in conf.items() if k.startswith("eventbus_") and _is_url(v)]
    return [url for url in urls if url]


def _is_url(value: object) -> bool:
    return isinstance(value, str) and "://" in value


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr (one line, no secret) and exit with status 1."""
    line = printable(redact(message, known_urls()))
    click.echo(f"error: {line}", err=True)
    raise click.exceptions.Exit(1)


def handle_errors(func: F) -> F:
    """Turn any error into a one-line message and exit code 1 (usage errors stay 2)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except EventBusError as exc:
            fail(str(exc))
        except BrokenPipeError:
            # The reader went away (`eventbus dlq list | head`): nothing to say to it.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # Python's flush of stdout at exit must not fail again
            raise click.exceptions.Exit(1) from None
        except Exception as exc:
            if os.environ.get("EVENTBUS_DEBUG"):
                raise
            fail(_describe_unexpected(exc))

    return wrapper  # type: ignore[return-value]


def _describe_unexpected(exc: Exception) -> str:
    from kombu.exceptions import KombuError

    from eventbus.broker_errors import describe_broker_error

    package = type(exc).__module__.split(".")[0]
    from_broker = isinstance(exc, (OSError, KombuError)) or package in {"amqp", "redis", "kombu"}
    if from_broker or (isinstance(exc, KeyError) and "No such transport" in str(exc)):
        return f"{type(exc).__name__}: {describe_broker_error(exc, known_urls())}"
    return f"unexpected {type(exc).__name__}: {exc} (EVENTBUS_DEBUG=1 shows the traceback)"
