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
from datetime import UTC, datetime
from typing import IO, Any

import click

from eventbus.cli import dlq_select
from eventbus.cli.context import bus_of, echo, fail, handle_errors, printable
from eventbus.cli.dlq_bulk import dlq_purge, dlq_replay
from eventbus.cli.dlq_select import filters, matcher, nothing
from eventbus.deadletter.queue import Selection
from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.upcast import current_data
from eventbus.errors import EventValidationError, EventVersionError

__all__ = ["dlq"]


def _json(record: DeadLetter, indent: int | None = None) -> str:
    # ASCII only: a C1 control (or any character) arrives as a \u escape, so
    # JSON piped to a terminal cannot drive it either.
    return json.dumps(record.model_dump(mode="json"), indent=indent, ensure_ascii=True)


# -- list, stats, show -------------------------------------------------------------


@click.group()
def dlq() -> None:
    """Inspect, replay, edit and purge dead letters."""


@dlq.command("list", short_help="List records, oldest first, without consuming them.")
@filters
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
    matches = matcher(Selection(handler, event_type, exception_type, since), None)
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
        echo(nothing(any((handler, event_type, exception_type, since))))


def _row(record: DeadLetter) -> str:
    exception = printable(record.exception_type.rsplit(".", 1)[-1])
    failed_at = record.failed_at
    when = (
        "unknown"  # a message that is no record says nothing of it
        if failed_at is None
        else f"{failed_at.astimezone(UTC) if failed_at.tzinfo else failed_at:%Y-%m-%d %H:%M:%S}"
    )
    handler = printable(record.handler or "?")
    return (
        f"{printable(record.id):<32}  {handler[:34]:<34}  {_event_label(record):<22}  "
        f"{exception[:24]:<24}  {record.attempts:>3}  {when}"
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
        echo(nothing(False))


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
    if value is None and name == "failed_at":
        return "unknown (the message does not say)"
    if value is None and name == "handler":
        return (
            "(unknown: the message could not be decoded)"
            if record.reason == "undecodable"
            else "(unknown)"
        )
    return "-" if value is None else printable(value)


# -- replay, edit ------------------------------------------------------------------


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
    if data_text is None and data_file is None and not dlq_select.interactive():
        raise click.UsageError("give --data or --file: not on a terminal, so no $EDITOR")
    bus = bus_of(ctx)
    dead_letters = bus.dead_letters
    record = dead_letters.get(record_id)
    if not record.replayable:
        fail(f"dead letter {record.id} has no decodable envelope ({record.reason}): purge it")
    try:
        current, upcast = current_data(bus.event_registry, record)
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


# replay and purge, over many records: eventbus.cli.dlq_bulk
dlq.add_command(dlq_replay)
dlq.add_command(dlq_purge)
