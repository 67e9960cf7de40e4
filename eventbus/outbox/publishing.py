"""A relay batch's publishing: decode every row, then publish the good ones together.

Shared by the SQLAlchemy relay (:mod:`eventbus.outbox.relay`) and the Django
one (:mod:`eventbus.contrib.django.relay`), which read and mark rows each with
their own database layer; imports no SQLAlchemy. :func:`publish_rows` takes
the batch's rows (already locked by the caller's transaction) and returns
what to mark, in a :class:`BatchOutcome`:

1. Every row is decoded and checked first. A row that can never be published
   (not JSON, not an envelope, an unknown type, invalid data, an
   ``event_id`` that is not its payload's) is set aside as *failed* and
   logged at ERROR; it takes no part in the publishing, so it cannot spoil
   the good rows' batch.
2. The good rows are published in ``id`` order inside one
   :meth:`bus.batch() <eventbus.bus.base.BaseEventBus.batch>`: one producer, on
   Redis pipelined round trips, on RabbitMQ one wait for the confirms. A row
   the bus refuses by itself (data over the size limit: an
   :class:`~eventbus.errors.EventError`) is failed too, and the batch goes on.
3. When the block ends normally, every row published in it was sent (and
   confirmed): they are *published*. A publish that failed otherwise (the
   broker, the sequence counter) stops the batch there: that row is *retry*
   (pending, attempts + 1, ``last_error``), the rows after it untouched.
   When the block itself fails (:class:`~eventbus.errors.PublishError`: the
   pipeline or the confirms), none of the batch's rows counts as published:
   every row tried in it is *retry*, and any of their messages may or may not
   have gone out (the next run publishes them again, same ``event_id``:
   at-least-once).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventbus.errors import EventError, OutboxRowError, PublishError
from eventbus.outbox.payload import decode_outbox_payload
from eventbus.outbox.results import MAX_ERROR_LENGTH
from eventbus.redaction import redact

if TYPE_CHECKING:
    from eventbus.bus.base import BaseEventBus
    from eventbus.domain.envelope import Envelope

__all__ = ["BatchOutcome", "check_event_id", "error_text", "publish_rows"]


@dataclass(slots=True)
class BatchOutcome:
    """What to mark after a batch: row ids by fate (each row in one list at most).

    ``published``: sent (and confirmed); ``failed``: ``(id, error)`` pairs, never
    publishable; ``retry``: ``(id, error)`` pairs, tried and left pending, each
    gets ``attempts`` + 1 and ``last_error``; rows in none of them were not
    tried and stay as they are. ``error`` is set when the batch stopped on a
    failed publish (the first failure's text).
    """

    published: list[int] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    retry: list[tuple[int, str]] = field(default_factory=list)
    error: str | None = None


def publish_rows(
    bus: BaseEventBus,
    rows: Iterable[tuple[int, object, str | bytes]],
    *,
    table: str,
    log: logging.Logger,
) -> BatchOutcome:
    """Publish a batch of ``(id, event_id, payload)`` rows, in the given order (module docstring).

    Nothing is written here: the caller marks the rows as the outcome says,
    in the transaction that holds their locks, and commits.
    """
    outcome = BatchOutcome()
    good: list[tuple[int, object, Envelope[Any]]] = []
    for row_id, event_id, payload in rows:
        try:
            envelope = decode_outbox_payload(bus, payload)
            check_event_id(event_id, envelope)
        except (OutboxRowError, EventError) as exc:
            _set_aside(outcome, log, table, row_id, event_id, exc)
            continue
        good.append((row_id, event_id, envelope))
    if not good:
        return outcome

    sent: list[tuple[int, object, Envelope[Any]]] = []
    stopped: tuple[int, object, Envelope[Any], BaseException] | None = None
    try:
        with bus.batch():
            for row_id, event_id, envelope in good:
                try:
                    bus.publish(envelope)
                except EventError as exc:
                    # Refused by the bus before sending (over the size limit):
                    # this row only; the batch is not spoilt.
                    _set_aside(outcome, log, table, row_id, event_id, exc)
                    continue
                except Exception as exc:
                    # The broker (or the sequence counter) failed: stop here, so
                    # the rows after it stay pending in order.
                    stopped = (row_id, event_id, envelope, exc)
                    break
                sent.append((row_id, event_id, envelope))
    except Exception as exc:
        # The batch was not sent, or not confirmed, as a whole: none of its
        # rows is published. Every row tried counts an attempt, each with an
        # error naming its event (the first row when the batch could not even
        # start: the failure is recorded on the row that waits).
        tried = (sent or [good[0]]) if stopped is None else sent
        for row_id, _, envelope in tried:
            text = f"could not publish {envelope.event_type} {envelope.event_id} ({exc})"
            outcome.retry.append((row_id, error_text(exc, text)))
        if stopped is not None:
            outcome.retry.append((stopped[0], error_text(stopped[3])))
        cause = stopped[3] if stopped is not None else exc
        outcome.error = error_text(cause)
        row_id, event_id = stopped[:2] if stopped is not None else tried[0][:2]
        log.log(
            _level(cause),
            "outbox %s: publish of row %s (event %s) failed, in a batch of %d row(s) "
            "(ids %s..%s) that all stay pending: %s",
            table,
            row_id,
            event_id,
            len(good),
            good[0][0],
            good[-1][0],
            outcome.error,
            exc_info=None if isinstance(cause, PublishError) else cause,
        )
        return outcome
    outcome.published = [row_id for row_id, _, _ in sent]
    if stopped is not None:
        row_id, event_id, _, cause = stopped
        outcome.error = error_text(cause)
        outcome.retry.append((row_id, outcome.error))
        log.log(
            _level(cause),
            "outbox %s: publish of row %s (event %s) failed; it and the rows after it "
            "stay pending: %s",
            table,
            row_id,
            event_id,
            outcome.error,
            exc_info=None if isinstance(cause, PublishError) else cause,
        )
    return outcome


def _level(exc: BaseException) -> int:
    # A broker away is expected now and then; anything else is a bug to see.
    return logging.WARNING if isinstance(exc, PublishError) else logging.ERROR


def _set_aside(
    outcome: BatchOutcome,
    log: logging.Logger,
    table: str,
    row_id: int,
    event_id: object,
    exc: BaseException,
) -> None:
    text = error_text(exc)
    log.error(
        "outbox %s: row %s (event %s) cannot be published, marked failed: %s",
        table,
        row_id,
        event_id,
        text,
    )
    outcome.failed.append((row_id, text))


def check_event_id(row_event_id: object, envelope: Envelope[Any]) -> None:
    """Raise :class:`~eventbus.errors.OutboxRowError` if the row's event_id is not its payload's."""
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


def error_text(exc: BaseException, message: str | None = None) -> str:
    """``Type: message`` (the exception's own by default), cut to ``MAX_ERROR_LENGTH``."""
    # Pattern-based: a driver's message may echo a URL with its password.
    text = redact(f"{type(exc).__name__}: {exc if message is None else message}")
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 3] + "..."
