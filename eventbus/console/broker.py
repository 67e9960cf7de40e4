"""What the overview asks the broker: handler queue depths, the broker's name with no secret.

Depths come from a passive ``queue_declare``, kombu's public call on every
transport (RabbitMQ answers the ready count; kombu's Redis channel sums the
lists of every priority step). A queue that does not exist yet holds nothing.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from eventbus.broker_errors import broker_errors, describe_broker_error, is_missing_queue, url_of
from eventbus.bus.base import BaseEventBus
from eventbus.redaction import redact, redact_url

__all__ = ["QueueDepth", "broker_name", "dead_letter_readers", "queue_depths", "secrets_of"]

#: Celery settings whose URLs (and passwords) a page or a log line could echo.
URL_SETTINGS = ("broker_url", "broker_read_url", "broker_write_url", "result_backend")


@dataclass(frozen=True)
class QueueDepth:
    """A handler queue: its ready messages, or why they could not be counted."""

    name: str
    depth: int | None
    error: str | None = None


def secrets_of(bus: BaseEventBus) -> list[str]:
    """The URLs of the bus's app that carry secrets: what :func:`redact` is given."""
    conf = getattr(getattr(bus, "app", None), "conf", None)
    if conf is None:
        return []
    urls = [url_of(conf.get(key)) for key in URL_SETTINGS if conf.get(key)]
    urls += [str(v) for k, v in conf.items() if k.startswith("eventbus_") and "://" in str(v)]
    return urls


def broker_name(bus: BaseEventBus) -> str:
    """The broker URL, its passwords masked (``memory`` for the in-memory bus)."""
    conf = getattr(getattr(bus, "app", None), "conf", None)
    return redact_url(url_of(conf.broker_url)) if conf is not None else "memory (in-process)"


def queue_depths(bus: BaseEventBus) -> list[QueueDepth]:
    """Ready messages in each of the bus's handler queues (empty list: no Celery broker)."""
    app: Any = getattr(bus, "app", None)
    names: list[str] = list(getattr(bus, "queues", []) or [])
    if app is None or not names:
        return []
    secrets = secrets_of(bus)
    conn = app.connection_for_write()
    try:
        with conn:
            conn.ensure_connection(max_retries=1)
            return [_depth(conn, name) for name in names]
    except broker_errors(conn) as exc:
        why = redact(describe_broker_error(exc, secrets), secrets)
        return [QueueDepth(name, None, why) for name in names]


def _depth(conn: Any, name: str) -> QueueDepth:
    # A channel per queue: on RabbitMQ a 404 closes the channel it came on.
    channel = conn.channel()
    try:
        _, count, _ = channel.queue_declare(queue=name, passive=True)
        return QueueDepth(name, int(count))
    except conn.channel_errors as exc:
        # kombu's Redis channel says NOT_FOUND, without AMQP's 404, for a list
        # that does not exist: which is also what an empty queue is on Redis.
        if not (is_missing_queue(exc) or "NOT_FOUND" in str(exc)):
            raise
        return QueueDepth(name, 0)
    finally:
        with suppress(Exception):  # a channel the broker closed already
            channel.close()


def dead_letter_readers(bus: BaseEventBus) -> int:
    """Consumers of the bus's dead-letter queue now: on RabbitMQ, other browses.

    No worker consumes that queue; a consumer is a listing or a replay
    browsing it, holding the messages it passed, which a browse of ours then
    does not see. 0 on Redis (kombu counts no consumers there), for the
    in-memory bus, and for a queue not declared yet.
    """
    app: Any = getattr(bus, "app", None)
    if app is None:
        return 0
    try:
        return _consumers(app, bus.dead_letter_queue)
    except Exception:  # the read this goes with names the broker's problem itself
        return 0


def _consumers(app: Any, queue: str) -> int:
    with app.connection_for_write() as conn:
        if conn.transport.driver_type != "amqp":
            return 0
        conn.ensure_connection(max_retries=0)
        channel = conn.channel()
        try:
            _, _, consumers = channel.queue_declare(queue=queue, passive=True)
            return int(consumers)
        except conn.channel_errors as exc:
            if is_missing_queue(exc):
                return 0
            raise
        finally:
            with suppress(Exception):
                channel.close()
