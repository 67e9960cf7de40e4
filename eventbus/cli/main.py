"""The ``eventbus`` command line: demo, publish, events, and the dead-letter queue.

``-A module[:attr]`` or ``EVENTBUS_APP`` names the app; there is no default
(``demo`` and ``--help`` need none). The same commands run under Celery as
``celery -A proj eventbus ...``. The
``dlq`` commands live in :mod:`eventbus.cli.dlq`, ``schema`` in :mod:`eventbus.cli.schema`,
``outbox`` in :mod:`eventbus.cli.outbox`, ``console`` in :mod:`eventbus.cli.console`,
``kafka`` in :mod:`eventbus.cli.kafka`.
Exit codes: 0 ok, 1 nothing matched or the operation failed, 2 usage error.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import click

from eventbus.bus.base import BaseEventBus, Subscription
from eventbus.celery.bus import bus_for_app
from eventbus.cli.console import console
from eventbus.cli.context import BusContext, NoAppGiven, bus_of, echo, handle_errors, printable
from eventbus.cli.dlq import dlq
from eventbus.cli.kafka import kafka
from eventbus.cli.outbox import outbox
from eventbus.cli.schema import schema

__all__ = ["celery_command", "load_bus", "main"]


def load_bus(spec: str | None) -> BaseEventBus:
    """Import ``module[:attribute]`` and find its event bus (or its Celery app's bus).

    No ``spec`` (neither ``-A`` nor ``EVENTBUS_APP``) raises :class:`NoAppGiven`.
    """
    if not spec:
        raise NoAppGiven()
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
    help="Handler queue of the demo's own worker; its dead letters go to QUEUE.dlq.",
)
@handle_errors
def demo(broker: str | None, queue: str) -> None:
    """Run the demo's example app on an in-process worker and narrate what happens."""
    from eventbus.cli.demo import run_demo

    sys.exit(run_demo(broker, echo=echo, queue=queue))


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
    from eventbus.domain.envelope import create_event

    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="DATA") from None
    if not isinstance(payload, dict):
        raise click.BadParameter("must be a JSON object", param_hint="DATA")
    bus = bus_of(ctx)
    envelope = create_event(
        event_type,
        payload,
        aggregate_id=aggregate_id,
        aggregate_type=aggregate_type,
        correlation_id=correlation_id,
        event_registry=bus.event_registry,
    )
    sent = bus.publish(envelope)
    echo(f"published {printable(event_type)} {sent.event_id} to {printable(bus.destination(sent))}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with JSON Schemas).")
@click.pass_context
@handle_errors
def events(ctx: click.Context, as_json: bool) -> None:
    """List event types and the handlers subscribed to each."""
    bus = bus_of(ctx)
    registry = bus.event_registry
    default_queue = getattr(bus, "default_queue", None)  # the in-memory bus has no queues

    def queue_of(sub: Subscription) -> str | None:
        return sub.options.queue or default_queue

    if as_json:
        schemas = registry.json_schemas()
        out = [
            {
                "event_type": cls.event_type,
                "version": cls.event_version,
                "class": f"{cls.__module__}.{cls.__qualname__}",
                # The queue each handler's messages go to, as the text view shows it.
                "handlers": [
                    {**s.describe(), "queue": queue_of(s)} for s in bus.subscriptions(cls)
                ],
                "schema": schemas[cls.event_type],
            }
            for cls in registry
        ]
        click.echo(json.dumps(out, indent=2, ensure_ascii=True))
        return
    for cls in registry:
        subs = bus.subscriptions(cls)
        echo(
            f"{printable(cls.event_type)} (v{cls.event_version}, "
            f"{cls.__module__}.{cls.__qualname__})"
        )
        for sub in subs:
            opts = sub.options
            echo(
                f"  → {printable(sub.name)}  [queue={printable(queue_of(sub) or '-')}"
                f" max_retries={opts.max_retries} backoff={opts.retry_backoff}s"
                f" jitter={'on' if opts.retry_jitter else 'off'}]"
            )
        if not subs:
            echo("  (no handlers)")


_COMMANDS = (demo, publish, events, dlq, schema, outbox, console, kafka)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-A",
    "--app",
    "app_spec",
    envvar="EVENTBUS_APP",
    show_envvar=True,
    default=None,
    help="module[:attr] holding your EventBus or Celery app; no default (demo needs none).",
)
@click.pass_context
def main(ctx: click.Context, app_spec: str | None) -> None:
    """eventbus: typed domain events on Celery, with retries and a dead-letter queue."""
    sys.path.insert(0, os.getcwd())  # like `celery -A`, find the app in the working directory
    ctx.obj = BusContext(lambda: load_bus(app_spec))


for _command in _COMMANDS:
    main.add_command(_command)


@click.group(name="eventbus")
def celery_command() -> None:
    """eventbus commands on this Celery app's bus (demo, publish, events, dlq, schema, outbox,
    console, kafka)."""


for _command in _COMMANDS:
    celery_command.add_command(_command)
