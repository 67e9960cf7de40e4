"""``eventbus console``: serve the web console (:mod:`eventbus.console`) with waitress.

waitress serves it because it is a production WSGI server in pure Python
(no compiler, no C extension: it installs wherever eventbus does, Windows
included), well kept (Pylons), multi-threaded, and it runs in the
foreground of one process, which is what a command an operator starts, or
a container's entry point, wants. Any other WSGI server can serve
``eventbus.console.create_app(bus)`` instead.

Refuses to start without authentication (the environment's
``EVENTBUS_CONSOLE_USER`` and ``EVENTBUS_CONSOLE_PASSWORD``, or
``EVENTBUS_CONSOLE_TOKEN``), unless ``--open`` is given, which binds to a
loopback address only.
"""

from __future__ import annotations

import logging

import click

from eventbus.cli.context import bus_of, echo, fail, handle_errors

__all__ = ["console"]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8085, show_default=True)
@click.option(
    "--open",
    "open_console",
    is_flag=True,
    help="Serve without authentication: only on a loopback address (127.0.0.1, ::1).",
)
@click.option(
    "--flower-url",
    envvar="EVENTBUS_FLOWER_URL",
    show_envvar=True,
    default=None,
    help="Flower's address: task ids link to its task page.",
)
@click.option(
    "--threads", type=click.IntRange(1, 64), default=4, show_default=True, help="Worker threads."
)
@click.option(
    "--max-age",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="Seconds a read of the queue is shown before it is read again.",
)
@click.pass_context
@handle_errors
def console(
    ctx: click.Context,
    host: str,
    port: int,
    open_console: bool,
    flower_url: str | None,
    threads: int,
    max_age: float,
) -> None:
    """Serve the web console: dead letters grouped, shown, replayed, edited, purged.

    Log in with EVENTBUS_CONSOLE_USER and EVENTBUS_CONSOLE_PASSWORD, or with
    EVENTBUS_CONSOLE_TOKEN; without either the console refuses to start,
    unless --open (loopback only). EVENTBUS_CONSOLE_SECRET_KEY signs sessions
    (default: random, so they end with the process). Every action is logged
    with the user who did it.
    """
    try:
        import waitress

        from eventbus.console import create_app
        from eventbus.console.auth import Credentials, is_loopback
    except ImportError as exc:
        fail(f"{exc}; the console needs: pip install 'eventbus[console]'")
    if open_console and not is_loopback(host):
        raise click.UsageError(f"--open serves without authentication: loopback only, not {host!r}")
    credentials = Credentials.from_env()
    if not open_console:
        credentials.require()
    bus = bus_of(ctx)
    app = create_app(
        bus,
        credentials=credentials,
        open=open_console,
        flower_url=flower_url,
        max_age=max_age,
    )
    app.extensions["eventbus_console"].cache.refresh()  # the first read starts now
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    shown = f"[{host}]" if ":" in host else host
    who = (
        "OPEN, no login (loopback only)"
        if open_console
        else "log in with "
        + " or ".join(
            name
            for name, present in (
                (f"user {credentials.user!r}", credentials.user is not None),
                ("the token", credentials.token is not None),
            )
            if present
        )
    )
    echo(f"eventbus console on http://{shown}:{port}/ ({who}); Ctrl-C stops it")
    waitress.serve(app, host=host, port=port, threads=threads, ident="eventbus-console")
