"""The console's pages: overview, groups, records, one record; login and logout.

Every page that shows the queue reads it, or shows why it could not: a
:class:`~eventbus.errors.DeadLetterQueueUnavailable` becomes a 503 page that
names the problem (password masked), never an empty list. The actions (POST)
are in :mod:`eventbus.console.actions`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

from flask import abort, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from eventbus.console.blueprint import console
from eventbus.console.broker import broker_name, queue_depths, secrets_of
from eventbus.console.snapshot import Filters
from eventbus.console.state import console_of
from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.upcast import current_data
from eventbus.errors import (
    DeadLetterNotFound,
    DeadLetterQueueBusy,
    DeadLetterQueueUnavailable,
    EventBusError,
    EventVersionError,
)
from eventbus.redaction import redact

__all__ = ["BadFilter", "find_record", "parse_moment", "render_record"]

logger = logging.getLogger("eventbus.console")


class BadFilter(ValueError):
    """A filter of the records page that means nothing: the page says which and why."""


# -- helpers -----------------------------------------------------------------------


_AGE = re.compile(r"(\d+)\s*([smhdw])", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_moment(name: str, text: str) -> datetime | None:
    """An ISO date/time (UTC unless it names its zone) or an age (30m, 2h, 1d); '' is None."""
    text = text.strip()
    if not text:
        return None
    age = _AGE.fullmatch(text)
    try:
        if age:
            return datetime.now(UTC) - timedelta(**{_UNITS[age[2].lower()]: int(age[1])})
        moment = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise BadFilter(
            f"{name}: {text!r} is neither an ISO date/time (2026-12-01T13:00) "
            "nor an age (45s, 30m, 2h, 1d)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def find_record(record_id: str) -> DeadLetter:
    """The record with this full id, read live; stops reading once found."""
    records = console_of().bus.dead_letter_store.records()
    try:
        for record in records:
            if record.id == record_id:
                return record
    finally:
        close = getattr(records, "close", None)
        if close is not None:  # a RabbitMQ browse gives its messages back now
            close()
    raise DeadLetterNotFound(record_id)


def flower_link(task_id: str | None) -> str | None:
    flower = console_of().flower_url
    if not flower or not task_id:
        return None
    return f"{flower}/task/{quote(task_id, safe='')}"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


@console.app_template_filter("utc")
def _utc(moment: datetime | float | None) -> str:
    if moment is None:  # a failure time no record said
        return "unknown"
    if isinstance(moment, (int, float)):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@console.app_context_processor
def _shared() -> dict[str, Any]:
    state = console_of()
    return {"user": g.get("user"), "open_console": state.open, "refreshing": state.cache.refreshing}


@console.app_errorhandler(DeadLetterQueueUnavailable)
def _unavailable(error: DeadLetterQueueUnavailable) -> ResponseReturnValue:
    message = redact(str(error), secrets_of(console_of().bus))
    logger.error("console: %s", message)
    return render_template(
        "error.html", title="The dead-letter queue could not be read", message=message
    ), 503


@console.app_errorhandler(DeadLetterNotFound)
def _not_found(error: DeadLetterNotFound) -> ResponseReturnValue:
    message = (
        f"{error}: replayed or purged meanwhile, or (on RabbitMQ) held by another reader "
        "of the queue at this moment, a listing or a replay: try again"
    )
    return render_template("error.html", title="No such dead letter", message=message), 404


@console.app_errorhandler(EventBusError)
def _eventbus_error(error: EventBusError) -> ResponseReturnValue:
    message = redact(str(error), secrets_of(console_of().bus))
    logger.error("console: %s", message)
    return render_template("error.html", title="Failed", message=message), 500


@console.app_errorhandler(500)
def _unexpected(error: Any) -> ResponseReturnValue:
    cause = getattr(error, "original_exception", None) or error
    message = redact(f"{type(cause).__name__}: {cause}", secrets_of(console_of().bus))
    logger.error("console: unexpected error on %s: %s", request.path, message)
    return render_template("error.html", title="Unexpected error", message=message), 500


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: a path of this console only (no open redirect)."""
    if not target:
        return url_for("console.overview")
    parts = urlsplit(target)
    # (A browser reads "/\\evil.example" as "//evil.example": no backslash either.)
    offsite = parts.scheme or parts.netloc or target.startswith("//") or "\\" in target
    if offsite or not target.startswith("/"):
        return url_for("console.overview")
    return target


# -- login ---------------------------------------------------------------------------


