"""``eventbus outbox``: relay the transactional outbox from a shell, or see what waits in it.

``relay`` publishes the pending rows on the app's bus (once, or ``--loop``
as a long-running process instead of Celery beat); ``status`` counts
pending, failed and published rows and shows the latest failures;
``retry-failed`` makes failed rows pending again after a fix.

The outbox is found by ``--url``, else ``EVENTBUS_OUTBOX_URL``, else the
``eventbus_outbox_url`` setting of the Celery app given with ``-A`` (its
table: ``--table``, else ``eventbus_outbox_table``, else ``eventbus_outbox``).
Exit codes: 0 ok, 1 rows failed or a publish failed (rows left pending) or
the database failed, 2 usage error (no outbox URL among them).
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from eventbus.cli.context import bus_of, echo, fail, handle_errors

if TYPE_CHECKING:
    from eventbus.outbox import Outbox, RelayResult
    from eventbus.outbox.results import FailedRow, OutboxStatus

__all__ = ["outbox"]

F = TypeVar("F", bound=Callable[..., Any])


def _location(func: F) -> F:
    func = click.option(
        "--table",
        default=None,
        help="Outbox table (default: eventbus_outbox_table, else eventbus_outbox).",
    )(func)
    func = click.option(
        "--url",
        envvar="EVENTBUS_OUTBOX_URL",
        default=None,
        help="Database URL of the outbox (default: EVENTBUS_OUTBOX_URL, "
        "else the app's eventbus_outbox_url).",
    )(func)
    return func


def _app_setting(ctx: click.Context, name: str, *, required: bool) -> Any:
    """The ``eventbus_<name>`` setting of the app's Celery bus (None if it has none).

    Not ``required``: an app that cannot be loaded just has no setting.
    """
    try:
        bus = bus_of(ctx)
    except click.UsageError:
        if required:
            raise
        return None
    app = getattr(bus, "app", None)
    return app.conf.get(f"eventbus_{name}") if app is not None else None


def _open(ctx: click.Context, url: str | None, table: str | None) -> Outbox:
    # The app is loaded only for what the options do not say: with --url and
    # --table, status needs no app at all.
    url = url or _app_setting(ctx, "outbox_url", required=True)
    if not url:
        raise click.UsageError(
            "no outbox: pass --url, set EVENTBUS_OUTBOX_URL, or set eventbus_outbox_url "
            "in the Celery app's configuration"
        )
    try:
        from eventbus.outbox.sql import DEFAULT_TABLE, Outbox
    except ImportError as exc:
        fail(str(exc))
    table = table or _app_setting(ctx, "outbox_table", required=False) or DEFAULT_TABLE
    return Outbox(str(url), table_name=str(table))


@click.group()
def outbox() -> None:
    """The transactional outbox: relay its pending rows, see what waits or failed."""


@outbox.command()
@_location
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
@click.pass_context
@handle_errors
def relay(
    ctx: click.Context,
    url: str | None,
    table: str | None,
    limit: int,
    loop: bool,
    interval: float,
) -> None:
    """Publish the outbox's pending rows on the app's bus and mark them sent.

    Without --loop: batch after batch until nothing is pending; exit 1 if a
    row failed or a publish failed (what is left stays pending).
    """
    bus = bus_of(ctx)
    with _open(ctx, url, table) as box:
        from eventbus.outbox.relay import OutboxRelay  # SQLAlchemy: _open checked it is there

        relay = OutboxRelay(box, bus, batch_size=limit)
        if loop:
            _loop(relay, interval)
            return
        finish(relay.drain())


def _loop(relay: Any, interval: float) -> None:
    echo(f"relaying {relay.outbox!r} every {interval}s when idle (Ctrl-C stops)")
    with stop_on_signals() as stop:
        relay.run_forever(interval=interval, stop=stop, on_result=report)
    totals = relay.totals
    echo(f"stopped: published {totals['published']}, failed {totals['failed']} in this run")


# -- shared with manage.py eventbus outbox (eventbus.contrib.django.cli) --------


def finish(result: RelayResult) -> None:
    """End a one-shot relay: its counts; exit 1 if a row failed or a publish failed."""
    echo(summary(result))
    if result.error is not None:
        fail(f"publish failed, rows left pending: {result.error}")
    if result.failed:
        fail(f"{result.failed} row(s) cannot be published and were marked failed")


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM while the block runs (a relay loop's stop)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        echo(f"stopping ({signal.Signals(signum).name}) ...", err=True)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def report(result: RelayResult) -> None:
    """One line per relay run that did something; a warning when a publish failed."""
    if result.published or result.failed or result.error:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        echo(f"{stamp} {summary(result)}")
    if result.error:
        echo(f"warning: publish failed, retrying: {result.error}", err=True)


def summary(result: RelayResult) -> str:
    """One line of a relay run's counts (also ``manage.py eventbus outbox``)."""
    return f"published {result.published}, failed {result.failed}, pending {result.pending_left}"


def echo_status(state: OutboxStatus, failed: list[FailedRow], *, as_json: bool) -> None:
    """Print ``outbox status``: the counts and the latest failed rows (also Django's)."""
    if as_json:
        out = {**state.as_dict(), "latest_failed": [row.as_dict() for row in failed]}
        click.echo(json.dumps(out, indent=2, ensure_ascii=True))
        return
    oldest = state.oldest_pending
    age = f" (oldest {_age(oldest)} old, {oldest:%Y-%m-%d %H:%M:%S} UTC)" if oldest else ""
    echo(f"pending:   {state.pending}{age}")
    echo(f"failed:    {state.failed}")
    echo(f"published: {state.published}")
    for row in failed:
        echo(
            f"  failed #{row.id} {row.event_type} {row.event_id} at "
            f"{row.failed_at:%Y-%m-%d %H:%M:%S}: {row.last_error}"
        )
    if len(failed) < state.failed:
        echo(f"  ... {state.failed - len(failed)} more (--failed N)")


@outbox.command()
@_location
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--failed",
    "show_failed",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Show this many of the latest failed rows.",
)
@click.pass_context
@handle_errors
def status(
    ctx: click.Context, url: str | None, table: str | None, as_json: bool, show_failed: int
) -> None:
    """Count pending, failed and published rows; show the latest failures."""
    with _open(ctx, url, table) as box:
        state = box.status()
        failed = box.failed(limit=show_failed) if show_failed and state.failed else []
    echo_status(state, failed, as_json=as_json)


@outbox.command("retry-failed")
@_location
@click.option("--id", "ids", type=int, multiple=True, help="A failed row's id (repeatable).")
@click.option("--all", "all_rows", is_flag=True, help="Every failed row.")
@click.pass_context
@handle_errors
def retry_failed(
    ctx: click.Context, url: str | None, table: str | None, ids: tuple[int, ...], all_rows: bool
) -> None:
    """Make failed rows pending again (after the fix); the relay then publishes them."""
    if bool(ids) == all_rows:
        raise click.UsageError("give --id ID (repeatable) or --all")
    with _open(ctx, url, table) as box:
        count = box.retry_failed(None if all_rows else ids)
    echo(f"{count} row(s) pending again")
    if not count:
        raise click.exceptions.Exit(1)


def _age(moment: datetime) -> str:
    # A naive time is local (Django with USE_TZ = False).
    now = datetime.now(UTC) if moment.tzinfo else datetime.now()
    seconds = max(0, int((now - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
