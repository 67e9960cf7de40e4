"""The outbox table and :class:`Outbox`: rows written in the caller's transaction.

One table (``eventbus_outbox`` unless told otherwise)::

    id              big integer, autoincrement primary key: the relay's order
    event_id        text(36), unique: an event is in the outbox once
    event_type      text(255)
    aggregate_type  text(255), NULL
    aggregate_id    text(255), NULL
    payload         text: the envelope's wire dict as JSON (eventbus.outbox.payload)
    created_at      timestamp with time zone
    published_at    timestamp with time zone, NULL until the relay published it
    failed_at       timestamp with time zone, NULL unless the row can never be published
    attempts        integer, default 0: publishes tried
    last_error      text, NULL

A row is *pending* while ``published_at`` and ``failed_at`` are both NULL;
a partial index on ``id`` over the pending rows keeps the relay's query cheap
however many published rows pile up (:meth:`Outbox.delete_published`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

try:
    import sqlalchemy as sa
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the transactional outbox needs SQLAlchemy (and psycopg for PostgreSQL): "
        "pip install 'eventbus[store]'"
    ) from exc

from eventbus.domain.envelope import Envelope, wrap
from eventbus.domain.events import Event
from eventbus.errors import ConcurrencyError, OutboxError
from eventbus.outbox.payload import outbox_payload
from eventbus.outbox.results import FailedRow, OutboxStatus
from eventbus.outbox.table import DEFAULT_TABLE, outbox_table, pending_rows
from eventbus.redaction import redact, redact_url, safe_cause
from eventbus.store.sql import (
    APPEND_ATTEMPTS,
    SQLITE_BUSY_TIMEOUT,
    SQLEventStore,
    _sqlite_wal,
    _with_driver,
)

if TYPE_CHECKING:
    from eventbus.bus.base import BaseEventBus
    from eventbus.outbox.relay import RelayResult
    from eventbus.store.base import StoredEvent

__all__ = ["DEFAULT_TABLE", "FailedRow", "Outbox", "OutboxStatus", "outbox_table"]


class Outbox:
    """A transactional outbox in one SQL table, on SQLite or PostgreSQL.

    ``engine_or_url`` is an engine of yours or a URL (``sqlite:///app.db``,
    ``postgresql://user@host/db``; the outbox then owns its engine and
    :meth:`close` disposes of it). Create the table once with
    :meth:`create_schema` (or :func:`outbox_table` in a migration)::

        outbox = Outbox(engine)
        with engine.begin() as conn:           # the request's transaction
            conn.execute(orders.insert().values(...))
            outbox.add(OrderPlaced(...), connection=conn, aggregate_id=order_id)
        # committed: the order and its event; rolled back: neither

        outbox.relay(bus)                      # later, elsewhere: publish pending rows

    With the event store, :meth:`append` writes the events and their rows in
    one transaction. An ORM session's connection works too:
    ``outbox.add(event, connection=session.connection())``.
    """

    def __init__(
        self,
        engine_or_url: sa.Engine | str,
        *,
        table_name: str = DEFAULT_TABLE,
        schema: str | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._owns_engine = isinstance(engine_or_url, str)
        self.engine = (
            _open_engine(engine_or_url, engine_options)
            if isinstance(engine_or_url, str)
            else engine_or_url
        )
        self.metadata = sa.MetaData()
        self.table = outbox_table(self.metadata, table_name, schema=schema)

    def __repr__(self) -> str:
        return f"Outbox({self._shown_url!r}, table {self.table.fullname!r})"

    @property
    def _shown_url(self) -> str:
        """The engine's URL for logs and errors: no password, in the userinfo or the query."""
        return redact_url(self.engine.url.render_as_string(hide_password=True))

    def create_schema(self) -> None:
        """Create the table and its indexes if they do not exist."""
        with self._translated("create the outbox table"):
            self.metadata.create_all(self.engine, checkfirst=True)

    def drop_schema(self) -> None:
        """Drop the table and every row in it (tests, benchmarks)."""
        with self._translated("drop the outbox table"):
            self.metadata.drop_all(self.engine, checkfirst=True)

    def close(self) -> None:
        """Dispose of the engine if the outbox opened it (from a URL)."""
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------

    def add(
        self,
        events: Event | Envelope[Any] | Iterable[Event | Envelope[Any]],
        *,
        connection: sa.Connection,
        aggregate_id: object = None,
        aggregate_type: str | None = None,
        correlation_id: object = None,
        causation_id: object = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[Envelope[Any]]:
        """Write one row per event in ``connection``'s transaction; return their envelopes.

        The caller commits (the rows become pending, for the relay) or rolls
        back (no row). An :class:`Event` is wrapped in a new envelope as
        ``bus.publish`` would, with the keyword fields; an envelope (from
        :func:`~eventbus.create_event`, or numbered by the event store) is
        written as it is, so its ``event_id`` and ``sequence`` are what
        handlers get. An envelope's aggregate has its events published in
        ``id`` order; with several relays at once give them sequence numbers
        (the event store does, :meth:`append`) for ordered handlers.

        Raises :class:`~eventbus.errors.OutboxError` when the database
        refuses (an event already in the outbox: same ``event_id``); on
        PostgreSQL that transaction is then aborted: roll it back.
        """
        fields = (aggregate_id, aggregate_type, correlation_id, causation_id, metadata)
        items = [events] if isinstance(events, (Event, Envelope)) else list(events)
        envelopes: list[Envelope[Any]] = []
        for item in items:
            if isinstance(item, Envelope):
                if any(v is not None for v in fields):
                    raise TypeError(
                        "add(envelope) takes no envelope fields; set them in create_event()"
                    )
                envelopes.append(item)
            elif isinstance(item, Event):
                envelopes.append(
                    wrap(
                        item,
                        aggregate_id=aggregate_id,
                        aggregate_type=aggregate_type,
                        correlation_id=correlation_id,
                        causation_id=causation_id,
                        metadata=metadata,
                    )
                )
            else:
                raise TypeError(
                    f"add() takes Events or Envelopes, got {type(item).__name__}; "
                    "use create_event(type_name, data) for a dict"
                )
        if not envelopes:
            return []
        now = datetime.now(UTC)
        rows = [
            {
                "event_id": str(e.event_id),
                "event_type": e.event_type,
                "aggregate_type": e.aggregate_type,
                "aggregate_id": e.aggregate_id,
                "payload": outbox_payload(e),
                "created_at": now,
                "attempts": 0,
            }
            for e in envelopes
        ]
        with self._translated("add rows"):
            try:
                connection.execute(sa.insert(self.table), rows)
            except sa.exc.IntegrityError as exc:
                ids = ", ".join(str(r["event_id"]) for r in rows[:3]) + (
                    " ..." if len(rows) > 3 else ""
                )
                raise OutboxError(
                    f"outbox {self.table.fullname}: an event of this batch ({ids}) "
                    f"is already in it: {exc.orig}"
                ) from exc
        return envelopes

    def append(
        self,
        store: SQLEventStore,
        envelopes: Iterable[Envelope[Any]],
        *,
        expected_version: int | None = None,
        connection: sa.Connection | None = None,
    ) -> list[StoredEvent]:
        """Append events of one aggregate to ``store`` and their outbox rows, in one transaction.

        Returns the stored events (numbered: see :meth:`SQLEventStore.append
        <eventbus.store.SQLEventStore.append>`); the rows carry the same
        envelopes, sequence numbers included, so the relay publishes exactly
        what the store holds and the bus does not number them again. Either
        both the events and the rows are committed, or neither:
        :class:`~eventbus.errors.ConcurrencyError` writes nothing.

        With ``connection`` both go into the caller's transaction (commit or
        roll back it yourself). Without, into one of the outbox's engine:
        the store's table and the outbox's must be in the same database.
        """
        if not isinstance(store, SQLEventStore):
            raise TypeError(
                f"Outbox.append needs a SQLEventStore in the outbox's database, "
                f"got {type(store).__name__}"
            )
        batch = list(envelopes)
        if connection is not None:
            stored = store.append(batch, expected_version=expected_version, connection=connection)
            self.add([s.envelope for s in stored], connection=connection)
            return stored
        # Without an expected version a lost race is worth another try (the
        # next read sees the winner's events), as in the store's own appends.
        attempts = APPEND_ATTEMPTS if expected_version is None else 1
        for attempt in range(1, attempts + 1):
            try:
                with self._translated("append"), self.engine.begin() as conn:
                    return self.append(
                        store, batch, expected_version=expected_version, connection=conn
                    )
            except ConcurrencyError:
                if attempt == attempts:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- relaying ------------------------------------------------------------

    def relay(self, bus: BaseEventBus, *, limit: int = 100) -> RelayResult:
        """Publish up to ``limit`` pending rows on ``bus``, in ``id`` order; one transaction.

        See :class:`~eventbus.outbox.OutboxRelay` (which also drains and loops).
        """
        from eventbus.outbox.relay import OutboxRelay

        return OutboxRelay(self, bus, batch_size=limit).relay_once()

    # -- reading and housekeeping --------------------------------------------

    def status(self) -> OutboxStatus:
        """Counts of pending, failed and published rows, and the oldest pending row's time."""
        t = self.table
        pending = pending_rows(t)
        query = sa.select(
            sa.func.count(sa.case((pending, 1))),
            sa.func.count(t.c.failed_at),
            sa.func.count(t.c.published_at),
            sa.func.min(sa.case((pending, t.c.created_at))),
        )
        with self._translated("read the outbox status"), self.engine.connect() as conn:
            row = conn.execute(query).one()
        return OutboxStatus(
            pending=int(row[0]),
            failed=int(row[1]),
            published=int(row[2]),
            oldest_pending=_utc(row[3]),
        )

    def pending_count(self) -> int:
        """Rows waiting for the relay (rows another relay is publishing right now included)."""
        query = sa.select(sa.func.count()).select_from(self.table).where(pending_rows(self.table))
        with self._translated("count pending rows"), self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def failed(self, *, limit: int = 20) -> list[FailedRow]:
        """The latest rows the relay marked failed, newest first."""
        t = self.table
        query = (
            sa.select(
                t.c.id, t.c.event_id, t.c.event_type, t.c.failed_at, t.c.attempts, t.c.last_error
            )
            .where(t.c.failed_at.is_not(None))
            .order_by(t.c.id.desc())
            .limit(limit)
        )
        with self._translated("read failed rows"), self.engine.connect() as conn:
            return [
                FailedRow(
                    id=r.id,
                    event_id=r.event_id,
                    event_type=r.event_type,
                    failed_at=_utc(r.failed_at) or datetime.now(UTC),
                    attempts=r.attempts,
                    last_error=r.last_error,
                )
                for r in conn.execute(query)
            ]

    def retry_failed(self, ids: Iterable[int] | None = None) -> int:
        """Make failed rows pending again (all, or those ``ids``); return how many.

        For after the fix: new code that knows the type, a corrected payload.
        """
        t = self.table
        query = sa.update(t).where(t.c.failed_at.is_not(None)).values(failed_at=None)
        if ids is not None:
            query = query.where(t.c.id.in_(list(ids)))
        with self._translated("retry failed rows"), self.engine.begin() as conn:
            return int(conn.execute(query).rowcount)

    def delete_published(self, *, older_than: timedelta) -> int:
        """Delete rows published more than ``older_than`` ago; return how many.

        Published rows are kept (their ``event_id`` is the outbox's memory of
        what went out) until deleted here, e.g. daily with a week's margin.
        """
        t = self.table
        cutoff = datetime.now(UTC) - older_than
        query = sa.delete(t).where(t.c.published_at.is_not(None), t.c.published_at < cutoff)
        with self._translated("delete published rows"), self.engine.begin() as conn:
            return int(conn.execute(query).rowcount)

    @contextmanager
    def _translated(self, action: str) -> Iterator[None]:
        """Database errors become :class:`OutboxError`, naming the outbox without a password.

        The driver's error is the cause unless its text holds a password of
        the URL (a driver may echo it): then only its redacted text is kept.
        """
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
            url = self.engine.url.render_as_string(hide_password=False)
            raise OutboxError(
                f"outbox ({self._shown_url}, table {self.table.fullname}): cannot {action}: "
                f"{type(exc).__name__}: {redact(exc, [url])}"
            ) from safe_cause(exc, [url])


def _open_engine(url: str, engine_options: Mapping[str, Any] | None) -> sa.Engine:
    """An engine as the event store opens one: psycopg 3, SQLite with a busy timeout, WAL."""
    url = _with_driver(url)
    options = dict(engine_options or {})
    if url.startswith("sqlite"):
        options.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT)
    try:
        engine = sa.create_engine(url, **options)
    except (sa.exc.ArgumentError, ImportError, ValueError, TypeError) as exc:
        raise OutboxError(
            f"cannot open an outbox at {redact_url(url)!r}: {redact(exc, [url])}"
        ) from safe_cause(exc, [url])
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        sa.event.listen(engine, "connect", _sqlite_wal)
    return engine


def _utc(moment: datetime | None) -> datetime | None:
    # SQLite keeps no zone; the outbox writes UTC.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
