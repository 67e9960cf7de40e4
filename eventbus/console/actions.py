"""The console's actions: replay, edit-and-replay, purge one record; replay a group.

Each is a POST (with its CSRF token: see :mod:`eventbus.console.app`) that
calls the dead-letter queue's own API, exactly as ``eventbus dlq`` does, and
logs who did what (``eventbus.console`` logger, INFO), then sends the
operator to a page that shows the outcome. A group replay first shows a dry
run (a GET that counts, live, what would be replayed and what kept), and
runs in the background (:mod:`eventbus.console.jobs`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flask import flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from eventbus.console.blueprint import console
from eventbus.console.broker import dead_letter_readers, secrets_of
from eventbus.console.editing import FieldError, check_edit, field_errors
from eventbus.console.state import console_of
from eventbus.console.views import find_record, render_record
from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.upcast import current_data
from eventbus.errors import EventValidationError, EventVersionError, ReplayError
from eventbus.redaction import redact

__all__ = ["group_selector"]

logger = logging.getLogger("eventbus.console")


def group_selector(handler: str, exception_type: str, reason: str) -> Callable[[DeadLetter], bool]:
    """Selects the records of one failure group, names matched exactly."""

    def select(record: DeadLetter) -> bool:
        return (
            (record.handler or "?") == handler
            and record.exception_type == exception_type
            and record.reason == reason
        )

    return select


def _group_args() -> tuple[str, str, str]:
    source = request.form if request.method == "POST" else request.args
    handler = source.get("handler", "")
    exception_type = source.get("exception_type", "")
    reason = source.get("reason", "")
    return handler, exception_type, reason


@console.route("/records/<record_id>/replay", methods=["POST"])
def replay(record_id: str) -> ResponseReturnValue:
    state = console_of()
    try:
        envelope = state.bus.dead_letters.replay(record_id)
    except ReplayError as exc:
        message = redact(str(exc), secrets_of(state.bus))
        logger.warning("console: user=%s replay of %s refused: %s", g.user, record_id, message)
        return render_template("error.html", title="Not replayed", message=message), 409
    state.cache.forget([record_id])
    logger.info(
        "console: user=%s replayed dead letter %s (event %s)", g.user, record_id, envelope.event_id
    )
    flash(f"Replayed {record_id} (event {envelope.event_id}); it has left the queue.")
    return redirect(url_for("console.records"))


@console.route("/records/<record_id>/edit", methods=["POST"])
def edit(record_id: str) -> ResponseReturnValue:
    state = console_of()
    found = find_record(record_id)
    text = request.form.get("data", "")
    if not found.replayable:
        errors = [FieldError("(record)", f"not replayable ({found.reason}): purge it instead")]
        return render_record(found, edit_text=text, errors=errors, status=422, state=state)
    edited = check_edit(state.bus, found, text)
    if edited.errors or edited.data is None:
        return render_record(found, edit_text=text, errors=edited.errors, status=422, state=state)
    try:
        current, _ = current_data(state.bus.event_registry, found)
    except EventVersionError:
        current = None
    if edited.data == current:
        errors = [FieldError("(data)", "no change: use Replay to replay the record as it is")]
        return render_record(found, edit_text=text, errors=errors, status=422, state=state)
    try:
        envelope = state.bus.dead_letters.replay(found.id, data=edited.data)
    except EventValidationError as exc:
        return render_record(
            found, edit_text=text, errors=field_errors(exc), status=422, state=state
        )
    except ReplayError as exc:
        message = redact(str(exc), secrets_of(state.bus))
        logger.warning("console: user=%s edit of %s refused: %s", g.user, found.id, message)
        return render_template("error.html", title="Not replayed", message=message), 409
    state.cache.forget([found.id])
    changed = sorted(
        k for k in {*edited.data, *(current or {})} if edited.data.get(k) != (current or {}).get(k)
    )
    logger.info(
        "console: user=%s replayed dead letter %s with edited data (event %s; changed: %s)",
        g.user,
        found.id,
        envelope.event_id,
        ", ".join(changed),
    )
    flash(f"Replayed {found.id} with the corrected data (changed: {', '.join(changed)}).")
    return redirect(url_for("console.records"))


@console.route("/records/<record_id>/purge", methods=["POST"])
def purge(record_id: str) -> ResponseReturnValue:
    state = console_of()
    deleted = state.bus.dead_letters.delete([record_id])
    state.cache.forget([record_id])
    if not deleted:
        flash(f"{record_id} was gone already (replayed or purged meanwhile).")
        return redirect(url_for("console.records"))
    logger.info("console: user=%s purged dead letter %s", g.user, record_id)
    flash(f"Purged {record_id}.")
    return redirect(url_for("console.records"))


@console.route("/groups/replay", methods=["GET"])
def group_dry_run() -> ResponseReturnValue:
    state = console_of()
    handler, exception_type, reason = _group_args()
    select = group_selector(handler, exception_type, reason)
    replayable = kept = 0
    others = dead_letter_readers(state.bus)
    for found in state.bus.dead_letter_store.records():
        if select(found):
            if found.replayable:
                replayable += 1
            else:
                kept += 1
    others += dead_letter_readers(state.bus)
    return render_template(
        "group_replay.html",
        incomplete=bool(others),
        handler=handler,
        exception_type=exception_type,
        reason=reason,
        replayable=replayable,
        kept=kept,
    )


@console.route("/groups/replay", methods=["POST"])
def group_replay() -> ResponseReturnValue:
    state = console_of()
    handler, exception_type, reason = _group_args()
    what = f"group {handler} / {exception_type} / {reason}"
    try:
        expected = int(request.form.get("expected", "0"))
    except ValueError:
        expected = 0
    logger.info("console: user=%s started a replay of %s (%d counted)", g.user, what, expected)
    job = state.jobs.start(
        state.bus.dead_letters,
        group_selector(handler, exception_type, reason),
        user=str(g.user),
        what=what,
        expected=expected,
        secrets=secrets_of(state.bus),
        done=state.cache.forget,
    )
    return redirect(url_for("console.job", job_id=job.id))