@console.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    state = console_of()
    if state.open:
        return redirect(url_for("console.overview"))
    error = None
    if request.method == "POST":
        user = state.credentials.login(
            request.form.get("user", ""), request.form.get("password", "")
        )
        if user is not None:
            state.start_session(user)
            logger.info("console: user=%s logged in from %s", user, request.remote_addr)
            return redirect(_safe_next(request.args.get("next")))
        logger.warning("console: refused a login from %s", request.remote_addr)
        error = "wrong user or password (or token)"
    status = 401 if error else 200
    return render_template("login.html", error=error), status


@console.route("/logout", methods=["POST"])
def logout() -> ResponseReturnValue:
    from flask import session

    logger.info("console: user=%s logged out", g.user)
    session.clear()
    return redirect(url_for("console.login"))


# -- pages ---------------------------------------------------------------------------


@console.route("/")
def overview() -> ResponseReturnValue:
    state = console_of()
    snapshot = state.cache.get(fresh=bool(request.args.get("refresh")))
    depth = live_depth(state)
    hour_ago = time.time() - 3600
    failures = sorted(snapshot.failures_since(hour_ago).items(), key=lambda kv: (-kv[1], kv[0]))
    return render_template(
        "overview.html",
        snapshot=snapshot,
        depth=depth,
        queues=queue_depths(state.bus),
        failures=failures,
        broker=broker_name(state.bus),
        dlq_name=state.bus.dead_letter_queue,
        groups=snapshot.groups()[:5],
    )


def live_depth(state: Any) -> int | None:
    """The queue's depth now; None while another reader holds its messages (RabbitMQ).

    The console's own read in the background is such a reader: its page is
    shown without the depth then, not as an error.
    """
    try:
        return int(state.bus.dead_letter_store.count())
    except DeadLetterQueueBusy:
        return None


@console.route("/groups")
def groups() -> ResponseReturnValue:
    state = console_of()
    snapshot = state.cache.get(fresh=bool(request.args.get("refresh")))
    return render_template(
        "groups.html",
        snapshot=snapshot,
        groups=snapshot.groups(),
        depth=live_depth(state),
    )


@console.route("/records")
def records() -> ResponseReturnValue:
    state = console_of()
    args = request.args
    error = None
    try:
        filters = Filters(
            handler=args.get("handler", ""),
            event_type=args.get("event_type", ""),
            reason=args.get("reason", ""),
            exception_type=args.get("exception_type", ""),
            since=parse_moment("since", args.get("since", "")),
            until=parse_moment("until", args.get("until", "")),
            text=args.get("text", "").strip(),
        )
    except BadFilter as exc:
        filters, error = None, str(exc)
    snapshot = state.cache.get(fresh=bool(args.get("refresh")))
    if filters is None:
        return render_template(
            "records.html", snapshot=snapshot, page=None, error=error, args=args, filters=None
        ), 400
    page = snapshot.page(filters, args.get("cursor") or None, state.page_size)
    following = {k: v for k, v in args.items() if k not in ("cursor", "refresh") and v}
    return render_template(
        "records.html",
        snapshot=snapshot,
        page=page,
        error=None,
        args=args,
        filters=filters,
        choices=snapshot.values(),
        following=following,
        depth=live_depth(state),
    )


@console.route("/records/<record_id>")
def record(record_id: str) -> ResponseReturnValue:
    state = console_of()
    found = find_record(record_id)
    return render_record(found, edit_text=None, errors=[], status=200, state=state)


def render_record(
    found: DeadLetter, *, edit_text: str | None, errors: list[Any], status: int, state: Any
) -> ResponseReturnValue:
    upcast_note = None
    version_error = None
    data: Any = None
    if found.envelope is not None:
        try:
            data, upcast_note = current_data(state.bus.event_registry, found)
        except EventVersionError as exc:
            data, version_error = (found.envelope or {}).get("data"), str(exc)
    return render_template(
        "record.html",
        record=found,
        envelope_text=pretty(found.envelope) if found.envelope is not None else None,
        edit_text=edit_text if edit_text is not None else pretty(data),
        errors=errors,
        upcast_note=upcast_note,
        version_error=version_error,
        flower=flower_link(found.task_id),
    ), status


@console.route("/records/<record_id>/purge")
def confirm_purge(record_id: str) -> ResponseReturnValue:
    return render_template("confirm_purge.html", record=find_record(record_id))


@console.route("/jobs/<job_id>")
def job(job_id: str) -> ResponseReturnValue:
    found = console_of().jobs.get(job_id)
    if found is None:
        abort(404)
    return render_template("job.html", job=found)
