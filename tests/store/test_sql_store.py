"""What only the SQL stores do: transactions of the caller's, locks, URLs, the table's keys."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from eventbus import ConcurrencyError, EventStoreError, create_event
from eventbus.store import EventStore, InMemoryEventStore, SQLEventStore, StoredEvent
from tests.store.events import CURRENT, TodoDone
from tests.support import assert_stays, wait_for


@pytest.fixture(params=("sqlite", "postgresql"))
def backend(request: pytest.FixtureRequest) -> str:
    """Overrides the conftest's: these tests run on the SQL backends only."""
    return str(request.param)


@pytest.fixture
def sql_store(store: EventStore) -> SQLEventStore:
    assert isinstance(store, SQLEventStore)
    return store


@pytest.fixture
def outbox(sql_store: SQLEventStore) -> Iterator[sa.Table]:
    """A table of the caller's, next to the events (a transactional outbox)."""
    table = sa.Table(
        f"outbox_{uuid.uuid4().hex[:10]}",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("event_id", sa.String(64), nullable=False),
    )
    table.create(sql_store.engine)
    yield table
    table.drop(sql_store.engine)


def done(todo: str) -> Any:
    return create_event(
        TodoDone, {}, aggregate_id=todo, aggregate_type="Todo", event_registry=CURRENT
    )


def count(store: SQLEventStore, table: sa.Table) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_an_append_in_the_callers_transaction_commits_or_rolls_back_with_its_rows(
    sql_store: SQLEventStore, outbox: sa.Table
) -> None:
    # Given a transaction that appends an event and writes an outbox row, then fails
    event = done("t1")
    with pytest.raises(LookupError), sql_store.engine.begin() as conn:
        sql_store.append([event], expected_version=0, connection=conn)
        conn.execute(sa.insert(outbox).values(event_id=str(event.event_id)))
        raise LookupError("the request failed after writing")
    # Then neither the event nor the row is there
    assert sql_store.version("t1", aggregate_type="Todo") == 0
    assert count(sql_store, outbox) == 0

    # Given the same, committed: both are there
    with sql_store.engine.begin() as conn:
        [stored] = sql_store.append([event], expected_version=0, connection=conn)
        conn.execute(sa.insert(outbox).values(event_id=str(event.event_id)))
    assert stored.sequence == 1
    assert [e.event_id for e in sql_store.load("t1", aggregate_type="Todo")] == [event.event_id]
    assert count(sql_store, outbox) == 1


def test_a_stale_version_in_the_callers_transaction_raises_before_writing(
    sql_store: SQLEventStore, outbox: sa.Table
) -> None:
    sql_store.append([done("t1")], expected_version=0)
    with pytest.raises(ConcurrencyError), sql_store.engine.begin() as conn:
        conn.execute(sa.insert(outbox).values(event_id="x"))
        sql_store.append([done("t1")], expected_version=0, connection=conn)
    assert sql_store.version("t1", aggregate_type="Todo") == 1
    assert count(sql_store, outbox) == 0


def test_appends_wait_for_an_open_append_so_positions_commit_in_order(
    sql_store: SQLEventStore,
) -> None:
    # Given an append in a transaction that has not committed yet
    results: list[StoredEvent] = []
    with sql_store.engine.connect() as conn:
        transaction = conn.begin()
        [first] = sql_store.append([done("a")], connection=conn)

        # When another writer appends to another aggregate meanwhile
        thread = threading.Thread(target=lambda: results.extend(sql_store.append([done("b")])))
        thread.start()

        # Then it waits for the first transaction's end (a reader following
        # positions never sees a later position commit before an earlier one)
        assert_stays(lambda: not results, duration=0.3, message="second append waits")
        transaction.commit()
    wait_for(lambda: results, message="second append after the commit")
    thread.join(5)
    assert results[0].position > first.position
    assert [s.position for s in sql_store.read_all()] == [first.position, results[0].position]


def test_the_unique_key_refuses_a_writer_that_read_a_stale_version(
    sql_store: SQLEventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an aggregate at version 2, and a store whose version read is stale
    # (as for a writer that bypassed the lock)
    sql_store.append([done("t1"), done("t1")])
    monkeypatch.setattr(sql_store, "_version_query", lambda stream: sa.select(sa.literal(1)))

    # When it appends a batch numbered from 2, with or without an expected version
    for expected in (1, None):
        with pytest.raises(ConcurrencyError, match="another writer appended first"):
            sql_store.append([done("t1"), done("t1")], expected_version=expected)

    # Then the key refused it, and nothing of the batch (not even sequence 3) is there
    monkeypatch.undo()
    assert sql_store.version("t1", aggregate_type="Todo") == 2
    assert len(sql_store.read_all_records()) == 2


def test_create_schema_twice_keeps_the_events(sql_store: SQLEventStore) -> None:
    sql_store.append([done("t1")])
    sql_store.create_schema()
    assert sql_store.version("t1", aggregate_type="Todo") == 1
    keys = sa.inspect(sql_store.engine).get_unique_constraints(sql_store.table.name)
    assert sorted(tuple(k["column_names"]) for k in keys) == [
        ("aggregate_type", "aggregate_id", "sequence"),
        ("event_id",),
    ]


def test_from_url_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(EventStore.from_url("memory://"), InMemoryEventStore)
    with EventStore.from_url(f"sqlite:///{tmp_path / 'e.db'}") as store:
        assert isinstance(store, SQLEventStore)
        store.create_schema()
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    # postgresql:// means psycopg 3, the driver the [store] extra installs
    pg = EventStore.from_url("postgresql://postgres@127.0.0.1:5432/test")
    assert isinstance(pg, SQLEventStore)
    assert pg.engine.url.drivername == "postgresql+psycopg"
    pg.close()


def test_database_errors_are_event_store_errors(tmp_path: Path) -> None:
    with pytest.raises(EventStoreError, match="cannot open"):
        EventStore.from_url("nosuchdb://somewhere")
    store = EventStore.from_url(f"sqlite:///{tmp_path / 'missing-dir' / 'e.db'}")
    with pytest.raises(EventStoreError, match="cannot create") as caught:
        store.create_schema()
    assert isinstance(caught.value.__cause__, sa.exc.OperationalError)
    with pytest.raises(EventStoreError, match="cannot append"):
        store.append([done("t1")])
