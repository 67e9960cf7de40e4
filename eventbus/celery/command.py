"""``celery -A proj eventbus ...``: the CLI as a Celery sub-command.

Celery imports every ``celery.commands`` entry point at start, in every
worker of the environment; this module only imports click, and loads the
real commands (and pydantic with them) when ``celery eventbus`` is run.
"""

from __future__ import annotations

import importlib

import click

__all__ = ["eventbus"]


class _LazyGroup(click.Group):
    def _real(self) -> click.Group:
        real: click.Group = importlib.import_module("eventbus.cli.main").celery_command
        return real

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._real().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._real().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup, name="eventbus")
def eventbus() -> None:
    """eventbus commands on this Celery app's bus (demo, publish, events, dlq, schema, outbox)."""
