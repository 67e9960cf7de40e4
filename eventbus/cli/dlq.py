"""``eventbus dlq``: the dead-letter queue from a shell, for whoever is on call.

The workflow: ``list`` what failed, ``stats`` by failure group, ``show`` one
record, fix the cause, then ``replay`` (or ``edit`` a bad payload and replay
it) and ``purge`` what is left. Nothing here consumes a record except a
replay or a purge. Exit codes: 0 ok, 1 nothing matched or the operation was
refused or failed, 2 usage error.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import IO, Any, NoReturn, TypeVar

import click

from eventbus.bus.base import BaseEventBus
from eventbus.cli.context import bus_of, echo, fail, handle_errors, printable
from eventbus.deadletter.queue import DeadLetterQueue, Selection
from eventbus.deadletter.record import DeadLetter
from eventbus.domain.envelope import Envelope
from eventbus.errors import EventBusError, EventValidationError, EventVersionError, ReplayError

__all__ = ["dlq"]

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


def _filters(func: F) -> F:
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


def _matcher(selection: Selection, group: tuple[str, str] | None) -> Callable[[DeadLetter], bool]:
    """The filters, and the failure group if one is named (matched exactly, not as a pattern)."""

    def matches(record: DeadLetter) -> bool:
        if group is not None:
            handler, exception = record.group
            if handler != group[0] or group[1] not in (exception, exception.rsplit(".", 1)[-1]):
                return False
        return selection.matches(record)

    return matches


def _parse_group(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    handler, _, exception = value.rpartition(":")
    if not handler or not exception:
        raise click.BadParameter(
            f"{value!r} is not HANDLER:EXCEPTION (as 'eventbus dlq stats' prints it)"
        )
    return handler, exception


def _resolve(dead_letters: DeadLetterQueue, record_ids: tuple[str, ...]) -> list[DeadLetter]:
    """Each named record, once; an unknown id fails before anything is done."""
    records: dict[str, DeadLetter] = {}
    for record_id in record_ids:
        record = dead_letters.get(record_id)
        records.setdefault(record.id, record)
    return list(records.values())


def _interactive() -> bool:
    """Can we ask the operator (a prompt, an editor)? Both ends must be a terminal."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def _nothing_matched(filtered: bool) -> NoReturn:
    fail(_nothing(filtered))


def _nothing(filtered: bool) -> str:
    return "no dead letters match" if filtered else "no dead letters"


def _json(record: DeadLetter, indent: int | None = None) -> str:
    # ASCII only: a C1 control (or any character) arrives as a \u escape, so
    # JSON piped to a terminal cannot drive it either.
    return json.dumps(record.model_dump(mode="json"), indent=indent, ensure_ascii=True)


# -- list, stats, show -------------------------------------------------------------


@click.group()
def dlq() -> None:
    """Inspect, replay, edit and purge dead letters."""


@dlq.command("list", short_help="List records, oldest first, without consuming them.")
@_filters
@click.option("--limit", type=click.IntRange(min=1), help="At most this many.")
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
    """List dead letters, oldest first, without consuming them.

    An empty queue, or none matching, is an answer, not an error: exit 0
    (with --json, nothing printed).
    """
    matches = _matcher(Selection(handler, event_type, exception_type, since), None)
    records = itertools.islice(filter(matches, bus_of(ctx).dead_letters), limit)
    count = 0
    for record in records:
        count += 1
        if as_json:
            click.echo(_json(record))
            continue
        if count == 1:
            echo(
                f"{'ID':<32}  {'HANDLER':<34}  {'EVENT TYPE':<22}  {'EXCEPTION':<24}  "
                f"{'ATT':>3}  FAILED AT (UTC)"
            )
        echo(_row(record))
    if count == 0 and not as_json:
        echo(_nothing(any((handler, event_type, exception_type, since))))


def _row(record: DeadLetter) -> str:
    exception = printable(record.exception_type.rsplit(".", 1)[-1])
    failed_at = record.failed_at
    failed_at = failed_at.astimezone(UTC) if failed_at.tzinfo else failed_at
    handler = printable(record.handler or "?")
    return (
        f"{printable(record.id):<32}  {handler[:34]:<34}  {_event_label(record):<22}  "
        f"{exception[:24]:<24}  {record.attempts:>3}  {failed_at:%Y-%m-%d %H:%M:%S}"
    )


