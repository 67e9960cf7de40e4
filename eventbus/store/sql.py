"""The SQL event store: SQLite (embedded, a file) and PostgreSQL, through SQLAlchemy Core.

One table (``eventbus_events`` unless told otherwise)::

    position        big integer, autoincrement primary key: the global order
    aggregate_type  text, '' when the envelope has none
    aggregate_id    text
    sequence        big integer: 1, 2, 3 ... per aggregate
    event_id        UUID, unique: an event is stored once
    event_type, version, occurred_at, correlation_id, causation_id
    metadata, data  JSON (JSONB on PostgreSQL)
    UNIQUE (aggregate_type, aggregate_id, sequence)

The unique key is what makes optimistic concurrency safe under races: two
writers that read the same version both try to insert its next sequence,
one of them violates the key, and its whole batch (one transaction) is
rolled back and reported as :class:`~eventbus.errors.ConcurrencyError`.

Appends are serialized: an append takes a lock before it reads the
aggregate's version and keeps it until its commit (PostgreSQL: a
transaction-level advisory lock, one per table; SQLite: ``BEGIN IMMEDIATE``,
its write lock). So concurrent writers never lose a race they did not
expect (``expected_version=None`` just goes after the winner), and a reader
that follows ``position`` (``read_all``) never sees position 12 committed
before 11 (it would skip 11 for good). The cost: appends to one table do
not run in parallel, and an append inside a caller's transaction
(``connection=``) holds the lock until that transaction ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
from typing import Any

try:
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the SQL event store needs SQLAlchemy (and psycopg for PostgreSQL): "
        "pip install 'eventbus[store]'"
    ) from exc

from eventbus.domain.envelope import Envelope
from eventbus.domain.events import EventRegistry
from eventbus.errors import ConcurrencyError, EventStoreError
from eventbus.redaction import redact, redact_url, safe_cause
from eventbus.store.base import (
    EventRecord,
    EventStore,
    StoredEvent,
    Stream,
    number_rows,
    prepare_append,
    stored_events,
)

__all__ = ["APPEND_ATTEMPTS", "DEFAULT_TABLE", "SQLEventStore", "event_table"]

DEFAULT_TABLE = "eventbus_events"  #: the events table's name unless ``table_name`` is given

#: Tries of an ``expected_version=None`` append that keeps losing the race
#: for the next sequence number to other writers (SQLite), before giving up.
APPEND_ATTEMPTS = 5

#: Seconds a SQLite connection waits for another writer's lock.
SQLITE_BUSY_TIMEOUT = 15.0

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def event_table(
    metadata: sa.MetaData, name: str = DEFAULT_TABLE, *, schema: str | None = None
) -> sa.Table:
    """The events table, in ``metadata`` (for a migration tool such as Alembic)."""
    return sa.Table(
        name,
        metadata,
        # SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid).
        sa.Column(
            "position",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("aggregate_type", sa.String(255), nullable=False),
        sa.Column("aggregate_id", sa.String(255), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("correlation_id", sa.String(255)),
        sa.Column("causation_id", sa.String(255)),
        sa.Column("metadata", _JSON, nullable=False),
        sa.Column("data", _JSON, nullable=False),
        sa.UniqueConstraint(
            "aggregate_type", "aggregate_id", "sequence", name=f"{name}_stream_key"
        ),
        sa.UniqueConstraint("event_id", name=f"{name}_event_id_key"),
        schema=schema,
        # Never hand out a position again, even after the last row is deleted:
        # a projection that has read it would skip the new event.
        sqlite_autoincrement=True,
    )


class SQLEventStore(EventStore):
    """An event store in one SQL table, on SQLite or PostgreSQL.

    Build it from a URL with :meth:`open` (it then owns its engine and
    :meth:`close` disposes of it), or around an engine of yours. Create the
    table once with :meth:`create_schema`.
    """

    def __init__(
        self,
        engine: sa.Engine,
        *,
        table_name: str = DEFAULT_TABLE,
        schema: str | None = None,
        event_registry: EventRegistry | None = None,
    ) -> None:
        super().__init__(event_registry=event_registry)
        self.engine = engine
        self.metadata = sa.MetaData()
        self.table = event_table(self.metadata, table_name, schema=schema)
        self._owns_engine = False
        self._postgres = engine.dialect.name == "postgresql"
        # One lock per table: stores on other tables do not wait for each other.
        digest = hashlib.blake2b(f"eventbus:{schema}.{table_name}".encode(), digest_size=8)
        self._lock_key = int.from_bytes(digest.digest(), "big", signed=True)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        table_name: str = DEFAULT_TABLE,
        schema: str | None = None,
        event_registry: EventRegistry | None = None,
        engine_options: dict[str, Any] | None = None,
    ) -> SQLEventStore:
        """A store on a new engine: ``sqlite:///events.db``, ``postgresql://user@host/db``.

        ``postgresql://`` means psycopg 3 (``postgresql+psycopg://``). A
        SQLite file is switched to WAL mode (readers do not block the writer,
        one fsync per commit). ``engine_options`` go to ``create_engine``.
        """
        url = _with_driver(url)
        options = dict(engine_options or {})
        if url.startswith("sqlite"):
            options.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT)
        try:
            engine = sa.create_engine(url, **options)
        except (sa.exc.ArgumentError, ImportError, ValueError, TypeError) as exc:
            raise EventStoreError(
                f"cannot open an event store at {redact_url(url)!r}: {redact(exc, [url])}"
            ) from safe_cause(exc, [url])
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            sa.event.listen(engine, "connect", _sqlite_wal)
        store = cls(engine, table_name=table_name, schema=schema, event_registry=event_registry)
        store._owns_engine = True
        return store

    def create_schema(self) -> None:
        """Create the table and its keys if they do not exist."""
        with self._translated("create the event store table"):
            self.metadata.create_all(self.engine, checkfirst=True)

    def drop_schema(self) -> None:
        """Drop the table and every event in it (tests, benchmarks)."""
        with self._translated("drop the event store table"):
            self.metadata.drop_all(self.engine, checkfirst=True)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    # -- writing -------------------------------------------------------------

    def append(
        self,
        envelopes: Iterable[Envelope[Any]],
        *,
        expected_version: int | None = None,
        connection: sa.Connection | None = None,
    ) -> list[StoredEvent]:
        """Append events of one aggregate atomically (see :meth:`EventStore.append`).

        With ``connection``, the rows are written in that connection's
        transaction, next to the caller's own rows (an outbox): the caller
        commits or rolls back, and nothing is retried. After a
        :class:`~eventbus.errors.ConcurrencyError` raised by a failed insert
        (a writer that bypassed the store), PostgreSQL has aborted that
        transaction: roll it back.
        """
        batch: list[Envelope[Any]] = list(envelopes)
        if not batch:
            return []
        stream, rows = prepare_append(batch, expected_version)
        if connection is not None:
            try:
                with self._translated("append"):
                    written = self._insert(connection, stream, rows, expected_version)
            except _LostRace as race:
                raise race.conflict(race.current) from race.__cause__
        else:
            written = self._write(stream, rows, expected_version)
        return stored_events(batch, written)

    def _write(
        self, stream: Stream, rows: Sequence[dict[str, Any]], expected_version: int | None
    ) -> list[tuple[int, int]]:
        # Without an expected version, a lost race is worth another try: the
        # next read sees the winner's events. With one, the caller's decision
        # was made on a stale state, and so was a pre-numbered envelope's.
        attempts = APPEND_ATTEMPTS if expected_version is None else 1
        for attempt in range(1, attempts + 1):
            try:
                with self._translated("append"), self.engine.begin() as conn:
                    return self._insert(conn, stream, rows, expected_version)
            except _LostRace as race:
                if attempt == attempts:
                    actual = self.version(stream.aggregate_id, aggregate_type=stream.aggregate_type)
                    raise race.conflict(actual) from race.__cause__
        raise AssertionError("unreachable")  # pragma: no cover

    def _insert(
        self,
        conn: sa.Connection,
        stream: Stream,
        rows: Sequence[dict[str, Any]],
        expected_version: int | None,
    ) -> list[tuple[int, int]]:
        t = self.table
        self._lock_for_append(conn)
        current = int(conn.execute(self._version_query(stream)).scalar_one())
        numbered = number_rows(stream, rows, current, expected_version)
        values = [
            {**row, "aggregate_type": stream.aggregate_type, "aggregate_id": stream.aggregate_id}
            for row in numbered
        ]
        try:
            if len(values) == 1:
                positions = [
                    conn.execute(sa.insert(t).returning(t.c.position), values[0]).scalar_one()
                ]
            else:
                # A plain executemany, then the positions: a multi-row INSERT ...
                # RETURNING is one long statement, too long for psycopg's query
                # cache, so it would be parsed again (in Python) on every call.
                conn.execute(sa.insert(t), values)
                positions = list(
                    conn.execute(
                        sa.select(t.c.position)
                        .where(
                            t.c.aggregate_type == stream.aggregate_type,
                            t.c.aggregate_id == stream.aggregate_id,
                            t.c.sequence > current,
                        )
                        .order_by(t.c.sequence)
                    ).scalars()
                )
        except sa.exc.IntegrityError as exc:
            text = str(exc.orig)
            constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", None)
            if constraint == f"{t.name}_event_id_key" or f"{t.name}.event_id" in text:
                raise EventStoreError(f"an event of this batch is already stored: {text}") from exc
            raise _LostRace(stream, current, expected_version) from exc
        return [(p, row["sequence"]) for p, row in zip(positions, numbered, strict=True)]

    def _lock_for_append(self, conn: sa.Connection) -> None:
        """Serialize appends from here to commit, so no writer reads a version about to change."""
        if self._postgres:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(self._lock_key)))
        elif conn.dialect.name == "sqlite":
            # pysqlite begins a transaction only at the first write, so the
            # version would be read outside it: take the write lock first
            # (waiting up to the busy timeout). A transaction already open
            # (the caller's, or an engine that emits BEGIN) is left as it is:
            # the unique key still catches a lost race.
            dbapi = conn.connection.dbapi_connection
            if dbapi is not None and not getattr(dbapi, "in_transaction", True):
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    # -- reading -------------------------------------------------------------

    def _version_query(self, stream: Stream) -> sa.Select[Any]:
        t = self.table
        return sa.select(sa.func.coalesce(sa.func.max(t.c.sequence), 0)).where(
            t.c.aggregate_type == stream.aggregate_type, t.c.aggregate_id == stream.aggregate_id
        )

    def version(self, aggregate_id: object, *, aggregate_type: str | None = None) -> int:
        query = self._version_query(Stream.of(aggregate_id, aggregate_type))
        with self._translated("read a version"), self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def _stream(self, stream: Stream, after: int) -> list[EventRecord]:
        t = self.table
        query = (
            sa.select(t)
            .where(
                t.c.aggregate_type == stream.aggregate_type,
                t.c.aggregate_id == stream.aggregate_id,
                t.c.sequence > after,
            )
            .order_by(t.c.sequence)
        )
        with self._translated("load"), self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    def read_all_records(self, after: int = 0, *, limit: int | None = None) -> list[EventRecord]:
        t = self.table
        query = sa.select(t).where(t.c.position > after).order_by(t.c.position).limit(limit)
        with self._translated("read"), self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """Database errors become :class:`EventStoreError` (the driver's is the cause).

        No password in the message; the cause is left out if its text holds one.
        """
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
            url = self.engine.url.render_as_string(hide_password=False)
            raise EventStoreError(
                f"event store ({redact_url(url)}, table {self.table.fullname}): "
                f"cannot {action}: {type(exc).__name__}: {redact(exc, [url])}"
            ) from safe_cause(exc, [url])


class _LostRace(Exception):
    """Another writer inserted the stream's next sequence between our read and our insert.

    Happens on SQLite (the version is read before the write lock is taken)
    and, on PostgreSQL, only against writers that bypass the advisory lock.
    """

    def __init__(self, stream: Stream, current: int, expected_version: int | None) -> None:
        super().__init__(stream, current)
        self.stream = stream
        self.current = current
        self.expected_version = expected_version

    def conflict(self, actual: int) -> ConcurrencyError:
        aggregate_type, aggregate_id = self.stream.describe()
        return ConcurrencyError(
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            expected=self.expected_version,
            actual=actual,
            detail="another writer appended first",
        )


def _record(row: sa.Row[Any]) -> EventRecord:
    m = row._mapping
    occurred = m["occurred_at"]
    return EventRecord(
        position=m["position"],
        aggregate_type=m["aggregate_type"] or None,
        aggregate_id=m["aggregate_id"],
        sequence=m["sequence"],
        event_id=m["event_id"],
        event_type=m["event_type"],
        version=m["version"],
        occurred_at=occurred.replace(tzinfo=UTC) if occurred.tzinfo is None else occurred,
        correlation_id=m["correlation_id"],
        causation_id=m["causation_id"],
        metadata=m["metadata"],
        data=m["data"],
    )


def _with_driver(url: str) -> str:
    # psycopg 3 is what the [store] extra installs; SQLAlchemy's default is psycopg2.
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()
