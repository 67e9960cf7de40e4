"""``manage.py eventbus ...``: eventbus's commands on the Django project's bus, and the outbox.

The ``dlq``, ``events``, ``publish`` and ``schema`` commands are those of the
``eventbus`` CLI; ``outbox relay``, ``status`` and ``retry-failed`` are those
of ``eventbus outbox`` (same options and output, :mod:`eventbus.cli.outbox`),
on Django's database (``--database`` instead of ``--url``/``--table``).
Exit codes: 0 ok, 1 the operation failed, 2 usage error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from eventbus.cli.context import BusContext, bus_of, fail, handle_errors
from eventbus.cli.dlq import dlq
from eventbus.cli.main import events, publish
from eventbus.cli.outbox import echo_status, finish, report, stop_on_signals
from eventbus.cli.schema import schema

if TYPE_CHECKING:
    from eventbus.contrib.django.relay import RelayResult

__all__ = ["main", "outbox", "run"]

F = TypeVar("F", bound=Callable[..., Any])


def _database_errors(func: F) -> F:
    """Django's database errors as one line and exit code 1 (e.g. before ``migrate``)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from django.db import DatabaseError  # type: ignore[import-untyped]

        try:
            return func(*args, **kwargs)
        except DatabaseError as exc:
            hint = " (has 'manage.py migrate' run?)" if "eventbus_outbox" in str(exc) else ""
            fail(f"{type(exc).__name__}: {exc}{hint}")

    return wrapper  # type: ignore[return-value]


def _database(func: F) -> F:
    return click.option(
        "--database", default=None, help="Database alias (default: the router's for the outbox)."
    )(func)


@click.group()
def outbox() -> None:
    """The transactional outbox in Django's database: relay it, see what waits or failed."""


@outbox.command()
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Rows per batch (one transaction).",
)
@click.option("--loop", is_flag=True, help="Keep relaying until interrupted (SIGINT/SIGTERM).")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="With --loop: seconds between polls when idle or failing.",
)
@_database
@click.pass_context
@handle_errors
@_database_errors
def relay(
    ctx: click.Context, limit: int, loop: bool, interval: float, database: str | None
) -> None:
    """Publish the outbox's pending rows on the project's bus and mark them sent.

    Without --loop: batch after batch until nothing is pending; exit 1 if a
    row failed or a publish failed (what is left stays pending).
    """
    from eventbus.contrib.django.relay import relay_outbox

    bus = bus_of(ctx)
    if loop:
        _loop(lambda: relay_outbox(bus=bus, batch_size=limit, using=database), interval)
        return
    finish(relay_outbox(bus=bus, batch_size=limit, using=database))


def _loop(relay_once: Callable[[], RelayResult], interval: float) -> None:
    from django.db import DatabaseError, close_old_connections

    published = failed = 0
    click.echo(f"relaying the outbox every {interval}s when idle (Ctrl-C stops)")
    with stop_on_signals() as stop:
        while not stop.is_set():
            close_old_connections()  # a long-running process: drop a broken connection
            try:
                result = relay_once()
            except DatabaseError as exc:
                click.echo(f"warning: database error, retrying: {exc}", err=True)
                stop.wait(interval)
                continue
            published, failed = published + result.published, failed + result.failed
            report(result)
            # relay_outbox drained what it could: wait for new rows (or the broker).
            stop.wait(interval)
    click.echo(f"stopped: published {published}, failed {failed} in this run")


@outbox.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--failed",
    "show_failed",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Show this many of the latest failed rows.",
)
@_database
@handle_errors
@_database_errors
def status(as_json: bool, show_failed: int, database: str | None) -> None:
    """Count pending, failed and published rows; show the latest failures."""
    from eventbus.contrib.django.relay import failed_rows, outbox_status

    state = outbox_status(using=database)
    failed = failed_rows(limit=show_failed, using=database) if show_failed and state.failed else []
    echo_status(state, failed, as_json=as_json)


@outbox.command("retry-failed")
@click.option("--id", "ids", type=int, multiple=True, help="A failed row's id (repeatable).")
@click.option("--all", "all_rows", is_flag=True, help="Every failed row.")
@_database
@handle_errors
@_database_errors
def retry_failed(ids: tuple[int, ...], all_rows: bool, database: str | None) -> None:
    """Make failed rows pending again (after the fix); the relay then publishes them."""
    from eventbus.contrib.django.relay import retry_failed as make_pending

    if bool(ids) == all_rows:
        raise click.UsageError("give --id ID (repeatable) or --all")
    count = make_pending(None if all_rows else ids, using=database)
    click.echo(f"{count} row(s) pending again")
    if not count:
        raise click.exceptions.Exit(1)


@click.group(name="eventbus", context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """eventbus on this Django project's bus: dead letters, events, schema, the outbox."""
    from eventbus.contrib.django.conf import get_bus

    ctx.obj = BusContext(get_bus)


for _command in (dlq, events, outbox, publish, schema):
    main.add_command(_command)


def run(args: Sequence[str], *, prog_name: str) -> int:
    """Run ``main`` with ``args``; return its exit code (errors already printed)."""
    try:
        # Not standalone: click returns an exit code (ctx.exit, --help) instead of exiting.
        code = main.main(args=list(args), prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    return code if isinstance(code, int) else 0
