"""``manage.py eventbus ...``: the ``eventbus`` CLI on the project's bus, plus the outbox.

``manage.py eventbus --help`` lists the commands: ``dlq`` (list, stats, show,
replay, edit, purge), ``events``, ``publish``, ``schema export``, and
``outbox relay`` / ``outbox status``. The commands are click commands
(:mod:`eventbus.contrib.django.cli`); this class only hands them the argv.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-untyped]
from django.db import connections  # type: ignore[import-untyped]

from eventbus.contrib.django.cli import run

#: Options ``manage.py`` itself has applied before the command runs.
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


class Command(BaseCommand):  # type: ignore[misc]
    help = "eventbus on this project's bus: dlq, events, publish, schema, outbox relay/status."
    requires_system_checks: list[str] = []

    def run_from_argv(self, argv: list[str]) -> None:
        prog_name = f"{_prog(argv[0])} {argv[1]}"
        try:
            code = run(_without_django_options(argv[2:]), prog_name=prog_name)
        finally:
            connections.close_all()
        if code:
            sys.exit(code)

    def print_help(self, prog_name: str, subcommand: str) -> None:
        run(["--help"], prog_name=f"{_prog(prog_name)} {subcommand}")

    # call_command("eventbus", "outbox", "relay", "--limit", "10") goes through these.

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="an eventbus command")

    def handle(self, *args: str, **options: Any) -> None:
        code = run(args, prog_name="eventbus")
        if code:
            raise CommandError(
                f"eventbus {' '.join(args)} exited with status {code}", returncode=code
            )


def _prog(argv0: str) -> str:
    name = os.path.basename(argv0)
    return "python -m django" if name == "__main__.py" else name  # as manage.py's help says


def _without_django_options(args: list[str]) -> list[str]:
    kept: list[str] = []
    skip_value = False
    for arg in args:
        if skip_value:
            skip_value = False
        elif arg in _DJANGO_OPTIONS:
            skip_value = True
        elif not arg.startswith(tuple(f"{option}=" for option in _DJANGO_OPTIONS)):
            kept.append(arg)
    return kept
