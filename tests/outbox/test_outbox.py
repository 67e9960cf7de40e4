"""The outbox on SQLite and PostgreSQL: rows in the caller's transaction, relayed once, in order."""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
import sqlalchemy as sa

from eventbus import ConcurrencyError, OutboxError, create_event
from eventbus.outbox import Outbox, OutboxRelay, RelayResult, outbox_payload
from eventbus.store import SQLEventStore
from tests.outbox.conftest import RecordingBus, rows
from tests.outbox.events import EVENTS, OrderPlaced, OrderShipped, placed


def add_committed(outbox: Outbox, count: int, prefix: str = "o") -> list[str]:
    """``count`` events committed in the outbox; their event ids, in order."""
    envelopes = [placed(f"{prefix}{i}") for i in range(count)]
    with outbox.engine.begin() as conn:
        outbox.add(envelopes, connection=conn)
    return [str(e.event_id) for e in envelopes]


def insert_raw(outbox: Outbox, payload: str, event_id: str | None = None) -> int:
    """A row written by someone else (another service, a bad migration): its id."""
    from datetime import UTC, datetime

    with outbox.engine.begin() as conn:
        return int(
            conn.execute(
                sa.insert(outbox.table).returning(outbox.table.c.id),
                {
                    "event_id": event_id or str(uuid4()),
                    "event_type": "outbox_test.order_placed",
                    "payload": payload,
                    "created_at": datetime.now(UTC),
                },
            ).scalar_one()
        )


# -- writing -------------------------------------------------------------------------


def test_rows_commit_with_the_callers_transaction_and_vanish_with_its_rollback(
    outbox: Outbox,
) -> None:
    # Given a transaction that writes an event, then fails
    with pytest.raises(LookupError), outbox.engine.begin() as conn:
        outbox.add(placed("lost"), connection=conn)
        raise LookupError("the request failed after writing")
    # Then no row is there
    assert rows(outbox) == []

    # When the same is committed
    event = placed("kept", correlation_id="req-1")
    with outbox.engine.begin() as conn:
        [written] = outbox.add(event, connection=conn)
    # Then its row is pending, with the envelope's fields and wire dict
    assert written is event
    [row] = rows(outbox)
    assert row["event_id"] == str(event.event_id)
    assert row["event_type"] == "outbox_test.order_placed"
    assert (row["aggregate_type"], row["aggregate_id"]) == ("Order", "kept")
    assert json.loads(row["payload"]) == json.loads(json.dumps(event.to_wire()))
    assert row["published_at"] is None and row["failed_at"] is None
    assert (row["attempts"], row["last_error"]) == (0, None)
    assert row["created_at"] is not None
    assert outbox.status().pending == 1


def test_an_event_is_wrapped_with_the_envelope_fields_as_publish_would(outbox: Outbox) -> None:
    with outbox.engine.begin() as conn:
        envelopes = outbox.add(
            [OrderPlaced(order="a", total=1), OrderShipped(order="a")],
            connection=conn,
            aggregate_id="a",
            aggregate_type="Order",
            metadata={"tenant": "t1"},
        )
    assert [e.event_type for e in envelopes] == [
        "outbox_test.order_placed",
        "outbox_test.order_shipped",
    ]
    assert {(e.aggregate_id, e.metadata["tenant"]) for e in envelopes} == {("a", "t1")}
    assert [r["event_id"] for r in rows(outbox)] == [str(e.event_id) for e in envelopes]


def test_add_refuses_envelope_fields_for_an_envelope_and_what_is_no_event(
    outbox: Outbox,
) -> None:
    with outbox.engine.begin() as conn:
        with pytest.raises(TypeError, match="create_event"):
            outbox.add(placed("a"), connection=conn, aggregate_id="b")
        with pytest.raises(TypeError, match="Events or Envelopes"):
            outbox.add([{"order": "a"}], connection=conn)  # type: ignore[list-item]
    assert rows(outbox) == []


def test_an_event_already_in_the_outbox_is_refused(outbox: Outbox) -> None:
    event = placed("a")
    with outbox.engine.begin() as conn:
        outbox.add(event, connection=conn)
    with pytest.raises(OutboxError, match="already in it"), outbox.engine.begin() as conn:
        outbox.add(event, connection=conn)
    assert len(rows(outbox)) == 1


