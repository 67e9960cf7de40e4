"""``eventbus dlq replay`` and ``purge``: the commands that may touch 100,000 records.

What they print is :mod:`eventbus.cli.progress`'s: a bar on a terminal, the
summary off one, a line per record with ``-v``, a JSON object per record
with ``--json``. A replay removes a record only once its re-publish was
sent (and confirmed); a purge names a record only once the broker removed it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import click

from eventbus.cli import dlq_select
from eventbus.cli.context import bus_of, fail, handle_errors, printable
from eventbus.cli.dlq_select import filters, matcher, nothing_matched, parse_group, resolve
from eventbus.cli.progress import Mode, Progress, output_mode, verbosity
from eventbus.deadletter.queue import DeadLetterQueue, Selection
from eventbus.deadletter.record import DeadLetter
from eventbus.domain.envelope import Envelope
from eventbus.errors import DeadLetterQueueBusy, ReplayError

__all__ = ["dlq_purge", "dlq_replay"]


@click.command("replay", short_help="Re-publish records to the handler that failed.")
@click.argument("record_ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every record (narrowed by filters).")
@click.option(
    "--group",
    metavar="HANDLER:EXCEPTION",
    callback=parse_group,
    help="One failure group as 'dlq stats' prints it (exception: short or dotted).",
)
@filters
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; replay nothing.")
@verbosity
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
    verbose: bool,
    as_json: bool,
) -> None:
    """Re-publish dead letters to the handler that failed; each is removed once sent.

    Name RECORD_IDS (unique prefixes work), or select with --all, --group or
    filters. A record that cannot be replayed is reported and kept (exit 1).
    On a terminal a progress bar shows the walk through the queue, then a
    summary; -v prints a line per record, --json a JSON object per record.
    """
    selection = Selection(handler, event_type, exception_type, since)
    selected = bool(group) or any((handler, event_type, exception_type, since))
    if record_ids and (everything or selected):
        raise click.UsageError("give record ids, or --all/--group/filters, not both")
    if not record_ids and not (everything or selected):
        raise click.UsageError("name record ids, or use --all or --group (optionally with filters)")
    if group and (handler or exception_type):
        raise click.UsageError("--group names the handler and exception: drop those filters")
    mode = _mode(verbose, as_json)
    dead_letters = bus_of(ctx).dead_letters
    named = {record.id: record for record in resolve(dead_letters, record_ids)}
    matches = (lambda record: record.id in named) if named else matcher(selection, group)
    if dry_run:
        _dry_run(dead_letters, named, matches, mode, selected=selected)
        return
    outcomes: dict[str, bool] = {}  # record id: replayed (kept when False)
    replayed = kept = 0

    def status() -> str:
        return f"replayed {replayed}" + (f", kept {kept}" if kept else "")

    def report(record: DeadLetter, outcome: Envelope[Any] | ReplayError) -> None:
        nonlocal replayed, kept
        fields = {"id": record.id, "handler": record.handler, "event_id": record.event_id}
        if isinstance(outcome, ReplayError):
            outcomes[record.id] = False
            kept += 1
            progress.failed(
                f"kept {printable(record.id)}: {printable(outcome)}",
                {**fields, "outcome": "kept", "error": str(outcome)},
            )
        else:
            outcomes[record.id] = True
            replayed += 1
            progress.record(
                f"replayed {printable(record.id)} to {printable(record.handler)} "
                f"(event {outcome.event_id})",
                {**fields, "event_id": str(outcome.event_id), "outcome": "replayed"},
            )

    # The walk reads the whole queue (every record is looked at): its depth is the length.
    length = _depth(dead_letters) if mode == "bar" else None
    with Progress(mode, label="replaying", length=length, status=status) as progress:
        dead_letters.replay_each(_stepping(matches, progress), report)
        for record_id in named.keys() - outcomes.keys():  # replayed or purged meanwhile
            report(named[record_id], ReplayError(f"dead letter {record_id} is gone"))
    if replayed + kept == 0:
        nothing_matched(selected)
    progress.summary(f"replayed {replayed} dead letter(s)" + (f", kept {kept}" if kept else ""))
    if kept:
        raise click.exceptions.Exit(1)


def _mode(verbose: bool, as_json: bool) -> Mode:
    if verbose and as_json:
        raise click.UsageError("give -v or --json, not both")
    return output_mode(verbose=verbose, as_json=as_json, terminal=_stderr_is_terminal())


def _stderr_is_terminal() -> bool:
    """Where the bar would be drawn: stderr (stdout keeps the summary, or JSON)."""
    return sys.stderr.isatty()


def _stepping(
    matches: Callable[[DeadLetter], bool], progress: Progress
) -> Callable[[DeadLetter], bool]:
    """``matches``, advancing the bar by each record the walk looks at."""

    def select(record: DeadLetter) -> bool:
        progress.step()
        return matches(record)

    return select


def _dry_run(
    dead_letters: DeadLetterQueue,
    named: dict[str, DeadLetter],
    matches: Callable[[DeadLetter], bool],
    mode: Mode,
    *,
    selected: bool,
) -> None:
    replayable = kept = 0

    def status() -> str:
        return f"would replay {replayable}" + (f", keep {kept}" if kept else "")

    length = len(named) if named else _depth(dead_letters) if mode == "bar" else None
    with Progress(mode, label="dry run", length=length, status=status) as progress:
        records: Iterable[DeadLetter] = named.values() if named else dead_letters
        for record in records:
            progress.step()
            if not named and not matches(record):
                continue
            fields = {"id": record.id, "handler": record.handler, "event_id": record.event_id}
            if record.replayable:
                replayable += 1
                progress.record(
                    f"would replay {printable(record.id)} to {printable(record.handler)} "
                    f"(event {printable(record.event_id)})",
                    {**fields, "outcome": "would_replay"},
                )
            else:
                kept += 1
                progress.record(
                    f"would keep {printable(record.id)}: not replayable ({record.reason})",
                    {**fields, "outcome": "would_keep", "reason": record.reason},
                )
    if replayable + kept == 0:
        nothing_matched(selected)
    progress.summary(
        f"dry run: would replay {replayable} dead letter(s)"
        + (f", keep {kept}" if kept else "")
        + "; nothing was replayed"
    )


@click.command("purge", short_help="Delete named records, or all of them.")
@click.argument("record_ids", nargs=-1)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@verbosity
@click.pass_context
@handle_errors
def dlq_purge(
    ctx: click.Context, record_ids: tuple[str, ...], yes: bool, verbose: bool, as_json: bool
) -> None:
    """Delete the named dead letters, or all of them (asks first).

    RECORD_IDS may be unique prefixes; naming them is how hand-pushed
    garbage (listed as <undecodable>) is removed without touching the rest.
    On a terminal a progress bar shows a purge of all, then a summary; -v
    prints a line per record, --json a JSON object per record.
    """
    mode = _mode(verbose, as_json)
    dead_letters = bus_of(ctx).dead_letters
    records = resolve(dead_letters, record_ids)
    if records:
        question = f"delete {len(records)} dead letter(s): {', '.join(r.id for r in records)}?"
    else:
        total = len(dead_letters)
        if total == 0:
            nothing_matched(False)
        question = f"delete all {total} dead letter(s)?"
    if not yes:
        if not dlq_select.interactive():
            fail("refusing to purge without --yes when not on a terminal")
        click.confirm(question, abort=True)
    if not records:
        purged = 0

        def removed(ids: list[str]) -> None:
            nonlocal purged
            purged += len(ids)
            progress.step(len(ids))
            for record_id in ids:
                progress.record(f"purged {printable(record_id)}", _purged(record_id, "purged"))

        with Progress(mode, label="purging", length=total, status=lambda: "") as progress:
            count = dead_letters.purge(removed=removed)
        progress.summary(f"purged {count} dead letter(s)")
        return
    progress = Progress(mode, label="deleting", length=None)  # (no bar: one pass)
    if mode in ("lines", "json"):  # which ones went: one at a time (they were named: a few)
        deleted = 0
        for record in records:
            gone = dead_letters.delete([record.id]) == 1
            deleted += gone
            progress.record(
                f"deleted {printable(record.id)}" if gone else f"{record.id} was gone already",
                _purged(record.id, "deleted" if gone else "gone"),
            )
    else:
        deleted = dead_letters.delete([record.id for record in records])
    progress.summary(f"deleted {deleted} dead letter(s)")
    if deleted < len(records):
        fail(f"{len(records) - deleted} of them were gone already (replayed or purged meanwhile)")


def _purged(record_id: str, outcome: str) -> dict[str, Any]:
    return {"id": record_id, "outcome": outcome}


def _depth(dead_letters: Any) -> int | None:
    """The queue's depth for the progress bar; None (a bar without a total) while unknown.

    On RabbitMQ the depth is not known while another reader holds records
    (:class:`~eventbus.errors.DeadLetterQueueBusy`); the walk itself waits
    for its turn.
    """
    try:
        return int(dead_letters.store.count())
    except DeadLetterQueueBusy:
        return None
