"""Dead letters on a Celery broker: the base of the Redis, RabbitMQ and memory stores.

:class:`BrokerDeadLetterStore` keeps records as durable Celery task messages
of ``eventbus.dead_letter`` in one queue (default ``eventbus.dlq``); one
subclass per transport knows how to browse it (:mod:`.redis`, :mod:`.amqp`,
:mod:`.memory`), and :func:`eventbus.celery.deadletter.factory.store_for_app`
picks the one that fits an app's broker.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kombu.entity import Exchange, Queue

from eventbus.broker_errors import (
    URL_ERRORS,
    broker_errors,
    describe_broker_error,
    is_missing_queue,
    retrying_cannot_help,
    url_of,
)
from eventbus.celery.internals.compat import optimising
from eventbus.celery.internals.confirms import confirmed
from eventbus.celery.queue_types import declaration_mismatch
from eventbus.deadletter.record import MAX_RAW_BODY, DeadLetter
from eventbus.deadletter.store import DEFAULT_DEAD_LETTER_QUEUE, DeadLetterStore, Removed
from eventbus.errors import DeadLetterError, DeadLetterQueueUnavailable
from eventbus.redaction import redact_url, safe_cause

if TYPE_CHECKING:
    from celery import Celery
    from kombu.connection import Connection

__all__ = [
    "DEAD_LETTER_TASK",
    "BrokerDeadLetterStore",
    "decode_record",
    "unwrap",
]

logger = logging.getLogger(__name__)

EVENT_BATCH = 200  #: monitor events sent per message when many records change at once

#: The Celery task name a dead letter travels under: Flower lists it by that name.
DEAD_LETTER_TASK = "eventbus.dead_letter"


class BrokerDeadLetterStore(DeadLetterStore):
    """Records as durable Celery task messages of ``eventbus.dead_letter`` in one queue.

    Nobody consumes that queue. Sending each record as a task message, with
    Celery's task-sent event, is what makes Flower list it (with a readable
    summary as its arguments); a replayed record is reported back to Flower
    as succeeded, a purged one as revoked.
    """

    def __init__(self, app: Celery, queue_name: str = DEFAULT_DEAD_LETTER_QUEUE) -> None:
        super().__init__()
        self.app = app
        self.queue_name = queue_name
        self.exchange = Exchange(queue_name, type="direct", durable=True)
        self.queue = Queue(
            queue_name, self.exchange, routing_key=queue_name, durable=True, auto_delete=False
        )

    def task_message(self, record: DeadLetter) -> Any:
        """The ``eventbus.dead_letter`` task message of a record (Celery's protocol 2)."""
        return self.app.amqp.create_task_message(
            record.id,
            DEAD_LETTER_TASK,
            (record.model_dump(mode="json"),),
            {},
            argsrepr=record.monitor_summary(),
            kwargsrepr="{}",
            create_sent_event=True,
            root_id=record.task_id,
            origin=record.worker,
        )

    def append(self, record: DeadLetter, *, again: bool = False) -> None:
        # A dead letter that is not written makes the worker re-queue the
        # failed message and run the handler again: retry the write first, as
        # publish does. A retry may follow a write whose answer was lost:
        # ``append_once`` is told (``again``), and a store that can tell
        # keeps one copy (Redis: always; RabbitMQ: it looks first).
        policy = self.app.conf.task_publish_retry_policy or {}
        attempts = int(policy.get("max_retries", 3) or 0) + 1
        step = float(policy.get("interval_step", 0.2) or 0)
        interval_max = float(policy.get("interval_max", 1) or 0)
        for attempt in range(attempts):
            try:
                self.append_once(record, again=again or attempt > 0)
                return
            except DeadLetterError as exc:
                if attempt + 1 >= attempts:
                    raise
                logger.debug("dead letter %s: write failed, retrying: %s", record.id, exc)
                time.sleep(min(step * (attempt + 1), interval_max))

    def append_once(self, record: DeadLetter, *, again: bool = False) -> None:
        app = self.app
        message = self.task_message(record)
        try:
            # On RabbitMQ, return once the broker confirmed the record: the
            # caller may then drop its own copy (a worker acks the message).
            timeout = app.conf.get("eventbus_confirm_timeout")
            enabled = app.conf.get("eventbus_publish_confirms", True)
            with (
                app.producer_or_acquire() as producer,
                confirmed(
                    producer,
                    timeout=timeout,
                    enabled=enabled,
                    batched=optimising(app.conf, "batched_confirms"),
                ),
            ):
                app.amqp.send_task_message(
                    producer,
                    DEAD_LETTER_TASK,
                    message,
                    queue=self.queue,
                    serializer="json",
                    delivery_mode=2,
                    headers={"eventbus-dead-letter": record.id},
                    retry=True,
                    retry_policy=app.conf.task_publish_retry_policy,
                )
        except Exception as exc:
            raise self._not_written(record, exc) from exc

    def _not_written(self, record: DeadLetter, exc: BaseException) -> DeadLetterError:
        mismatch = declaration_mismatch(exc, self.app.conf)
        return DeadLetterError(
            f"could not write dead letter {record.id} to {self.queue_name!r}: {mismatch or exc}"
        )

    def declare(self) -> None:
        """Declare the queue (and its exchange) now, so the broker can route to it.

        A queue of that name declared before with other arguments (a classic
        queue, now ``eventbus_queue_type = "quorum"``) raises
        :class:`~eventbus.errors.ConfigurationError`, naming it.
        """
        with self.app.connection_for_write() as conn:
            try:
                self.queue.bind(conn.default_channel).declare()
            except conn.channel_errors as exc:
                mismatch = declaration_mismatch(exc, self.app.conf)
                if mismatch is not None:
                    raise mismatch from exc
                raise

    @contextmanager
    def _broker(self, doing: str) -> Iterator[Connection]:
        """A connection for reading or changing the queue; a broker error says so.

        Whatever keeps the queue from being read (a refused login, no such
        vhost, no broker at the address, a URL that names no transport) raises
        :class:`DeadLetterQueueUnavailable`, naming it: never an empty answer.
        """
        try:
            conn = self.app.connection_for_write()
            conn.transport  # noqa: B018 - resolves the URL's scheme now, inside this try
        except URL_ERRORS as exc:
            raise self._unavailable(doing, exc) from safe_cause(exc, [self._url])
        try:
            with conn:
                try:
                    conn.ensure_connection(max_retries=0)  # one attempt, no retry
                except broker_errors(conn) as exc:
                    if retrying_cannot_help(exc):
                        raise
                    # Nothing answered: kombu's retries, as configured (transport
                    # options, for up to the connect timeout).
                    conn.default_channel  # noqa: B018 - connects, retrying
                yield conn
        except broker_errors(conn) as exc:
            raise self._unavailable(doing, exc) from safe_cause(exc, [self._url])

    @property
    def _url(self) -> str:
        return url_of(self.app.conf.broker_url)

    def _unavailable(self, doing: str, exc: BaseException) -> DeadLetterQueueUnavailable:
        # The cause's text is in the message: a driver may echo the URL into
        # its error, and then the cause is not chained (safe_cause).
        why = declaration_mismatch(exc, self.app.conf) or describe_broker_error(exc, [self._url])
        return DeadLetterQueueUnavailable(
            f"cannot {doing} the dead-letter queue {self.queue_name!r} on "
            f"{redact_url(self._url)}: {why}"
        )

    def count(self) -> int:
        with self._broker("read") as conn:
            try:
                _, count, _ = self.queue.bind(conn.default_channel).queue_declare(passive=True)
            except conn.channel_errors as exc:
                if is_missing_queue(exc):
                    return 0  # the queue does not exist yet: nothing failed
                raise
            return int(count)

    def purge(self, *, removed: Removed | None = None) -> int:
        ids = [record.id for record in self.records()]
        with self._broker("purge") as conn:
            bound = self.queue.bind(conn.default_channel)
            bound.declare()
            bound.purge()
        if removed is not None and ids:
            removed(ids)
        self._announce(ids, "task-revoked", terminated=False, expired=False, signum=None)
        return len(ids)

    def _announce_replayed(self, record_ids: list[str]) -> None:
        self._announce(record_ids, "task-succeeded", result="'replayed'", runtime=0.0)

    def _announce(self, record_ids: list[str], event_type: str, **fields: Any) -> None:
        if not record_ids:
            return
        try:
            with self.app.connection_for_write() as conn:
                # Buffered: many records go out as a few "task-multi" messages.
                dispatcher = self.app.events.Dispatcher(
                    conn, buffer_group=["task"], buffer_limit=EVENT_BATCH
                )
                try:
                    for record_id in record_ids:
                        dispatcher.send(event_type, uuid=record_id, **fields)
                    dispatcher.flush()
                finally:
                    dispatcher.close()
        except Exception:  # monitoring must never fail a replay or a purge
            logger.warning("could not send %s events to monitors", event_type, exc_info=True)


def decode_record(body: bytes | str | Any, headers: Mapping[str, Any] | None = None) -> DeadLetter:
    """Turn a DLQ message into a record; garbage becomes an undecodable record.

    Understands the ``eventbus.dead_letter`` task message, a bare record (as
    written by earlier versions), and a handler's own task message that the
    broker dead-lettered (RabbitMQ's dead-letter exchange).
    """
    try:
        data = json.loads(body) if isinstance(body, (bytes, str)) else body
        headers = headers or {}
        task = headers.get("task")
        if task and task != DEAD_LETTER_TASK:
            return _broker_dead_lettered(data, headers)
        if isinstance(data, list) and len(data) == 3 and isinstance(data[0], list):
            data = data[0][0]  # a task message: [args, kwargs, embed]
        if isinstance(data, dict) and "failed_at" not in data:
            data = {**data, "failed_at": None}  # unknown: not the time of this read
        return DeadLetter.model_validate(data)
    except Exception as exc:  # a hand-pushed message must not break listing
        raw = body if isinstance(body, str) else bytes(body or b"").decode("utf-8", "replace")
        return DeadLetter(
            id="raw-" + hashlib.sha1(raw.encode("utf-8", "replace")).hexdigest()[:16],
            handler=None,
            reason="undecodable",
            attempts=0,
            exception_type=type(exc).__name__,
            exception_message=f"not a dead-letter record: {exc}"[:500],
            raw_body=raw[:MAX_RAW_BODY],
            raw_size=len(raw),
            failed_at=None,  # nothing in it says when: not the time of this read
        )


def _broker_dead_lettered(body: Any, headers: Mapping[str, Any]) -> DeadLetter:
    """A handler task message the broker itself dead-lettered (x-death names why).

    RabbitMQ puts the latest death first. A quorum queue's delivery limit
    (``delivery_limit``: the message came back unacknowledged too often, its
    worker killed each time) is a reason of its own; any other (``rejected``,
    ``expired``, ``maxlen``) is ``broker``.
    """
    args = body[0] if isinstance(body, list) and body else []
    deaths = headers.get("x-death") or [{}]
    death = deaths[0] if isinstance(deaths, list) and deaths else {}
    why = str(death.get("reason", "rejected")) if isinstance(death, dict) else "rejected"
    task_id = str(headers.get("id") or hashlib.sha1(json.dumps(body).encode()).hexdigest())
    queue = death.get("queue", "?") if isinstance(death, dict) else "?"
    detail = (
        ": delivered more times than its delivery limit (eventbus_delivery_limit) allows, "
        "each time without an ack (its worker process died, or it was re-queued)"
        if why == "delivery_limit"
        else ""
    )
    # When the broker dead-lettered it (an AMQP timestamp, which py-amqp reads
    # as a naive UTC datetime): not when the queue is read.
    died = death.get("time") if isinstance(death, dict) else None
    return DeadLetter.from_exception(
        DeadLetterError(f"the broker dead-lettered the message ({why}) from {queue}{detail}"),
        failed_at=_as_utc(died) if isinstance(died, datetime) else None,
        id=f"broker-{task_id}",
        handler=str(headers["task"]),
        reason="delivery_limit" if why == "delivery_limit" else "broker",
        attempts=int(headers.get("retries") or 0) + 1,
        envelope=args[0] if args else None,
        task_id=task_id,
        queue=death.get("queue") if isinstance(death, dict) else None,
    )


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def unwrap(raw: bytes | dict[str, Any]) -> tuple[bytes | str | Any, dict[str, Any] | None]:
    """Body and headers of one kombu virtual-transport message (Redis, memory)."""
    try:
        message = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        headers = message.get("headers")
        return body, headers if isinstance(headers, dict) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return raw, None
