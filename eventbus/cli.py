"""The ``eventbus`` command line: demo, publish, events, and the dead-letter queue.

The same commands run under Celery as ``celery -A proj eventbus ...``.
Exit codes: 0 ok, 1 nothing matched or the operation failed, 2 usage error.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click

from eventbus.bus import BaseEventBus
from eventbus.celery_bus import bus_for_app
from eventbus.deadletter.record import DeadLetter
from eventbus.errors import EventBusError

__all__ = ["celery_command", "load_bus", "main"]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_APP = "handlers"  #: what --app means when neither it nor EVENTBUS_APP is given


def load_bus(spec: str) -> BaseEventBus:
    """Import ``module[:attribute]`` and find its event bus (or its Celery app's bus)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.UsageError(f"cannot import {module_name!r}: {exc}") from exc
    candidates = [attr] if attr else ["bus", "app", "celery"]
    for name in candidates:
        obj = getattr(module, name, None)
        if isinstance(obj, BaseEventBus):
            return obj
        bus = bus_for_app(obj) if obj is not None and hasattr(obj, "conf") else None
        if bus is not None:
            return bus
    raise click.UsageError(f"no EventBus found in {spec!r} (looked for {', '.join(candidates)})")


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


def _bus(ctx: click.Context) -> BaseEventBus:
    obj = ctx.find_object(BusContext)
    if obj is not None:
        return obj.bus
    celery_ctx = ctx.find_root().obj  # under `celery -A proj eventbus`
    app = getattr(celery_ctx, "app", None)
    bus = bus_for_app(app) if app is not None else None
    if bus is None:
        raise click.UsageError("the Celery app given with -A has no EventBus")
    return bus


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def handle_errors(func: F) -> F:
    """Turn eventbus errors into a one-line message and exit code 1."""
    import functools

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EventBusError as exc:
            _fail(str(exc))
        except TimeoutError as exc:
            _fail(str(exc))

    return wrapper  # type: ignore[return-value]


# -- commands -----------------------------------------------------------------


@click.command()
@click.option(
    "--broker",
    envvar="EVENTBUS_BROKER_URL",
    default=None,
    help="Broker URL (default: EVENTBUS_BROKER_URL, else embedded memory://).",
)
@click.option(
    "--queue",
    default="eventbus.demo",
    show_default=True,
    help="Handler queue of the demo's own worker (dead letters: EVENTBUS_DLQ).",
)
@handle_errors
def demo(broker: str | None, queue: str) -> None:
    """Run the example handlers on an in-process worker and narrate what happens."""
    from eventbus.demo import run_demo

    sys.exit(run_demo(broker, echo=click.echo, queue=queue))


@click.command()
@click.argument("event_type")
@click.argument("data")
@click.option("--aggregate-id", default=None, help="Id of the aggregate the event is about.")
@click.option("--aggregate-type", default=None, help="Type of that aggregate, e.g. Todo.")
@click.option("--correlation-id", default=None, help="Correlation id to carry along.")
@click.pass_context
@handle_errors
def publish(
    ctx: click.Context,
    event_type: str,
    data: str,
    aggregate_id: str | None,
    aggregate_type: str | None,
    correlation_id: str | None,
) -> None:
    """Publish EVENT_TYPE with DATA, a JSON object, to every subscribed handler."""
    from eventbus.envelope import create_event

    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="DATA") from None
    if not isinstance(payload, dict):
        raise click.BadParameter("must be a JSON object", param_hint="DATA")
    bus = _bus(ctx)
    envelope = create_event(
        event_type,
        payload,
        aggregate_id=aggregate_id,
        aggregate_type=aggregate_type,
        correlation_id=correlation_id,
        event_registry=bus.event_registry,
    )
    bus.publish(envelope)
    handlers = [s.name for s in bus.subscriptions(event_type)]
    click.echo(
        f"published {event_type} {envelope.event_id} to {len(handlers)} handler(s)"
        + (": " + ", ".join(handlers) if handlers else "")
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with JSON Schemas).")
@click.pass_context
@handle_errors
def events(ctx: click.Context, as_json: bool) -> None:
    """List event types and the handlers subscribed to each."""
    bus = _bus(ctx)
    registry = bus.event_registry
    if as_json:
        schemas = registry.json_schemas()
        out = [
            {
                "event_type": cls.event_type,
                "version": cls.event_version,
                "class": f"{cls.__module__}.{cls.__qualname__}",
                "handlers": [s.describe() for s in bus.subscriptions(cls)],
                "schema": schemas[cls.event_type],
            }
            for cls in registry
        ]
        click.echo(json.dumps(out, indent=2))
        return
    for cls in registry:
        subs = bus.subscriptions(cls)
        click.echo(f"{cls.event_type} (v{cls.event_version}, {cls.__module__}.{cls.__qualname__})")
        for sub in subs:
            opts = sub.options
            click.echo(
                f"  → {sub.name}  [queue={opts.queue or getattr(bus, 'default_queue', '-')}"
                f" max_retries={opts.max_retries} backoff={opts.retry_backoff}s"
                f" jitter={'on' if opts.retry_jitter else 'off'}]"
            )
        if not subs:
            click.echo("  (no handlers)")


@click.group()
def dlq() -> None:
    """Inspect, replay and purge dead letters."""


def _filters(func: F) -> F:
    for option in reversed(
        [
            click.option("--handler", help="Handler name (shell pattern, e.g. 'handlers.todo.*')."),
            click.option("--event-type", help="Event type (shell pattern)."),
            click.option("--exception", "exception_type", help="Exception type, short or dotted."),
        ]
    ):
        func = option(func)
    return func


