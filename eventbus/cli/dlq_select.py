"""What ``eventbus dlq`` commands share: choosing records, and saying none matched.

The filters (``--handler``, ``--event-type``, ``--exception``, ``--since``),
a failure group as ``dlq stats`` prints it, ids (or unique prefixes) named on
the command line, and whether the operator can be asked (a prompt, an editor).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypeVar

import click

from eventbus.cli.context import fail
from eventbus.deadletter.queue import DeadLetterQueue, Selection
from eventbus.deadletter.record import DeadLetter

__all__ = [
    "Since",
    "filters",
    "interactive",
    "matcher",
    "nothing",
    "nothing_matched",
    "parse_group",
    "resolve",
]

F = TypeVar("F", bound=Callable[..., Any])


class Since(click.ParamType[datetime]):
    """An ISO date or time (UTC unless it names its zone), or an age such as 30m, 2h, 1d."""

    name = "since"
    _AGE = re.compile(r"(\d+)\s*([smhdw])", re.IGNORECASE)
    _UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        try:
            age = self._AGE.fullmatch(text)
            if age:
                unit = self._UNITS[age[2].lower()]
                return datetime.now(UTC) - timedelta(**{unit: int(age[1])})
            moment = datetime.fromisoformat(text)
        except (ValueError, OverflowError):
            self.fail(
                f"{text!r} is neither an ISO date/time (2025-05-01, 2025-05-01T13:00) "
                "nor an age (45s, 30m, 2h, 1d, 1w)",
                param,
                ctx,
            )
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def filters(func: F) -> F:
    """The options that narrow a selection: --handler, --event-type, --exception, --since."""
    for option in reversed(
        [
            click.option("--handler", help="Handler name (shell pattern, e.g. 'handlers.todo.*')."),
            click.option("--event-type", help="Event type (shell pattern)."),
            click.option("--exception", "exception_type", help="Exception type, short or dotted."),
            click.option(
                "--since",
                type=Since(),
                metavar="AGE|DATE",
                help="Failed at/after: an ISO date/time (UTC) or an age (30m, 2h, 1d).",
            ),
        ]
    ):
        func = option(func)
    return func


def matcher(selection: Selection, group: tuple[str, str] | None) -> Callable[[DeadLetter], bool]:
    """The filters, and the failure group if one is named (matched exactly, not as a pattern)."""

    def matches(record: DeadLetter) -> bool:
        if group is not None:
            handler, exception = record.group
            if handler != group[0] or group[1] not in (exception, exception.rsplit(".", 1)[-1]):
                return False
        return selection.matches(record)

    return matches


def parse_group(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """``--group HANDLER:EXCEPTION`` as a (handler, exception) pair."""
    if value is None:
        return None
    handler, _, exception = value.rpartition(":")
    if not handler or not exception:
        raise click.BadParameter(
            f"{value!r} is not HANDLER:EXCEPTION (as 'eventbus dlq stats' prints it)"
        )
    return handler, exception


def resolve(dead_letters: DeadLetterQueue, record_ids: tuple[str, ...]) -> list[DeadLetter]:
    """Each named record, once; an unknown id fails before anything is done."""
    records: dict[str, DeadLetter] = {}
    for record_id in record_ids:
        record = dead_letters.get(record_id)
        records.setdefault(record.id, record)
    return list(records.values())


def interactive() -> bool:
    """Can we ask the operator (a prompt, an editor)? Both ends must be a terminal."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def nothing_matched(filtered: bool) -> NoReturn:
    """Fail (exit 1): nothing to act on."""
    fail(nothing(filtered))


def nothing(filtered: bool) -> str:
    """What an empty answer says: none at all, or none of those asked for."""
    return "no dead letters match" if filtered else "no dead letters"
