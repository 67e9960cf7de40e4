"""The outbox relay on Django's ORM: publish pending ``eventbus_outbox`` rows in id order.

The same relay as :mod:`eventbus.outbox.relay` (same table, same rules),
written with Django's ORM so a Django project needs no SQLAlchemy and uses
its own ``DATABASES``. Run it as ``manage.py eventbus outbox relay [--loop]``,
or from Celery beat as the task ``eventbus.django.relay_outbox``::

    CELERY_BEAT_SCHEDULE = {
        "eventbus-relay-outbox": {
            "task": "eventbus.django.relay_outbox",
            "schedule": 1.0,
            "options": {"expires": 10},  # runs that waited for a worker do not pile up
        },
    }

(The core task ``eventbus.relay_outbox`` relays an outbox named by an
SQLAlchemy URL, ``eventbus_outbox_url``; this one relays Django's database.)

One batch is one transaction: up to ``batch_size`` pending rows, in ``id``
order, selected with ``SELECT ... FOR UPDATE SKIP LOCKED`` where the database
has it (PostgreSQL, MySQL 8, Oracle), so relays running side by side never
publish a row twice; they may interleave their batches, so run a single relay
when one aggregate's events must leave in the order they were written. SQLite
has no row locks: a batch takes the database's write lock first, so relays
take turns and the application's writes wait while a batch publishes (keep
batches small there). A published row gets
``published_at``; a row that can never be published (not an envelope, an
unknown type, invalid or oversized data, an ``event_id`` that is not its
payload's) gets ``failed_at`` and ``last_error``, is logged at ERROR and
skipped for good (until ``outbox retry-failed``); a publish that fails
otherwise (the broker is down) leaves its row and those after it pending,
with ``attempts`` + 1 and ``last_error``, and stops the run. Delivery is
at-least-once: a relay that dies between a publish and its batch's commit
publishes those rows again, with the same ``event_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventbus.errors import EventError, OutboxRowError, PublishError
from eventbus.outbox.results import MAX_ERROR_LENGTH, FailedRow, OutboxStatus, RelayResult

if TYPE_CHECKING:
    from eventbus.bus import BaseEventBus
    from eventbus.celery_bus import EventBus
    from eventbus.envelope import Envelope

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "RELAY_TASK",
    "FailedRow",
    "OutboxStatus",
    "RelayResult",
    "failed_rows",
    "outbox_status",
    "register_relay_task",
    "relay_outbox",
    "retry_failed",
]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 100  #: rows selected, published and stamped per transaction
RELAY_TASK = "eventbus.django.relay_outbox"  #: the relay task's name


def relay_outbox(
    *,
    bus: BaseEventBus | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batches: int | None = None,
    using: str | None = None,
) -> RelayResult:
    """Publish pending rows batch after batch until none is left (or ``max_batches``).

    A failed publish does not raise: it stops the run, and ``result.error``
    says why. Database errors propagate (rows published in the failing batch
    stay pending and go out again). ``using``: the database alias (default:
    the router's for the outbox model).
    """
    from django.db import router  # type: ignore[import-untyped]

    from eventbus.contrib.django.models import OutboxMessage

    if bus is None:
        from eventbus.contrib.django.conf import get_bus

        bus = get_bus()
    for name, value in (("batch_size", batch_size), ("max_batches", max_batches)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    alias = using or router.db_for_write(OutboxMessage)
    published = failed = batches = 0
    error: str | None = None
    while True:
        selected, done, bad, error = _relay_batch(bus, alias, batch_size)
        published, failed, batches = published + done, failed + bad, batches + 1
        if error is not None or selected < batch_size:
            break
        if max_batches is not None and batches >= max_batches:
            break
    return RelayResult(published, failed, _pending(alias).count(), error)


def _relay_batch(bus: BaseEventBus, alias: str, size: int) -> tuple[int, int, int, str | None]:
    """One batch, one transaction: (rows selected, published, failed, publish error)."""
    from django.db import connections, transaction
    from django.db.models import F  # type: ignore[import-untyped]
    from django.utils import timezone  # type: ignore[import-untyped]

    from eventbus.contrib.django.models import OutboxMessage
    from eventbus.outbox import decode_outbox_payload

    connection = connections[alias]
    with transaction.atomic(using=alias):
        if connection.vendor == "sqlite":
            _take_write_lock(connection)
        rows = _pending(alias)
        if connection.features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True)
        batch = list(rows.order_by("id")[:size])
        published: list[int] = []
        failed = 0
        error: str | None = None
        for row in batch:
            try:
                envelope = decode_outbox_payload(bus, row.payload)
                _check_event_id(row.event_id, envelope)
                bus.publish(envelope)
            except (OutboxRowError, EventError) as exc:
                # This row can never go out (a bad payload, data over the size
                # limit): set it aside and go on with the batch.
                text = _error_text(exc)
                logger.error(
                    "outbox eventbus_outbox: row %s (event %s) cannot be published, "
                    "marked failed: %s",
                    row.id,
                    row.event_id,
                    text,
                )
                _mark(alias, row.id, failed_at=timezone.now(), last_error=text)
                failed += 1
            except Exception as exc:
                # The broker (or the sequence counter's Redis) is away: keep the
                # row and those after it pending, in order, for the next run.
                error = _error_text(exc)
                log = logger.warning if isinstance(exc, PublishError) else logger.exception
                log(
                    "outbox eventbus_outbox: publish of row %s (event %s) failed; it and the "
                    "rows after it stay pending: %s",
                    row.id,
                    row.event_id,
                    error,
                )
                _mark(alias, row.id, last_error=error)
                break
            else:
                published.append(row.id)
        if published:
            OutboxMessage.objects.using(alias).filter(id__in=published).update(
                published_at=timezone.now(), attempts=F("attempts") + 1, last_error=None
            )
    return len(batch), len(published), failed, error


def _take_write_lock(connection: Any) -> None:
    """SQLite: hold the write lock from the start of the batch (as ``BEGIN IMMEDIATE``).

    Django begins a deferred transaction: the batch's SELECT takes a read lock,
    and its UPDATE could not upgrade it while another connection (a handler
    writing, on a worker) waits to commit: SQLite answers "database is locked"
    at once. A write first (matching no row) takes the lock, waiting its turn.
    """
    from eventbus.contrib.django.models import OutboxMessage

    table = connection.ops.quote_name(OutboxMessage._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET id = id WHERE 0 = 1")


def _pending(alias: str | None) -> Any:
    from eventbus.contrib.django.models import OutboxMessage

    return OutboxMessage.objects.using(alias).filter(
        published_at__isnull=True, failed_at__isnull=True
    )


def _mark(alias: str, row_id: int, **values: Any) -> None:
    from django.db.models import F

    from eventbus.contrib.django.models import OutboxMessage

    OutboxMessage.objects.using(alias).filter(id=row_id).update(
        attempts=F("attempts") + 1, **values
    )


def _check_event_id(row_event_id: object, envelope: Envelope[Any]) -> None:
    # The unique key is on the row's event_id: a payload with another id would
    # go out under an id the outbox does not know.
    try:
        same = UUID(str(row_event_id)) == envelope.event_id
    except ValueError:
        same = False
    if not same:
        raise OutboxRowError(
            f"the row's event_id {row_event_id!r} is not its payload's ({envelope.event_id})"
        )


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 3] + "..."


def outbox_status(*, using: str | None = None) -> OutboxStatus:
    """Counts of pending, failed and published rows, and the oldest pending row's time."""
    from django.db.models import Count, Min, Q

    from eventbus.contrib.django.models import OutboxMessage

    pending = Q(published_at__isnull=True, failed_at__isnull=True)
    counts = OutboxMessage.objects.using(using).aggregate(
        pending=Count("id", filter=pending),
        failed=Count("failed_at"),
        published=Count("published_at"),
        oldest_pending=Min("created_at", filter=pending),
    )
    return OutboxStatus(
        pending=counts["pending"],
        failed=counts["failed"],
        published=counts["published"],
        oldest_pending=counts["oldest_pending"],
    )


def failed_rows(*, limit: int = 20, using: str | None = None) -> list[FailedRow]:
    """The latest rows the relay marked failed, newest first."""
    from eventbus.contrib.django.models import OutboxMessage

    rows = (
        OutboxMessage.objects.using(using)
        .filter(failed_at__isnull=False)
        .order_by("-id")
        .values_list("id", "event_id", "event_type", "failed_at", "attempts", "last_error")
    )
    return [FailedRow(*row) for row in rows[:limit]]


def retry_failed(ids: Iterable[int] | None = None, *, using: str | None = None) -> int:
    """Make failed rows pending again (all, or those ``ids``), after the fix; return how many."""
    from eventbus.contrib.django.models import OutboxMessage

    rows = OutboxMessage.objects.using(using).filter(failed_at__isnull=False)
    if ids is not None:
        rows = rows.filter(id__in=list(ids))
    return int(rows.update(failed_at=None))


def register_relay_task(bus: EventBus) -> Any:
    """Register ``eventbus.django.relay_outbox`` on the bus's app (its default queue).

    The task drains the outbox (``batch_size`` rows per transaction, at most
    ``max_batches`` batches) and returns :meth:`RelayResult.as_dict`; a failed
    publish is in its ``error`` and logged, and the next run goes on.
    """

    def relay_outbox_task(
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_batches: int | None = None,
        using: str | None = None,
    ) -> dict[str, Any]:
        """Publish the Django outbox's pending rows in id order; return the counts."""
        result = relay_outbox(bus=bus, batch_size=batch_size, max_batches=max_batches, using=using)
        return result.as_dict()

    return bus.app.task(
        name=RELAY_TASK,
        shared=False,
        # Declared as the handler queues are (on RabbitMQ: with the DLX).
        queue=bus.handler_queue(bus.default_queue),
        # A run that dies half-way is not re-run by the broker: its rows stay
        # pending and the next scheduled run takes them.
        acks_late=False,
        ignore_result=True,
    )(relay_outbox_task)