@dlq.command("list")
@_filters
@click.option("--since", type=click.DateTime(), default=None, help="Only failures at/after (UTC).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@click.pass_context
@handle_errors
def dlq_list(
    ctx: click.Context,
    handler: str | None,
    event_type: str | None,
    exception_type: str | None,
    since: datetime | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List dead letters without consuming them (oldest first)."""
    from datetime import UTC

    bus = _bus(ctx)
    records = bus.dead_letters.filter(
        handler=handler,
        event_type=event_type,
        exception_type=exception_type,
        since=since.replace(tzinfo=UTC) if since and since.tzinfo is None else since,
        limit=limit,
    )
    count = 0
    for record in records:
        count += 1
        if as_json:
            click.echo(record.model_dump_json())
        else:
            if count == 1:
                click.echo(
                    f"{'ID':<32}  {'HANDLER':<34} {'EVENT':<18} {'EXCEPTION':<24} "
                    f"{'ATT':>3}  FAILED AT"
                )
            click.echo(_row(record))
    if count == 0:
        if not as_json:
            click.echo(
                "no dead letters"
                + (" match" if any((handler, event_type, exception_type, since)) else ""),
                err=True,
            )
        sys.exit(1)


def _row(record: DeadLetter) -> str:
    exc = record.exception_type.rsplit(".", 1)[-1]
    return (
        f"{record.id:<32}  {(record.handler or '?')[:34]:<34} "
        f"{(record.event_type or '<undecodable>')[:18]:<18} {exc[:24]:<24} "
        f"{record.attempts:>3}  {record.failed_at:%Y-%m-%d %H:%M:%S}"
    )


@dlq.command("show")
@click.argument("record_id")
@click.option("--json", "as_json", is_flag=True, help="The full record as JSON.")
@click.pass_context
@handle_errors
def dlq_show(ctx: click.Context, record_id: str, as_json: bool) -> None:
    """Show one dead letter in full: envelope, exception and traceback."""
    record = _bus(ctx).dead_letters.get(record_id)
    if as_json:
        click.echo(record.model_dump_json(indent=2))
        return
    for name in (
        "id",
        "handler",
        "reason",
        "attempts",
        "event_type",
        "event_id",
        "task_id",
        "queue",
        "worker",
        "failed_at",
    ):
        click.echo(f"{name + ':':<12} {getattr(record, name)}")
    click.echo(f"{'exception:':<12} {record.exception_type}: {record.exception_message}")
    if record.envelope is not None:
        click.echo("envelope:\n" + json.dumps(record.envelope, indent=2))
    if record.raw_body is not None:
        click.echo(f"raw body ({record.raw_size} bytes):\n{record.raw_body[:2000]}")
    if record.traceback:
        click.echo("traceback:\n" + record.traceback.rstrip())


@dlq.command("replay")
@click.argument("record_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every record (with filters).")
@_filters
@click.pass_context
@handle_errors
def dlq_replay(
    ctx: click.Context,
    record_ids: tuple[str, ...],
    replay_all: bool,
    handler: str | None,
    event_type: str | None,
    exception_type: str | None,
) -> None:
    """Re-publish dead letters to the handler that failed; each is removed once sent."""
    filters = (handler, event_type, exception_type)
    if record_ids and (replay_all or any(filters)):
        raise click.UsageError("give record ids, or --all/filters, not both")
    if not record_ids and not replay_all and not any(filters):
        raise click.UsageError("name record ids, or use --all (optionally with filters)")
    dead_letters = _bus(ctx).dead_letters
    if record_ids:
        for record_id in record_ids:
            envelope = dead_letters.replay(record_id)
            click.echo(f"replayed {record_id} (event {envelope.event_id})")
        return
    count = dead_letters.replay_all(
        handler=handler, event_type=event_type, exception_type=exception_type
    )
    click.echo(f"replayed {count} dead letter(s)")
    if count == 0:
        sys.exit(1)


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@handle_errors
def dlq_purge(ctx: click.Context, yes: bool) -> None:
    """Delete every dead letter (asks first)."""
    dead_letters = _bus(ctx).dead_letters
    if not yes:
        if not sys.stdin.isatty():
            _fail("refusing to purge without --yes when not on a terminal")
        click.confirm(f"delete all {len(dead_letters)} dead letter(s)?", abort=True)
    click.echo(f"purged {dead_letters.purge()} dead letter(s)")


dlq.add_command(dlq_list)
dlq.add_command(dlq_show)
dlq.add_command(dlq_replay)
dlq.add_command(dlq_purge)

_COMMANDS = (demo, publish, events, dlq)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-A",
    "--app",
    "app_spec",
    envvar="EVENTBUS_APP",
    default=DEFAULT_APP,
    show_default=True,
    help="module[:attr] holding your EventBus or Celery app.",
)
@click.pass_context
def main(ctx: click.Context, app_spec: str) -> None:
    """eventbus: typed domain events on Celery, with retries and a dead-letter queue."""
    sys.path.insert(0, os.getcwd())  # like `celery -A`, find the app in the working directory
    ctx.obj = BusContext(lambda: load_bus(app_spec))


for _command in _COMMANDS:
    main.add_command(_command)


@click.group(name="eventbus")
def celery_command() -> None:
    """eventbus commands on this Celery app's bus (demo, publish, events, dlq)."""


for _command in _COMMANDS:
    celery_command.add_command(_command)


if __name__ == "__main__":  # python -m eventbus.cli
    main()
