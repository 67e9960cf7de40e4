"""The dead-letter store that fits an app's broker transport."""

from __future__ import annotations

from typing import TYPE_CHECKING

from eventbus.broker_errors import URL_ERRORS, describe_broker_error, url_of
from eventbus.deadletter.store import DEFAULT_DEAD_LETTER_QUEUE, DeadLetterStore
from eventbus.errors import DeadLetterError, DeadLetterQueueUnavailable
from eventbus.redaction import redact_url, safe_cause

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["store_for_app"]


def store_for_app(app: Celery, queue_name: str = DEFAULT_DEAD_LETTER_QUEUE) -> DeadLetterStore:
    """The store that fits the app's broker transport (Redis, RabbitMQ or memory).

    Reads the URL only (no I/O); one that names no transport, or that kombu
    cannot parse, raises :class:`DeadLetterQueueUnavailable`.
    """
    try:
        with app.connection_for_write() as conn:
            driver = conn.transport.driver_type
    except URL_ERRORS as exc:
        url = url_of(app.conf.broker_url)
        raise DeadLetterQueueUnavailable(
            f"cannot use the dead-letter queue {queue_name!r} on {redact_url(url)}: "
            f"{describe_broker_error(exc, [url])}"
        ) from safe_cause(exc, [url])
    if driver == "redis":
        from eventbus.celery.deadletter.redis import RedisDeadLetterStore

        return RedisDeadLetterStore(app, queue_name)
    if driver == "amqp":
        from eventbus.celery.deadletter.amqp import AmqpDeadLetterStore

        return AmqpDeadLetterStore(app, queue_name)
    if driver == "memory":
        from eventbus.celery.deadletter.memory import KombuMemoryDeadLetterStore

        return KombuMemoryDeadLetterStore(app, queue_name)
    raise DeadLetterError(
        f"the dead-letter queue supports the redis, amqp and memory transports, not {driver!r}"
    )
