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
batches small there). Every row of the batch is decoded first; the good ones
are published together in one :meth:`bus.batch()
<eventbus.bus.base.BaseEventBus.batch>` (see :mod:`eventbus.outbox.publishing`)
and get ``published_at`` once it was sent and confirmed; a row that can never
be published (not an envelope, an unknown type, invalid or oversized data, an
``event_id`` that is not its payload's) gets ``failed_at`` and
``last_error``, is logged at ERROR and skipped for good (until ``outbox
retry-failed``) without spoiling its batch. A batch the broker did not take
leaves all its rows pending, each row tried with ``attempts`` + 1 and
``last_error``, and stops the run. Delivery is at-least-once: a relay that
dies between a publish and its batch's commit, or a failed batch whose
messages partly went out, publishes those rows again, with the same
``event_id``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from eventbus.outbox.publishing import publish_rows
from eventbus.outbox.results import FailedRow, OutboxStatus, RelayResult

if TYPE_CHECKING:
    from eventbus.bus.base import BaseEventBus
    from eventbus.celery.bus import EventBus

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

    connection = connections[alias]
    with transaction.atomic(using=alias):
        if connection.vendor == "sqlite":
            _take_write_lock(connection)
        rows = _pending(alias)
        if connection.features.has_select_for_update_skip_locked:
            rows = rows.select_for_update(skip_locked=True)
        batch = list(rows.order_by("id").values_list("id", "event_id", "payload")[:size])
        # Decoded first, the good rows published together in one bus.batch():
        # marked published only once it was sent (and confirmed).
        outcome = publish_rows(bus, batch, table="eventbus_outbox", log=logger)
        objects = OutboxMessage.objects.using(alias)
        now = timezone.now()
        attempts = F("attempts") + 1
        if outcome.published:
            objects.filter(id__in=outcome.published).update(
                published_at=now, attempts=attempts, last_error=None
            )
        # Each with its own error; rare.
        for row_id, error in outcome.failed:
            objects.filter(id=row_id).update(failed_at=now, attempts=attempts, last_error=error)
        for row_id, error in outcome.retry:
            objects.filter(id=row_id).update(attempts=attempts, last_error=error)
    return len(batch), len(outcome.published), len(outcome.failed), outcome.error


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
