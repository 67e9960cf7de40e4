"""Where dead letters are kept: the storage interface and its broker-backed base.

A store appends records, iterates them *without consuming* (oldest first),
removes chosen ones, counts and purges. :class:`BrokerDeadLetterStore` keeps
them on the Celery broker as durable JSON task messages in one queue
(default ``eventbus.dlq``); one subclass per transport knows how to browse it.

A record's id names its failed delivery, and a queue may still hold two
messages of one record: RabbitMQ cannot refuse a duplicate on write, and
two processes that ran the same redelivered message each recorded it. A
store's iteration and :meth:`~DeadLetterStore.count` are of *messages*,
copies included (the raw view: the queue's depth); what an operator reads is
*records*: :meth:`~DeadLetterStore.records` and
:meth:`~DeadLetterStore.count_records` show each id once (its oldest copy),
:meth:`~DeadLetterStore.remove` and :meth:`~DeadLetterStore.purge` count
records and remove every copy, and a replay publishes a record once and then
removes every copy of it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
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
from eventbus.celery.internals.confirms import confirmed
from eventbus.deadletter.record import MAX_RAW_BODY, DeadLetter
from eventbus.errors import DeadLetterError, DeadLetterQueueUnavailable
from eventbus.redaction import redact_url, safe_cause

if TYPE_CHECKING:
    from celery import Celery
    from kombu.connection import Connection

__all__ = [
    "DEAD_LETTER_TASK",
    "BrokerDeadLetterStore",
    "DeadLetterStore",
    "IdSet",
    "decode_record",
    "distinct",
    "store_for_app",
    "unwrap",
]

DEFAULT_DEAD_LETTER_QUEUE = "eventbus.dlq"  #: the dead-letter queue's default name

logger = logging.getLogger(__name__)

EVENT_BATCH = 200  #: monitor events sent per message when many records change at once

#: Records a replay publishes together (one ``bus.batch()``) before it removes
#: them. 500 is a Redis page, whose message and task-sent event make one
#: 1,000-operation pipeline flush; on RabbitMQ one confirm wait per 500
#: messages is already lost in the noise. It also bounds what a failed chunk
#: leaves behind: up to 500 records kept that may have been delivered too.
REPLAY_CHUNK = 500


#: The Celery task name a dead letter travels under: Flower lists it by that name.
DEAD_LETTER_TASK = "eventbus.dead_letter"

#: Publishes a chunk of records again, together; returns the ids of those it
#: sent (and the broker confirmed). Only those are removed; raising keeps them all.
Publish = Callable[[list[DeadLetter]], Collection[str]]
#: Chooses the records to replay.
Select = Callable[[DeadLetter], bool]


class DeadLetterStore(ABC):
    """Storage of dead-letter records. Iteration never consumes.

    Subclasses implement ``append``, ``__iter__``, ``remove``, ``count`` and
    ``purge``; ``redeliver`` is built on them with a per-record claim
    (``_claim``/``_release``) that a store shared between processes makes
    atomic across them. Copies of one record (messages with the same id) are
    each yielded by ``__iter__`` and counted by ``count``; ``records`` and
    ``count_records`` show them once, ``remove``, ``purge`` and ``redeliver``
    take every copy of a record they take.
    """

    def __init__(self) -> None:
        self._claims: set[str] = set()
        self._claims_lock = threading.Lock()

    @abstractmethod
    def append(self, record: DeadLetter, *, again: bool = False) -> None:
        """Write ``record`` durably; raise :class:`~eventbus.errors.DeadLetterError` if not.

        ``again``: the record may have been written before (a write whose
        answer was lost, a message delivered again): a store that can tell
        keeps one copy. A record's id names its failed delivery.
        """

    def append_once(self, record: DeadLetter, *, again: bool = False) -> None:
        """One attempt at :meth:`append`, for a caller that retries on its own schedule."""
        self.append(record, again=again)

    @abstractmethod
    def __iter__(self) -> Iterator[DeadLetter]:
        """Every message as a record, oldest first, without removing any; copies each."""

    def records(self) -> Iterator[DeadLetter]:
        """Every record once, oldest first, without removing any: what an operator reads.

        A record with copies is shown once, as its oldest copy. Keeps the ids
        seen so far (about 100 bytes each), not the records: memory grows
        with the number of records, but slowly.
        """
        return distinct(self)

    def count_records(self) -> int:
        """How many records :meth:`records` shows (each record once, however many copies).

        Reads the whole queue (on RabbitMQ: a browse); :meth:`count` is the
        cheap depth, copies included.
        """
        return sum(1 for _ in self.records())

    @abstractmethod
    def remove(self, record_ids: Collection[str]) -> int:
        """Remove these records, every copy of each; return how many records were found."""

    @abstractmethod
    def count(self) -> int:
        """Messages in the queue, copies of a record included: its depth, read cheaply."""

    @abstractmethod
    def purge(self) -> int:
        """Remove every record, copies included; return how many records there were."""

    def declare(self) -> None:
        """Create what the store needs on its backend (nothing, by default)."""
        return None

    def redeliver(self, select: Select, publish: Publish, *, limit: int | None = None) -> list[str]:
        """Publish the selected records chunk by chunk, then remove them; return the ids replayed.

        One streaming pass, oldest first. Each chunk of up to
        :data:`REPLAY_CHUNK` selected records is claimed and handed to
        ``publish``, which returns the ids it sent; only those are removed,
        after it returned. A record that a concurrent replay holds is
        skipped, so it is published once. If ``publish`` raises, the earlier
        chunks stay removed, none of this one is, and the error propagates.
        A record with copies is selected and published once (its oldest
        copy); removing it removes every copy (``remove``).
        """
        done: list[str] = []
        chunk: list[DeadLetter] = []
        seen = IdSet()  # a copy of a record seen before is neither selected nor published
        try:
            for record in self:
                if limit is not None and len(done) + len(chunk) >= limit:
                    break
                if not seen.add(record.id):
                    continue
                if not select(record) or not self._claim(record.id):
                    continue
                chunk.append(record)
                if len(chunk) >= REPLAY_CHUNK:
                    self._redeliver_chunk(chunk, publish, done)
            if chunk:
                self._redeliver_chunk(chunk, publish, done)
        finally:
            for record in chunk:  # claimed, never published (select or the walk raised)
                self._release(record.id)
            self._announce_replayed(done)
        return done

    def _redeliver_chunk(self, chunk: list[DeadLetter], publish: Publish, done: list[str]) -> None:
        try:
            sent = set(publish(list(chunk)))
            replayed = [record.id for record in chunk if record.id in sent]
            if replayed:
                self.remove(replayed)
            done.extend(replayed)
        finally:
            for record in chunk:
                self._release(record.id)
            chunk.clear()

    def _claim(self, record_id: str) -> bool:
        with self._claims_lock:
            if record_id in self._claims:
                return False
            self._claims.add(record_id)
            return True

    def _release(self, record_id: str) -> None:
        with self._claims_lock:
            self._claims.discard(record_id)

    def _announce_replayed(self, record_ids: list[str]) -> None:
        """Tell monitors (Flower) these records left the queue; a no-op here."""
        return None


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
                confirmed(producer, timeout=timeout, enabled=enabled),
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
        return DeadLetterError(
            f"could not write dead letter {record.id} to {self.queue_name!r}: {exc}"
        )

    def declare(self) -> None:
        """Declare the queue (and its exchange) now, so the broker can route to it."""
        with self.app.connection_for_write() as conn:
            self.queue.bind(conn.default_channel).declare()

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
        return DeadLetterQueueUnavailable(
            f"cannot {doing} the dead-letter queue {self.queue_name!r} on "
            f"{redact_url(self._url)}: {describe_broker_error(exc, [self._url])}"
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

    def purge(self) -> int:
        ids = [record.id for record in self.records()]
        with self._broker("purge") as conn:
            bound = self.queue.bind(conn.default_channel)
            bound.declare()
            bound.purge()
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


def distinct(records: Iterable[DeadLetter]) -> Iterator[DeadLetter]:
    """``records`` with each id once: the first copy of each (the oldest, in a store's order)."""
    seen = IdSet()
    iterator = iter(records)
    try:
        for record in iterator:
            if seen.add(record.id):
                yield record
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:  # a browse ends (and gives its messages back) now, not at GC
            close()


_HEX_ID = re.compile(r"[0-9a-f]{32}")


class IdSet:
    """A set of record ids, kept small: an id of 32 hex digits (eventbus's) as an int."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: set[int | str] = set()

    @staticmethod
    def _key(record_id: str) -> int | str:
        return int(record_id, 16) if _HEX_ID.fullmatch(record_id) else record_id

    def add(self, record_id: str) -> bool:
        """Add ``record_id``; False if it was there already."""
        key = self._key(record_id)
        if key in self._ids:
            return False
        self._ids.add(key)
        return True

    def __contains__(self, record_id: object) -> bool:
        return isinstance(record_id, str) and self._key(record_id) in self._ids


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
        )


def _broker_dead_lettered(body: Any, headers: Mapping[str, Any]) -> DeadLetter:
    """A handler task message the broker itself dead-lettered (x-death names why)."""
    args = body[0] if isinstance(body, list) and body else []
    deaths = headers.get("x-death") or [{}]
    death = deaths[0] if isinstance(deaths, list) and deaths else {}
    why = str(death.get("reason", "rejected")) if isinstance(death, dict) else "rejected"
    task_id = str(headers.get("id") or hashlib.sha1(json.dumps(body).encode()).hexdigest())
    return DeadLetter.from_exception(
        DeadLetterError(
            f"the broker dead-lettered the message ({why}) from "
            f"{death.get('queue', '?') if isinstance(death, dict) else '?'}"
        ),
        id=f"broker-{task_id}",
        handler=str(headers["task"]),
        reason="broker",
        attempts=int(headers.get("retries") or 0) + 1,
        envelope=args[0] if args else None,
        task_id=task_id,
        queue=death.get("queue") if isinstance(death, dict) else None,
    )


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