def _event_label(record: DeadLetter) -> str:
    if record.event_type:
        return printable(record.event_type)[:22]
    size = f" {record.raw_size}B" if record.raw_size is not None else ""
    return f"<undecodable>{size}"


@dlq.command("stats", short_help="Count records per failure group, largest first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: groups and total.")
@click.pass_context
@handle_errors
def dlq_stats(ctx: click.Context, as_json: bool) -> None:
    """Count dead letters by failure group (handler:exception), largest first.

    Each failed delivery counts once; copies of a record the broker holds
    (one delivery written twice) are counted apart, and named.
    An empty queue is an answer, not an error: exit 0 (with --json, a total of 0).
    """
    census = bus_of(ctx).dead_letters.census()  # counts while it reads: flat memory
    ranked = sorted(census.groups.items(), key=lambda item: (-item[1], item[0]))
    total = census.records
    if as_json:
        out = [
            {"group": f"{h}:{e}", "handler": h, "exception_type": e, "count": n}
            for (h, e), n in ranked
        ]
        summary: dict[str, Any] = {"groups": out, "total": total}
        if census.copies:  # (only then: the output of a queue without copies stays as it was)
            summary["copies"] = census.copies
        click.echo(json.dumps(summary, ensure_ascii=True))
    elif ranked:
        echo(f"{'COUNT':>7}  GROUP (HANDLER:EXCEPTION)")
        for (handler, exception), count in ranked:
            echo(f"{count:>7}  {printable(handler)}:{printable(exception)}")
        echo(f"{total:>7}  total")
        if census.copies:
            n = census.copies
            copies = "1 copy of a record" if n == 1 else f"{n} copies of records"
            echo(
                f"the queue also holds {copies} (a failed delivery written twice): "
                "counted, listed and replayed once"
            )
    else:
        echo(_nothing(False))


@dlq.command("show", short_help="Show one record in full, traceback included.")
@click.argument("record_id")
@click.option("--json", "as_json", is_flag=True, help="The full record as JSON.")
@click.pass_context
@handle_errors
def dlq_show(ctx: click.Context, record_id: str, as_json: bool) -> None:
    """Show one dead letter in full: envelope and data, exception, traceback.

    RECORD_ID may be a unique prefix (6 characters or more).
    """
    record = bus_of(ctx).dead_letters.get(record_id)
    if as_json:
        click.echo(_json(record, indent=2))
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
        echo(f"{name + ':':<12} {_field(record, name)}")
    if record.source is not None:
        where = " ".join(f"{key}={value}" for key, value in record.source.items())
        echo(f"{'source:':<12} {printable(where)}")
    echo(
        f"{'exception:':<12} {printable(record.exception_type)}: "
        f"{printable(record.exception_message)}"
    )
    if record.envelope is not None:
        echo("envelope:\n" + json.dumps(record.envelope, indent=2, ensure_ascii=True))
    if record.raw_body is not None:
        raw = printable(record.raw_body[:2000], multiline=True)
        echo(f"raw body ({record.raw_size} bytes):\n{raw}")
    if record.traceback:
        echo("traceback:\n" + printable(record.traceback.rstrip(), multiline=True))


def _field(record: DeadLetter, name: str) -> str:
    value = getattr(record, name)
    if value is None and name == "handler":
        return (
            "(unknown: the message could not be decoded)"
            if record.reason == "undecodable"
            else "(unknown)"
        )
    return "-" if value is None else printable(value)


# -- replay, edit ------------------------------------------------------------------