# -- the event store and the outbox in one transaction -------------------------------


def test_append_writes_events_and_rows_in_one_transaction_with_the_stores_numbers(
    outbox: Outbox, store: SQLEventStore, bus: RecordingBus
) -> None:
    # When two appends go in, each in its own transaction
    first = outbox.append(store, [placed("o1"), placed("o1")], expected_version=0)
    second = outbox.append(store, [placed("o1")], expected_version=2)
    # Then the rows carry the store's sequence numbers
    stored = [s.envelope for s in first + second]
    assert [e.sequence for e in stored] == [1, 2, 3]
    assert [json.loads(r["payload"])["sequence"] for r in rows(outbox)] == [1, 2, 3]
    # And the relay publishes them with those numbers (the bus does not renumber)
    assert outbox.relay(bus) == RelayResult(published=3, failed=0, pending_left=0)
    assert [(e.event_id, e.sequence) for e in bus.received] == [
        (e.event_id, e.sequence) for e in stored
    ]


def test_append_in_the_callers_transaction_rolls_back_with_it(
    outbox: Outbox, store: SQLEventStore
) -> None:
    # Given a transaction of the caller's that appends, then fails
    with pytest.raises(LookupError), outbox.engine.begin() as conn:
        outbox.append(store, [placed("o1")], expected_version=0, connection=conn)
        raise LookupError("the request failed after writing")
    # Then neither the event nor the row is there
    assert store.version("o1", aggregate_type="Order") == 0
    assert rows(outbox) == []

    # Given the same, committed: both are
    with outbox.engine.begin() as conn:
        [stored] = outbox.append(store, [placed("o1")], expected_version=0, connection=conn)
    assert store.version("o1", aggregate_type="Order") == 1
    assert [r["event_id"] for r in rows(outbox)] == [str(stored.envelope.event_id)]


def test_a_stale_append_writes_neither_events_nor_rows(
    outbox: Outbox, store: SQLEventStore
) -> None:
    outbox.append(store, [placed("o1")], expected_version=0)
    with pytest.raises(ConcurrencyError):
        outbox.append(store, [placed("o1")], expected_version=0)
    assert store.version("o1", aggregate_type="Order") == 1
    assert len(rows(outbox)) == 1


def test_append_needs_a_sql_store(outbox: Outbox) -> None:
    from eventbus.store import InMemoryEventStore

    with pytest.raises(TypeError, match="SQLEventStore"):
        outbox.append(InMemoryEventStore(), [placed("o1")])  # type: ignore[arg-type]


# -- relaying --------------------------------------------------------------------------


def test_the_relay_publishes_pending_rows_once_in_id_order(
    outbox: Outbox, bus: RecordingBus
) -> None:
    ids = add_committed(outbox, 5)
    # When the relay runs a batch of 3, then another
    assert outbox.relay(bus, limit=3) == RelayResult(published=3, failed=0, pending_left=2)
    assert outbox.relay(bus, limit=3) == RelayResult(published=2, failed=0, pending_left=0)
    # Then every event went out once, in the order it was written, with its own id
    assert [str(e.event_id) for e in bus.received] == ids
    assert bus.batches == [3, 2]  # each batch's rows published together
    written = rows(outbox)
    assert all(r["published_at"] is not None and r["attempts"] == 1 for r in written)
    # And a further run has nothing to do
    assert outbox.relay(bus) == RelayResult(published=0, failed=0, pending_left=0)
    assert len(bus.received) == 5
    status = outbox.status()
    assert (status.pending, status.failed, status.published) == (0, 0, 5)
    assert status.oldest_pending is None


def test_drain_relays_batch_after_batch(outbox: Outbox, bus: RecordingBus) -> None:
    ids = add_committed(outbox, 25)
    relay = OutboxRelay(outbox, bus, batch_size=10)
    assert relay.drain(max_batches=2) == RelayResult(published=20, failed=0, pending_left=5)
    assert relay.drain() == RelayResult(published=5, failed=0, pending_left=0)
    assert [str(e.event_id) for e in bus.received] == ids
    assert relay.totals == {"published": 25, "failed": 0, "retried": 0}


