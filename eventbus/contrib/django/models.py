"""The transactional outbox table, ``eventbus_outbox``, as a Django model.

A row is written in the caller's transaction (:func:`publish_via_outbox`), so
the event commits or rolls back with the data it is about; the relay
(:mod:`eventbus.contrib.django.relay`) publishes pending rows in ``id`` order
and stamps ``published_at``. The columns are those of :mod:`eventbus.outbox`
(either relay can publish the table); the pending rows' index is a plain
composite one, which every database Django supports can build, where
:mod:`eventbus.outbox` uses a partial index.
"""

from __future__ import annotations

from django.db import models  # type: ignore[import-untyped]
from django.utils import timezone  # type: ignore[import-untyped]

__all__ = ["OutboxMessage"]


class OutboxMessage(models.Model):  # type: ignore[misc]
    """One event waiting to be published (or published, or failed for good).

    Pending: ``published_at`` and ``failed_at`` are both null. ``payload`` is
    the envelope's wire dict as JSON text. A row the relay cannot decode gets
    ``failed_at`` and ``last_error`` and is never retried; a publish that
    fails leaves it pending with ``attempts`` and ``last_error`` updated.
    """

    id = models.BigAutoField(primary_key=True)
    event_id = models.CharField(max_length=36, unique=True)
    event_type = models.CharField(max_length=255)
    aggregate_type = models.CharField(max_length=255, null=True, blank=True)
    aggregate_id = models.CharField(max_length=255, null=True, blank=True)
    payload = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.IntegerField(default=0)
    last_error = models.TextField(null=True, blank=True)

    class Meta:
        app_label = "eventbus"
        db_table = "eventbus_outbox"
        ordering = ("id",)
        verbose_name = "outbox message"
        indexes = (
            # The relay's query: pending rows (both stamps null) in id order.
            models.Index(
                fields=("published_at", "failed_at", "id"), name="eventbus_outbox_pending"
            ),
        )

    def __str__(self) -> str:
        state = "published" if self.published_at else "failed" if self.failed_at else "pending"
        return f"{self.event_type} {self.event_id} ({state})"