@dlq.command("replay", short_help="Re-publish records to the handler that failed.")
@click.argument("record_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every record (narrowed by filters).")
@click.option(
    "--group",
    metavar="HANDLER:EXCEPTION",
    callback=_parse_group,
    help="One failure group as 'dlq stats' prints it (exception: short or dotted).",
)
@_filters
@click.option("--dry-run", is_flag=True, help="Print what would be replayed; replay nothing.")
@click.pass_context
@handle_errors
def dlq_replay(
    ctx: click.Context,
    record_ids: tuple[str, ...],
    everything: bool,
    group: tuple[str, str] | None,
    handler: str | None,
    event_type: str | None,
    exception_type: str | None,
    since: datetime | None,
    dry_run: bool,
) -> None:
    """Re-publish dead letters to the handler that failed; each is removed once sent.

    Name RECORD_IDS (unique prefixes work), or select with --all, --group or
    filters. A record that cannot be replayed is reported and kept (exit 1).
    """
    selection = Selection(handler, event_type, exception_type, since)
    selected = bool(group) or any((handler, event_type, exception_type, since))
    if record_ids and (everything or selected):
        raise click.UsageError("give record ids, or --all/--group/filters, not both")
    if not record_ids and not (everything or selected):
        raise click.UsageError("name record ids, or use --all or --group (optionally with filters)")
    if group and (handler or exception_type):
        raise click.UsageError("--group names the handler and exception: drop those filters")
    dead_letters = bus_of(ctx).dead_letters
    named = {record.id: record for record in _resolve(dead_letters, record_ids)}
    matches = (lambda record: record.id in named) if named else _matcher(selection, group)
    if dry_run:
        records = named.values() if named else filter(matches, dead_letters)
        _dry_run(records, selected=selected)
        return
    outcomes: dict[str, bool] = {}  # record id: replayed (kept when False)

    def report(record: DeadLetter, outcome: Envelope[Any] | ReplayError) -> None:
        if isinstance(outcome, ReplayError):
            outcomes[record.id] = False
            echo(f"kept {printable(record.id)}: {printable(outcome)}", err=True)
        else:
            outcomes[record.id] = True
            echo(
                f"replayed {printable(record.id)} to {printable(record.handler)} "
                f"(event {outcome.event_id})"
            )

    replayed = dead_letters.replay_each(matches, report)
    for record_id in named.keys() - outcomes.keys():  # replayed or purged meanwhile
        report(named[record_id], ReplayError(f"dead letter {record_id} is gone"))
    kept = sum(1 for ok in outcomes.values() if not ok)
    if replayed + kept == 0:
        _nothing_matched(selected)
    echo(f"replayed {replayed} dead letter(s)" + (f", kept {kept}" if kept else ""))
    if kept:
        raise click.exceptions.Exit(1)


def _dry_run(records: Iterable[DeadLetter], *, selected: bool) -> None:
    replayable = kept = 0
    for record in records:
        if record.replayable:
            replayable += 1
            echo(
                f"would replay {printable(record.id)} to {printable(record.handler)} "
                f"(event {printable(record.event_id)})"
            )
        else:
            kept += 1
            echo(f"would keep {printable(record.id)}: not replayable ({record.reason})")
    if replayable + kept == 0:
        _nothing_matched(selected)
    echo(
        f"dry run: would replay {replayable} dead letter(s)"
        + (f", keep {kept}" if kept else "")
        + "; nothing was replayed"
    )