def test_drain_counts_what_is_left_once_and_marks_a_batch_in_one_statement(
    outbox: Outbox, bus: RecordingBus
) -> None:
    # Given exactly three full batches of rows
    add_committed(outbox, 30)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(" ".join(statement.split()).upper())

    sa.event.listen(outbox.engine, "before_cursor_execute", record)
    try:
        # When the relay drains them
        result = OutboxRelay(outbox, bus, batch_size=10).drain()
    finally:
        sa.event.remove(outbox.engine, "before_cursor_execute", record)
    # Then every row went out, in one batch per transaction
    assert result == RelayResult(published=30, failed=0, pending_left=0)
    assert bus.batches == [10, 10, 10]
    # And each batch was marked by one UPDATE; the pending rows were counted once
    assert sum(s.startswith("UPDATE") for s in statements) == 3, statements
    assert sum(s.startswith("SELECT COUNT(*)") for s in statements) == 1, statements


def test_malformed_rows_are_marked_failed_logged_and_counted_and_the_relay_goes_on(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    # Given good rows around every kind of row that can never be published
    bus = RecordingBus(max_payload_bytes=2048)
    good_first = add_committed(outbox, 1, "first")
    unknown = placed("u").to_wire() | {"event_type": "outbox_test.nobody_knows"}
    invalid = placed("v").to_wire() | {"data": {"order": "v", "total": -5}}
    huge = placed("h", metadata={"blob": "x" * 4096})
    mismatched = placed("m")
    bad = {
        insert_raw(outbox, "{not json"): "not JSON",
        insert_raw(outbox, "[1, 2]"): "not an envelope",
        insert_raw(outbox, json.dumps(unknown), unknown["event_id"]): "nobody_knows",
        insert_raw(outbox, json.dumps(invalid), invalid["event_id"]): "total",
        insert_raw(outbox, outbox_payload(huge), str(huge.event_id)): "PayloadTooLarge",
        insert_raw(outbox, outbox_payload(mismatched)): "is not its payload's",
    }
    good_last = add_committed(outbox, 1, "last")

    # When the relay runs
    with caplog.at_level(logging.ERROR, logger="eventbus.outbox.relay"):
        result = outbox.relay(bus)

    # Then the good rows went out, the bad ones are counted and marked failed
    assert result == RelayResult(published=2, failed=len(bad), pending_left=0)
    assert [str(e.event_id) for e in bus.received] == good_first + good_last
    assert bus.batches == [2]  # the good rows, published together
    by_id = {r["id"]: r for r in rows(outbox)}
    for row_id, reason in bad.items():
        row = by_id[row_id]
        assert row["failed_at"] is not None and row["published_at"] is None
        assert reason in row["last_error"]
        assert row["attempts"] == 1
    # And each was logged at ERROR, naming its row
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == len(bad)
    assert all("marked failed" in r.getMessage() for r in logged)

    # And they are never retried, but show in the status
    assert outbox.relay(bus) == RelayResult(published=0, failed=0, pending_left=0)
    status = outbox.status()
    assert (status.pending, status.failed, status.published) == (0, len(bad), 2)
    assert [f.id for f in outbox.failed(limit=3)] == sorted(bad, reverse=True)[:3]


def test_failed_rows_can_be_made_pending_again_after_a_fix(outbox: Outbox) -> None:
    # Given a row of a type this code did not know, marked failed
    later = create_event(OrderShipped, {"order": "a"}, event_registry=EVENTS)
    insert_raw(outbox, outbox_payload(later), str(later.event_id))
    old_code = RecordingBus()
    old_code.event_registry = type(EVENTS)()  # knows no type at all
    assert outbox.relay(old_code).failed == 1

    # When the fix is deployed and the row retried
    assert outbox.retry_failed() == 1
    bus = RecordingBus()
    assert outbox.relay(bus) == RelayResult(published=1, failed=0, pending_left=0)
    assert [e.event_id for e in bus.received] == [later.event_id]
    assert outbox.retry_failed() == 0


def test_a_batch_the_broker_does_not_take_leaves_all_its_rows_pending_for_the_next_run(
    outbox: Outbox, bus: RecordingBus, caplog: pytest.LogCaptureFixture
) -> None:
    ids = add_committed(outbox, 5)
    relay = OutboxRelay(outbox, bus)
    # Given a broker that takes every publish but fails the batch's flush (confirms)
    bus.flush_fails = True
    # When the relay runs
    with caplog.at_level(logging.WARNING, logger="eventbus.outbox.relay"):
        result = relay.relay_once()
    # Then no row is published: every row tried counts an attempt and keeps the error
    assert (result.published, result.failed, result.pending_left) == (0, 0, 5)
    assert result.error is not None and "was not sent" in result.error
    written = rows(outbox)
    assert all(r["published_at"] is None and r["failed_at"] is None for r in written)
    assert [r["attempts"] for r in written] == [1] * 5
    assert all("was not sent" in r["last_error"] for r in written)
    assert relay.totals == {"published": 0, "failed": 0, "retried": 5}
    assert bus.received == []
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "stay pending" in warning.getMessage()

    # When the broker takes batches again
    bus.flush_fails = False
    assert relay.relay_once() == RelayResult(published=5, failed=0, pending_left=0)
    # Then every event went out exactly once, in order, in one batch
    assert [str(e.event_id) for e in bus.received] == ids
    assert bus.batches == [5]
    assert [(r["attempts"], r["last_error"]) for r in rows(outbox)] == [(2, None)] * 5


def test_a_broker_failure_in_a_batch_leaves_every_row_of_it_pending_for_the_next_run(
    outbox: Outbox, bus: RecordingBus
) -> None:
    ids = add_committed(outbox, 5)
    # Given a broker that takes two publishes and then goes down
    bus.fail_after = 2
    # When the relay runs
    result = outbox.relay(bus)
    # Then nothing is published: the rows tried (up to the failed one) count an
    # attempt, the rows after it are untouched
    assert (result.published, result.failed, result.pending_left) == (0, 0, 5)
    assert result.error is not None and "PublishError" in result.error
    written = rows(outbox)
    assert all(r["published_at"] is None for r in written)
    assert [r["attempts"] for r in written] == [1, 1, 1, 0, 0]
    assert all("Connection refused" in r["last_error"] for r in written[:3])
    assert bus.received == []
    # And the next run, still down, fails at its first row
    assert outbox.relay(bus).published == 0
    assert [r["attempts"] for r in rows(outbox)] == [2, 1, 1, 0, 0]

    # When the broker is back
    bus.fail_after, bus.down = None, False
    assert outbox.relay(bus) == RelayResult(published=5, failed=0, pending_left=0)
    # Then every event went out exactly once, in order
    assert [str(e.event_id) for e in bus.received] == ids
    assert [r["last_error"] for r in rows(outbox)] == [None] * 5


def test_without_batches_a_failed_publish_leaves_its_row_and_those_after_it_pending(
    outbox: Outbox,
) -> None:
    # Given a bus whose batch() sends each event at once (the in-memory bus's)
    bus = RecordingBus(batching=False)
    ids = add_committed(outbox, 5)
    # And a broker that takes two publishes and then goes down
    bus.fail_after = 2
    # When the relay runs
    result = outbox.relay(bus)
    # Then the first two are published, the third is left pending with its error
    assert (result.published, result.failed, result.pending_left) == (2, 0, 3)
    assert result.error is not None and "PublishError" in result.error
    written = rows(outbox)
    assert [r["published_at"] is not None for r in written] == [True, True, False, False, False]
    assert [r["attempts"] for r in written] == [1, 1, 1, 0, 0]
    assert "Connection refused" in written[2]["last_error"]
    # And the next run, still down, counts another attempt
    assert outbox.relay(bus).published == 0
    assert [r["attempts"] for r in rows(outbox)] == [1, 1, 2, 0, 0]

    # When the broker is back
    bus.fail_after, bus.down = None, False
    assert outbox.relay(bus) == RelayResult(published=3, failed=0, pending_left=0)
    # Then every event went out exactly once, in order
    assert [str(e.event_id) for e in bus.received] == ids
    assert [r["last_error"] for r in rows(outbox)] == [None] * 5


def test_malformed_rows_are_set_aside_even_when_the_batch_of_good_rows_fails(
    outbox: Outbox, bus: RecordingBus
) -> None:
    # Given good rows and malformed ones, interleaved
    first = add_committed(outbox, 2, "a")
    bad = [insert_raw(outbox, "{not json"), insert_raw(outbox, "[]")]
    last = add_committed(outbox, 2, "b")
    # And a broker that fails the batch
    bus.flush_fails = True
    # When the relay runs
    result = outbox.relay(bus)
    # Then the malformed rows are marked failed, the good ones stay pending
    assert (result.published, result.failed, result.pending_left) == (0, 2, 4)
    by_id = {r["id"]: r for r in rows(outbox)}
    assert all(by_id[i]["failed_at"] is not None for i in bad)
    assert outbox.status().failed == 2
    # When the broker is back: the good ones go out once, in order, in one batch
    bus.flush_fails = False
    assert outbox.relay(bus) == RelayResult(published=4, failed=0, pending_left=0)
    assert [str(e.event_id) for e in bus.received] == first + last
    assert bus.batches == [4]


def test_a_database_failure_during_the_batch_leaves_its_rows_pending(
    outbox: Outbox, bus: RecordingBus
) -> None:
    add_committed(outbox, 3)
    # Given a relay whose marking fails after publishing (a lost connection)
    relay = OutboxRelay(outbox, bus)

    def broken_mark(*args: Any) -> None:
        raise sa.exc.OperationalError("UPDATE", {}, Exception("server closed the connection"))

    relay._mark = broken_mark  # type: ignore[method-assign]
    with pytest.raises(OutboxError, match="server closed the connection"):
        relay.relay_once()
    # Then the rows are still pending: the next run publishes them again (at-least-once)
    assert outbox.status().pending == 3
    assert outbox.relay(bus).published == 3
    assert len(bus.received) == 6 and len(bus.counts()) == 3


def test_relays_running_at_once_publish_every_row_exactly_once(outbox: Outbox) -> None:
    relays = 4
    # Given many rows and a broker that takes a moment per publish
    ids = add_committed(outbox, 120)
    bus = RecordingBus()
    slow = threading.Event()
    original = bus._dispatch

    def slow_dispatch(*args: Any) -> None:
        slow.wait(0.001)  # the broker's round trip: lets the relays overlap
        original(*args)

    bus._dispatch = slow_dispatch  # type: ignore[method-assign]
    barrier = threading.Barrier(relays)
    results: list[RelayResult] = []
    errors: list[BaseException] = []
    published_by: list[int] = []

    def run() -> None:
        relay = OutboxRelay(outbox, bus, batch_size=10)
        barrier.wait()
        try:
            while True:
                result = relay.relay_once()
                results.append(result)
                if result.published == 0 and result.pending_left == 0:
                    break
        except BaseException as exc:
            errors.append(exc)
        published_by.append(relay.totals["published"])

    # When several relays run at once
    threads = [threading.Thread(target=run) for _ in range(relays)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Then every row was published exactly once
    assert not errors
    assert bus.counts() == dict.fromkeys(ids, 1)
    assert sum(r.published for r in results) == len(ids)
    assert outbox.status().pending == 0
    if outbox.engine.dialect.name == "postgresql":
        # They did run side by side (SKIP LOCKED): not one relay after the other
        assert sum(1 for n in published_by if n) >= 2, published_by


def test_delete_published_removes_only_old_published_rows(
    outbox: Outbox, bus: RecordingBus
) -> None:
    add_committed(outbox, 2)
    outbox.relay(bus)
    add_committed(outbox, 1, "later")
    assert outbox.delete_published(older_than=timedelta(hours=1)) == 0
    assert outbox.delete_published(older_than=timedelta(0)) == 2
    assert outbox.status().pending == 1


def test_an_outbox_from_a_url_owns_its_engine(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'own.db'}"
    with Outbox(url, table_name="my_outbox") as box:
        box.create_schema()
        assert "my_outbox" in repr(box)
        assert box.status().pending == 0
    with pytest.raises(OutboxError, match="cannot open an outbox"):
        Outbox("nosuchdb://x")
