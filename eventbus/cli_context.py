"""What every ``eventbus`` command shares: finding the bus, and failing in one line.

A module of its own so that the root group (:mod:`eventbus.cli`) and the
``dlq`` commands (:mod:`eventbus.cli_dlq`) both import it without importing
each other: ``python -m eventbus.cli`` runs the root module as ``__main__``,
and a cycle back into ``eventbus.cli`` would load it a second time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
from kombu.exceptions import KombuError

from eventbus.bus import BaseEventBus
from eventbus.celery_bus import bus_for_app
from eventbus.errors import EventBusError

__all__ = ["BusContext", "bus_of", "fail", "handle_errors"]

F = TypeVar("F", bound=Callable[..., Any])


class BusContext:
    """Lazily loads the bus: ``demo`` and ``--help`` must not import the app."""

    def __init__(self, loader: Callable[[], BaseEventBus]) -> None:
        self._loader = loader
        self._bus: BaseEventBus | None = None

    @property
    def bus(self) -> BaseEventBus:
        if self._bus is None:
            self._bus = self._loader()
        return self._bus


def bus_of(ctx: click.Context) -> BaseEventBus:
    """The bus of ``eventbus -A ...``, or of the Celery app of ``celery -A proj eventbus``."""
    obj = ctx.find_object(BusContext)
    if obj is not None:
        return obj.bus
    celery_ctx = ctx.find_root().obj  # under `celery -A proj eventbus`
    app = getattr(celery_ctx, "app", None)
    bus = bus_for_app(app) if app is not None else None
    if bus is None:
        raise click.UsageError("the Celery app given with -A has no EventBus")
    return bus


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 1."""
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(1)


def handle_errors(func: F) -> F:
    """Turn eventbus and broker errors into a one-line message and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EventBusError as exc:
            fail(str(exc))
        except (OSError, KombuError) as exc:  # broker unreachable, connection lost
            fail(f"{type(exc).__name__}: {exc}")

    return wrapper  # type: ignore[return-value]