@dlq.command("edit", short_help="Replay one record with corrected data.")
@click.argument("record_id")
@click.option("--data", "data_text", metavar="JSON", help="The corrected data, a JSON object.")
@click.option(
    "--file",
    "data_file",
    type=click.File("r"),
    help="Read the corrected data from a file ('-': stdin).",
)
@click.pass_context
@handle_errors
def dlq_edit(
    ctx: click.Context, record_id: str, data_text: str | None, data_file: IO[str] | None
) -> None:
    """Replay one dead letter with corrected data, under the same event id.

    The data is validated against the event's schema before anything is
    sent; an invalid one is reported and the record kept. Without --data or
    --file, opens $EDITOR on the record's current data.
    """
    if data_text is not None and data_file is not None:
        raise click.UsageError("give --data or --file, not both")
    if data_text is None and data_file is None and not _interactive():
        raise click.UsageError("give --data or --file: not on a terminal, so no $EDITOR")
    bus = bus_of(ctx)
    dead_letters = bus.dead_letters
    record = dead_letters.get(record_id)
    if not record.replayable:
        fail(f"dead letter {record.id} has no decodable envelope ({record.reason}): purge it")
    try:
        current, upcast = _current_data(bus, record)
    except EventVersionError as exc:
        if data_text is None and data_file is None:
            fail(
                f"dead letter {record.id} cannot be shown at the current schema: {exc}; "
                "give the corrected data, of the current schema, with --data or --file"
            )
        current, upcast = (record.envelope or {}).get("data"), None
    if upcast:
        echo(
            f"{printable(record.id)}: the data is edited and sent at the current schema ({upcast})",
            err=True,
        )
    if data_text is not None:
        data = _json_object(data_text, "--data")
    elif data_file is not None:
        data = _json_object(data_file.read(), "--file")
    else:
        data = _edit(current)
    if data == current:
        fail(f"no change to the data of {record.id}; 'dlq replay {record.id}' replays it as is")
    try:
        envelope = dead_letters.replay(record.id, data=data)
    except EventValidationError as exc:
        schema = f" (the data must be of the current schema: {upcast})" if upcast else ""
        fail(f"{exc}; nothing was sent, {record.id} is kept{schema}")
    changed = sorted(
        key for key in {*data, *(current or {})} if data.get(key) != (current or {}).get(key)
    )
    echo(
        f"replayed {record.id} to {printable(record.handler)} with corrected data "
        f"(event {envelope.event_id}; changed: {printable(', '.join(changed))})"
    )


def _current_data(bus: BaseEventBus, record: DeadLetter) -> tuple[Any, str | None]:
    """The record's data at its event class's current version, and how it got there.

    A record written at an older schema version is upcast (the registry's
    upcasters, as every reader does): the operator edits, and the replay
    sends, data of the version the handlers run today. ``None`` when no
    upcast was needed (or the type is unknown here: the replay says so).
    Raises :class:`EventVersionError` when the upcasters cannot do it.
    """
    wire = record.envelope or {}
    data = wire.get("data")
    version = wire.get("version")
    event_type = str(wire.get("event_type"))
    try:
        latest = bus.event_registry.get(event_type).event_version
    except EventBusError:
        return data, None
    if not isinstance(data, dict) or not isinstance(version, int) or version == latest:
        return data, None
    data = bus.event_registry.upcasters.upcast(event_type, version, data, latest)
    return data, f"upcast from v{version} to v{latest}"


def _json_object(text: str, source: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=source) from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=source)
    return value


def _edit(current: Any) -> dict[str, Any]:
    before = json.dumps(current, indent=2, ensure_ascii=False) + "\n"
    after = click.edit(before, extension=".json", require_save=True)
    if after is None or after.strip() == before.strip():
        fail("no change: the editor was closed without changing the data")
    try:
        value = json.loads(after)
    except ValueError as exc:
        fail(f"the edited data is not valid JSON ({exc}); nothing was replayed")
    if not isinstance(value, dict):
        fail("the edited data must be a JSON object; nothing was replayed")
    return value


# -- purge -------------------------------------------------------------------------


@dlq.command("purge", short_help="Delete named records, or all of them.")
@click.argument("record_ids", nargs=-1)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
@handle_errors
def dlq_purge(ctx: click.Context, record_ids: tuple[str, ...], yes: bool) -> None:
    """Delete the named dead letters, or all of them (asks first).

    RECORD_IDS may be unique prefixes; naming them is how hand-pushed
    garbage (listed as <undecodable>) is removed without touching the rest.
    """
    dead_letters = bus_of(ctx).dead_letters
    records = _resolve(dead_letters, record_ids)
    if records:
        question = f"delete {len(records)} dead letter(s): {', '.join(r.id for r in records)}?"
    else:
        total = len(dead_letters)
        if total == 0:
            _nothing_matched(False)
        question = f"delete all {total} dead letter(s)?"
    if not yes:
        if not _interactive():
            fail("refusing to purge without --yes when not on a terminal")
        click.confirm(question, abort=True)
    if not records:
        echo(f"purged {dead_letters.purge()} dead letter(s)")
        return
    deleted = dead_letters.delete([record.id for record in records])
    echo(f"deleted {deleted} dead letter(s)")
    if deleted < len(records):
        fail(f"{len(records) - deleted} of them were gone already (replayed or purged meanwhile)")
