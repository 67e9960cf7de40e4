"""Publishing from Django code: after the commit, or through the outbox.

:func:`publish_on_commit` sends the event when the transaction commits (a
rolled-back transaction sends nothing). Like Celery's ``delay_on_commit`` it
is only a commit hook: if the broker is unreachable at that moment, the data
is committed and the event is not (it is logged at ERROR with its envelope).

:func:`publish_via_outbox` writes the event into ``eventbus_outbox`` in the
same transaction as your data: both commit or neither does, and the relay
publishes it later, retrying while the broker is down. At-least-once: a
relay that dies between the publish and its stamp publishes the row again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from eventbus.domain.envelope import Envelope, wrap
from eventbus.domain.events import Event, resolve_event_type

if TYPE_CHECKING:
    from eventbus.bus.base import BaseEventBus

__all__ = ["publish_on_commit", "publish_via_outbox"]

logger = logging.getLogger(__name__)


def publish_on_commit(
    event: Event | Envelope[Any],
    *,
    using: str | None = None,
    robust: bool = False,
    bus: BaseEventBus | None = None,
    aggregate_id: object = None,
    aggregate_type: str | None = None,
    correlation_id: object = None,
    causation_id: object = None,
    metadata: Mapping[str, Any] | None = None,
) -> Envelope[Any]:
    """Publish ``event`` when the current transaction on ``using`` commits; return its envelope.

    The event is validated and wrapped now: an invalid one raises here, before
    the commit, and nothing is scheduled. Outside ``transaction.atomic()``
    (autocommit) it is published at once, as Django runs such a hook. The
    envelope fields are those of :meth:`EventBus.publish
    <eventbus.bus.base.BaseEventBus.publish>`; a sequence number for an ordered
    handler is assigned at the commit, so the returned envelope has none.

    If the publish fails after the commit, the error is logged with the whole
    envelope and raised from the commit (``robust=True``: only logged, like
    Django's ``on_commit(..., robust=True)``). Use :func:`publish_via_outbox`
    when an event must survive a broker outage.

    ``bus`` defaults to the project's (:func:`~eventbus.contrib.django.get_bus`);
    any bus works, e.g. an :class:`~eventbus.InMemoryEventBus` in a test.
    """
    from django.db import transaction  # type: ignore[import-untyped]

    bus = bus or _bus()
    envelope = _prepare(
        bus,
        event,
        aggregate_id=aggregate_id,
        aggregate_type=aggregate_type,
        correlation_id=correlation_id,
        causation_id=causation_id,
        metadata=metadata,
    )

    def send() -> None:
        try:
            bus.publish(envelope)
        except Exception:
            logger.exception(
                "eventbus: publish after commit failed, event %s %s not sent: %s",
                envelope.event_type,
                envelope.event_id,
                json.dumps(envelope.to_wire(), default=str),
            )
            if not robust:
                raise

    transaction.on_commit(send, using=using)
    return envelope


def publish_via_outbox(
    event: Event | Envelope[Any],
    *,
    using: str | None = None,
    bus: BaseEventBus | None = None,
    aggregate_id: object = None,
    aggregate_type: str | None = None,
    correlation_id: object = None,
    causation_id: object = None,
    metadata: Mapping[str, Any] | None = None,
) -> Envelope[Any]:
    """Write ``event`` to the outbox in the current transaction; return its envelope.

    Call it inside the ``transaction.atomic()`` that writes your data (on the
    same database, ``using``): the row commits with it, or rolls back with it.
    In autocommit the row is committed at once, on its own. The event is
    validated first (an invalid one raises, nothing is written); the relay
    (``manage.py eventbus outbox relay`` or the ``eventbus.relay_outbox`` task)
    publishes it later.
    """
    from eventbus.contrib.django.models import OutboxMessage
    from eventbus.outbox import outbox_payload

    bus = bus or _bus()
    envelope = _prepare(
        bus,
        event,
        aggregate_id=aggregate_id,
        aggregate_type=aggregate_type,
        correlation_id=correlation_id,
        causation_id=causation_id,
        metadata=metadata,
    )
    OutboxMessage.objects.db_manager(using).create(
        event_id=str(envelope.event_id),
        event_type=envelope.event_type,
        aggregate_type=envelope.aggregate_type,
        aggregate_id=envelope.aggregate_id,
        payload=outbox_payload(envelope),
    )
    return envelope


def _bus() -> BaseEventBus:
    from eventbus.contrib.django.conf import get_bus

    return get_bus()


def _prepare(
    bus: BaseEventBus,
    event: Event | Envelope[Any],
    *,
    aggregate_id: object,
    aggregate_type: str | None,
    correlation_id: object,
    causation_id: object,
    metadata: Mapping[str, Any] | None,
) -> Envelope[Any]:
    """The envelope ``bus.publish`` would send, checked now: type known, size within limit."""
    if isinstance(event, Envelope):
        if any(
            v is not None
            for v in (aggregate_id, aggregate_type, correlation_id, causation_id, metadata)
        ):
            raise TypeError("an envelope takes no envelope fields; set them in create_event()")
        resolve_event_type(event.event_type, bus.event_registry)
        envelope = event
    elif isinstance(event, Event):
        resolve_event_type(type(event), bus.event_registry)
        envelope = wrap(
            event,
            aggregate_id=aggregate_id,
            aggregate_type=aggregate_type,
            correlation_id=correlation_id,
            causation_id=causation_id,
            metadata=metadata,
        )
    else:
        raise TypeError(
            f"expected an Event or an Envelope, got {type(event).__name__}; "
            "use create_event(type_name, data) for a dict"
        )
    bus._wire(envelope)  # raises PayloadTooLarge now rather than after the commit
    return envelope
