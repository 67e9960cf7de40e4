"""The relay: publish an outbox's pending rows on a bus and mark them sent.

One batch is one database transaction: take up to ``limit`` pending rows in
``id`` order and lock them, decode every row, publish the good ones together
in one :meth:`bus.batch() <eventbus.bus.base.BaseEventBus.batch>` (each with its
own ``event_id``: on Redis pipelined, on RabbitMQ one wait for the confirms),
then mark the whole batch (one ``UPDATE ... WHERE id IN (...)`` per outcome)
and commit. Rows are marked published only once the batch was sent and
confirmed; the shared steps are :func:`eventbus.outbox.publishing.publish_rows`.

Locking
    PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``. Relays running at once
    each take other rows (a row locked by one is skipped by the others) and
    never publish a row twice; writers adding rows are not blocked. SQLite has
    one writer: a batch starts with ``BEGIN IMMEDIATE``, so relays take turns
    and the application's writes wait (up to the busy timeout) while a batch
    publishes: keep batches small there.

Order
    One relay publishes in ``id`` order. Relays running at once publish their
    batches side by side, and on PostgreSQL ``id`` order is the order rows
    were inserted, not committed. Ordered handlers get their order from the
    envelopes' sequence numbers: appends through :meth:`Outbox.append
    <eventbus.outbox.Outbox.append>` carry the store's, and publish keeps them.
    A row without one is numbered by the bus at each publish attempt (when
    its type has an ordered handler): a batch that fails burns the numbers
    of the rows it tried, gaps the ordered handler waits out, as after a
    failed direct publish. Write numbered envelopes for ordered handlers.

Failures
    * A row that can never be published (not JSON, not an envelope, an
      unknown type, invalid or oversized data, an ``event_id`` that is not its
      payload's) gets ``failed_at`` and ``last_error``, is logged at ERROR and
      counted in :attr:`RelayResult.failed`; the batch goes on. It is never
      retried, unless told to after the fix (:meth:`Outbox.retry_failed
      <eventbus.outbox.Outbox.retry_failed>`).
      The row is set aside before the publishing starts (an oversized one
      when the bus refuses it), so it never spoils its batch.
    * A batch the broker did not take (:class:`~eventbus.errors.PublishError`:
      the Redis pipeline failed, RabbitMQ did not confirm) leaves all its rows
      pending, none marked published: each row tried gets ``attempts`` + 1
      and ``last_error``. It is reported in :attr:`RelayResult.error` and the
      next run publishes the batch again. A publish that fails without
      failing the batch (the sequence counter's Redis, an in-memory bus)
      stops it there: that row is pending with ``attempts`` + 1 and
      ``last_error``, the rows after it untouched, the rows before it
      published and marked.

Delivery is at-least-once. A relay that dies (or loses its database
connection) after publishing rows and before its commit leaves them
pending: the next run publishes them again, with the same ``event_id``.
So does a failed batch whose messages partly went out (RabbitMQ sends each
message at once and waits for the confirms at the end; a Redis batch is
flushed every 1,000 operations). Idempotent handlers (``idempotent=True``)
absorb the duplicates.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from eventbus.errors import OutboxError
from eventbus.outbox.publishing import BatchOutcome, publish_rows
from eventbus.outbox.results import RelayResult
from eventbus.outbox.table import pending_rows

if TYPE_CHECKING:
    from eventbus.bus.base import BaseEventBus
    from eventbus.outbox.sql import Outbox

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_INTERVAL", "OutboxRelay", "RelayResult"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 100  #: rows per batch (one transaction) unless told otherwise
DEFAULT_INTERVAL = 1.0  #: seconds :meth:`OutboxRelay.run_forever` waits when idle or failing

#: Rows marked per UPDATE statement (databases cap the parameters of one statement).
_MARK_CHUNK = 1000


class OutboxRelay:
    """Publishes an outbox's pending rows on a bus (see the module docstring).

    ``relay_once()`` runs one batch of ``batch_size`` rows, ``drain()``
    batches until nothing is left to take, ``run_forever()`` keeps draining
    (the ``eventbus outbox relay --loop`` command). :attr:`totals` counts
    what this relay did: ``published``, ``failed``, ``retried`` (rows tried
    and left pending by a failed publish, each counting an attempt).
    """

    def __init__(
        self, outbox: Outbox, bus: BaseEventBus, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        self.outbox = outbox
        self.bus = bus
        self.batch_size = _positive(batch_size, "batch_size")
        self.totals: Counter[str] = Counter()
        self._sqlite = outbox.engine.dialect.name == "sqlite"
        table = outbox.table
        self._count = sa.select(sa.func.count()).select_from(table).where(pending_rows(table))

    def __repr__(self) -> str:
        return f"OutboxRelay({self.outbox!r}, batch_size={self.batch_size})"

    def relay_once(self, limit: int | None = None) -> RelayResult:
        """Publish up to ``limit`` (default ``batch_size``) pending rows in one transaction.

        Raises :class:`~eventbus.errors.OutboxError` when the database fails;
        rows published in that batch stay pending and go out again.
        """
        size = self.batch_size if limit is None else _positive(limit, "limit")
        outcome, _, pending_left = self._batch(size, count=True)
        return RelayResult(
            published=len(outcome.published),
            failed=len(outcome.failed),
            pending_left=pending_left or 0,
            error=outcome.error,
        )

    def _batch(self, size: int, *, count: bool) -> tuple[BatchOutcome, int, int | None]:
        """One batch, one transaction: its outcome, the rows it took, and (``count``) those left."""
        t = self.outbox.table
        query = (
            sa.select(t.c.id, t.c.event_id, t.c.payload)
            .where(pending_rows(t))
            .order_by(t.c.id)
            .limit(size)
        )
        if not self._sqlite:
            query = query.with_for_update(skip_locked=True)
        pending_left: int | None = None
        with self.outbox._translated("relay pending rows"), self.outbox.engine.begin() as conn:
            if self._sqlite:
                _begin_immediate(conn)
            fetched = conn.execute(query).all()
            outcome = publish_rows(
                self.bus,
                ((row.id, row.event_id, row.payload) for row in fetched),
                table=t.fullname,
                log=logger,
            )
            self._mark(conn, outcome)
            if count:
                # Before the commit, on the same connection: no extra round
                # trip (rows other relays hold are still pending, as after it).
                pending_left = int(conn.execute(self._count).scalar_one())
        self.totals.update(
            published=len(outcome.published),
            failed=len(outcome.failed),
            retried=len(outcome.retry),
        )
        return outcome, len(fetched), pending_left

    def _mark(self, conn: sa.Connection, outcome: BatchOutcome) -> None:
        """Mark the batch's rows as ``outcome`` says: a few statements, whatever its size."""
        t = self.outbox.table
        now = datetime.now(UTC)
        attempts = t.c.attempts + 1
        for chunk in _chunks(outcome.published):
            conn.execute(
                sa.update(t)
                .where(t.c.id.in_(chunk))
                .values(published_at=now, attempts=attempts, last_error=None)
            )
        # Each with its own error; rare (one executemany each).
        by_id = t.c.id == sa.bindparam("row_id")
        if outcome.failed:
            conn.execute(
                sa.update(t)
                .where(by_id)
                .values(failed_at=now, attempts=attempts, last_error=sa.bindparam("error")),
                [{"row_id": row_id, "error": error} for row_id, error in outcome.failed],
            )
        if outcome.retry:
            conn.execute(
                sa.update(t)
                .where(by_id)
                .values(attempts=attempts, last_error=sa.bindparam("error")),
                [{"row_id": row_id, "error": error} for row_id, error in outcome.retry],
            )

    def drain(self, *, max_batches: int | None = None) -> RelayResult:
        """Relay batch after batch until no full batch is left (or ``max_batches``); sum them.

        Stops early at a failed publish (its ``error`` is the result's). The
        pending rows are counted once, at the end (a count per batch costs as
        much as the whole backlog's index each time).
        """
        if max_batches is not None:
            _positive(max_batches, "max_batches")
        published = failed = batches = 0
        while True:
            outcome, taken, _ = self._batch(self.batch_size, count=False)
            published += len(outcome.published)
            failed += len(outcome.failed)
            batches += 1
            if (
                outcome.error is not None
                or taken < self.batch_size
                or (max_batches is not None and batches >= max_batches)
            ):
                break
        with self.outbox._translated("count pending rows"), self.outbox.engine.connect() as conn:
            pending_left = int(conn.execute(self._count).scalar_one())
        return RelayResult(published, failed, pending_left, outcome.error)

    def run_forever(
        self,
        *,
        interval: float = DEFAULT_INTERVAL,
        stop: threading.Event | None = None,
        on_result: Callable[[RelayResult], object] | None = None,
    ) -> None:
        """Relay until ``stop`` is set: full batches back to back, else every ``interval`` s.

        A failed publish or a database error is logged and tried again after
        ``interval``; nothing but ``stop`` (or an interrupt) ends the loop.
        ``on_result`` is called with every batch's result.
        """
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                result = self.relay_once()
            except OutboxError as exc:
                logger.error("outbox relay: %s", exc)
                stop.wait(interval)
                continue
            if on_result is not None:
                on_result(result)
            if result.error is not None or result.published + result.failed < self.batch_size:
                stop.wait(interval)


def _begin_immediate(conn: sa.Connection) -> None:
    """SQLite: take the write lock before reading rows, so relays take turns."""
    # pysqlite begins a transaction only at the first write: without this two
    # relays would both read the same pending rows.
    dbapi = conn.connection.dbapi_connection
    if dbapi is not None and not getattr(dbapi, "in_transaction", True):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _chunks(ids: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), _MARK_CHUNK):
        yield ids[start : start + _MARK_CHUNK]


def _positive(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value
