"""A DLQ message that is not a dead-letter record has no failure time, and says so.

Such a message (pushed to the queue by hand, or by anything but eventbus) is
listed as an undecodable record. Nothing in it says when it failed; it used
to get the time of the read, a new one at every read: ``dlq list --since
1h`` listed it and the console counted it among the last hour's failures
for ever. Its time is unknown now, and every view says so.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from eventbus.celery.deadletter.base import decode_record
from eventbus.cli.dlq import _row
from eventbus.console.snapshot import Filters, Snapshot, cursor_of
from eventbus.console.views import _utc
from eventbus.deadletter.queue import Selection
from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.summary import Summary

GARBAGE = b"\x00 not a record {"


def _known(failed_at: datetime) -> DeadLetter:
    return DeadLetter(
        handler="app.handlers.send_email",
        reason="retries_exhausted",
        attempts=3,
        exception_type="ValueError",
        exception_message="no",
        failed_at=failed_at,
    )


def test_a_message_that_is_no_record_has_no_failure_time() -> None:
    first, again = decode_record(GARBAGE), decode_record(GARBAGE)
    assert first.reason == "undecodable"
    assert first.failed_at is None
    assert again.failed_at is None and again.id == first.id


def test_a_record_that_says_nothing_of_its_time_gets_none_either() -> None:
    # (a bare record of another writer, without failed_at)
    record = decode_record(
        b'{"handler": "h", "reason": "retries_exhausted", "attempts": 1, '
        b'"exception_type": "E", "exception_message": "m"}'
    )
    assert record.reason == "retries_exhausted"
    assert record.failed_at is None


def test_a_record_eventbus_writes_still_gets_its_time() -> None:
    before = datetime.now(UTC)
    record = DeadLetter(
        handler="h",
        reason="retries_exhausted",
        attempts=1,
        exception_type="E",
        exception_message="m",
    )
    assert record.failed_at is not None and record.failed_at >= before
    assert decode_record(record.model_dump_json().encode()).failed_at == record.failed_at


def test_a_time_filter_leaves_out_what_has_no_time() -> None:
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert not Selection(since=hour_ago).matches(decode_record(GARBAGE))
    assert Selection().matches(decode_record(GARBAGE))  # listed without a time filter
    assert Selection(since=hour_ago).matches(_known(datetime.now(UTC)))


def test_the_cli_shows_unknown() -> None:
    assert _row(decode_record(GARBAGE)).endswith("unknown")
    assert _row(_known(datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC))).endswith("2026-12-01 10:00:00")


def test_the_console_counts_and_groups_only_known_times() -> None:
    now = time.time()
    known = Summary.of(_known(datetime.fromtimestamp(now - 60, UTC)))
    garbage = Summary.of(decode_record(GARBAGE))
    assert garbage.failed_at is None
    snapshot = Snapshot([garbage, known], now, 0.0)

    assert snapshot.failures_since(now - 3600) == {known.handler: 1}
    assert not Filters(since=datetime.fromtimestamp(now - 3600, UTC)).matches(garbage)
    assert not Filters(until=datetime.fromtimestamp(now, UTC)).matches(garbage)
    assert Filters().matches(garbage)

    groups = {g.handler: g for g in snapshot.groups()}
    assert groups["?"].first is None and groups["?"].last is None
    assert _utc(groups["?"].first) == "unknown"
    assert groups[known.handler].first == known.failed_at

    # paging goes past a record without a time, and back to it by its cursor
    page = snapshot.page(Filters(), None, 1)
    assert [row.id for row in page.rows] == [garbage.id]
    assert page.next_cursor == cursor_of(0, garbage)
    assert [row.id for row in snapshot.page(Filters(), page.next_cursor, 1).rows] == [known.id]
    assert _utc(garbage.failed_at) == "unknown"
