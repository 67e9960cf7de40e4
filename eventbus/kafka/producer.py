"""Records produced to Kafka and acknowledged by the broker, or an error: never a hang.

confluent-kafka's ``Producer.produce`` only queues a record; librdkafka sends
it in the background and reports the outcome later, to a delivery callback
served by ``poll``/``flush``. A caller that returns after ``produce`` has
promised nothing. :class:`KafkaProducer` makes the promise publish needs:

* :meth:`KafkaProducer.send` produces records and returns once the broker
  acknowledged every one of them (``acks=all``: every in-sync replica has it),
  or raises :class:`~eventbus.errors.PublishError` naming the topic, the
  event and the cause;
* the wait is bounded: librdkafka gives up on a record after
  ``delivery_timeout`` seconds (``message.timeout.ms``) and reports it, and
  eventbus stops waiting shortly after that in any case;
* :class:`Deliveries` lets a batch produce many records and wait once.

The producer is idempotent: librdkafka's retries never write a record twice
and one key's records keep their order in their partition. It is made on
first use in each process (a producer does not survive ``fork``: a
pre-forking web server or Celery worker gets one per child), and shared by
the threads of the process. librdkafka is not fork-safe either way: a child
forked while the parent's producer threads hold librdkafka's locks hangs
making its own (seen: one run in two of the fork test, under load). Before
any ``fork`` the parent's producer is therefore flushed and closed
(``os.register_at_fork``); the parent makes a new one at its next publish.
(librdkafka's producer is thread-safe; each waiting thread serves the
callbacks it finds.)

librdkafka's log goes to the ``eventbus.kafka.librdkafka`` logger, not stderr.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from eventbus.errors import ConfigurationError, PublishError
from eventbus.kafka.records import HEADER_EVENT_ID, HEADER_EVENT_TYPE, KafkaRecord, header_values
from eventbus.kafka.settings import KafkaSettings, confluent_kafka_module
from eventbus.redaction import MASK

__all__ = ["DELIVERY_GRACE", "Deliveries", "KafkaProducer"]

# Without confluent-kafka, importing this module (or KafkaEventBus) raises
# MissingDependency, an ImportError that says what to install.
confluent_kafka_module()

logger = logging.getLogger(__name__)
librdkafka_logger = logging.getLogger("eventbus.kafka.librdkafka")

#: Seconds eventbus waits beyond ``delivery_timeout`` for librdkafka's own
#: verdict on a record, before it stops waiting and says it does not know.
DELIVERY_GRACE = 2.0

#: A batch serves delivery reports every this many records it produces.
_POLL_EVERY = 64

#: Longest single ``poll``: a thread whose callback another thread served
#: notices within this (librdkafka wakes a poll at once for its own thread).
_POLL_SLICE = 0.05


@dataclass(eq=False)
class Deliveries:
    """The outcome of records produced together: how many are waited for, what failed.

    Filled by delivery callbacks (in whichever thread serves them); read by
    :meth:`KafkaProducer.wait`. ``failures`` holds ``(what, topic, cause)``.
    """

    produced: int = 0
    acknowledged: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    fatal: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def outstanding(self) -> int:
        return self.produced - self.acknowledged - len(self.failures)

    def on_delivery(self, error: Any, message: Any) -> None:
        """librdkafka's delivery report of one record (one bound method for all of them)."""
        if error is None:
            with self._lock:
                self.acknowledged += 1
            return
        failure = (_what(message.headers()), str(message.topic()), _describe_error(error))
        with self._lock:
            self.failures.append(failure)
            self.fatal = self.fatal or bool(error.fatal())


#: Every producer of this process: each is closed before a fork (see the module docstring).
_PRODUCERS: weakref.WeakSet[KafkaProducer] = weakref.WeakSet()


def _close_before_fork() -> None:
    # A librdkafka client (a producer or a consumer) only garbage in a
    # reference cycle would be freed in the child, where its destroy hangs:
    # free it here, in the parent, where its threads still run.
    gc.collect()
    for producer in list(_PRODUCERS):
        producer.close_before_fork()


#: Forks this process came through (a child's producers are its parent's: never used).
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(before=_close_before_fork, after_in_child=_count_fork)


class KafkaProducer:
    """An idempotent ``acks=all`` producer whose :meth:`send` returns once the broker has it.

    ``settings`` say where the cluster is (:class:`~eventbus.kafka.KafkaSettings`).
    Close it with :meth:`close` (or use it as a context manager) to wait for
    anything still in flight.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        if not isinstance(settings, KafkaSettings):
            raise ConfigurationError(
                f"KafkaProducer takes KafkaSettings, got {type(settings).__name__}"
            )
        self.settings = settings
        self._confluent = confluent_kafka_module()
        self._client: Any = None
        self._forks = _forks
        self._lock = threading.Lock()
        # (A producer does not survive fork: a child process makes its own.)
        _PRODUCERS.add(self)

    def __repr__(self) -> str:
        return f"KafkaProducer({self.settings.describe()})"

    def __enter__(self) -> KafkaProducer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the librdkafka client -------------------------------------------------

    def client(self) -> Any:
        """This process's ``confluent_kafka.Producer`` (made on first use, again after fork)."""
        client = self._client
        if client is not None and self._made_here():
            return client
        with self._lock:
            if self._client is None or not self._made_here():
                config = {**self.settings.producer_config(), "logger": librdkafka_logger}
                try:
                    self._client = self._confluent.Producer(config)
                except self._confluent.KafkaException as exc:
                    raise ConfigurationError(
                        f"Kafka producer settings refused: {self._masked(exc)} "
                        f"({self.settings.describe()})"
                    ) from None
                self._forks = _forks
            return self._client

    def _made_here(self) -> bool:
        """Whether the client was made in this process (no fork since).

        A fork count, not ``os.getpid()``: that is a system call per record,
        several microseconds under load.
        """
        return self._forks == _forks

    def _discard_client(self, client: Any) -> None:
        """Drop a producer in a fatal state (idempotence lost): the next send makes a new one."""
        with self._lock:
            if self._client is client:
                self._client = None

    # -- sending -------------------------------------------------------------

    def send(self, records: Iterable[KafkaRecord]) -> None:
        """Produce ``records`` and return once the broker acknowledged all of them.

        Raises :class:`~eventbus.errors.PublishError` when any was not
        acknowledged within ``delivery_timeout`` (any of the others may have
        been written: sending them again is at-least-once).
        """
        deliveries = Deliveries()
        for record in records:
            self.produce(record, deliveries)
        self.wait(deliveries)

    def produce(self, record: KafkaRecord, deliveries: Deliveries) -> None:
        """Queue one record, its outcome counted in ``deliveries``; does not wait for it.

        Raises :class:`~eventbus.errors.PublishError` when librdkafka refuses it
        outright (too large, its local queue full for longer than the timeout).
        """
        client = self.client()
        deadline: float | None = None
        while True:
            try:
                client.produce(
                    record.topic,
                    value=record.value,
                    key=record.key,
                    headers=record.headers,
                    on_delivery=deliveries.on_delivery,
                )
                break
            except BufferError:
                # librdkafka's local queue is full (queue.buffering.max.*):
                # serve callbacks, which frees it, until the timeout.
                now = time.monotonic()
                deadline = deadline or now + self.settings.delivery_timeout
                if now >= deadline:
                    raise PublishError(
                        f"could not publish {_what(record.headers)} to Kafka topic "
                        f"{record.topic!r}: the producer's local queue stayed full for "
                        f"{self.settings.delivery_timeout}s "
                        f"(brokers {self.settings.bootstrap_servers})"
                    ) from None
                client.poll(_POLL_SLICE)
            except self._confluent.KafkaException as exc:
                raise PublishError(
                    f"could not publish {_what(record.headers)} to Kafka topic "
                    f"{record.topic!r}: {_describe_error(exc.args[0] if exc.args else exc)}"
                ) from None
        deliveries.produced += 1
        if deliveries.produced % _POLL_EVERY == 0:
            # Serve the reports due already, now and then: librdkafka queues
            # them until served (a poll per record costs more than the produce).
            client.poll(0)

    def wait(self, deliveries: Deliveries, timeout: float | None = None) -> None:
        """Wait until every record of ``deliveries`` was acknowledged; else PublishError.

        ``timeout`` defaults to ``delivery_timeout`` plus :data:`DELIVERY_GRACE`:
        librdkafka reports each record by its ``delivery_timeout`` at the latest.
        """
        if deliveries.produced == 0:
            return  # (an empty batch: nothing to wait for, no producer to make)
        client = self.client()
        limit = self.settings.delivery_timeout + DELIVERY_GRACE if timeout is None else timeout
        deadline = time.monotonic() + limit
        while deliveries.outstanding > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            client.poll(min(remaining, _POLL_SLICE))
        if deliveries.fatal:
            self._discard_client(client)
        failures = list(deliveries.failures)
        outstanding = deliveries.outstanding
        if not failures and outstanding <= 0:
            return
        if failures:
            what, topic, cause = failures[0]
            more = f" (and {len(failures) - 1} more record(s))" if len(failures) > 1 else ""
            message = f"could not publish {what} to Kafka topic {topic!r}: {cause}{more}"
        else:
            message = "no acknowledgement from Kafka"
        if outstanding > 0:
            message += (
                f"; {outstanding} record(s) still unacknowledged after {limit:g}s "
                "(they may yet be written)"
            )
        raise PublishError(
            f"{message} (brokers {self.settings.bootstrap_servers}; "
            f"{deliveries.acknowledged} of {deliveries.produced} acknowledged)"
        )

    def close(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` (default ``delivery_timeout``) for records in flight.

        Returns how many were still not delivered (0: none left).
        """
        with self._lock:
            client, self._client = self._client, None
        if client is None or not self._made_here():
            return 0
        return int(client.flush(self.settings.delivery_timeout if timeout is None else timeout))

    def close_before_fork(self) -> None:
        """Flush and close this process's librdkafka client: a fork is about to happen.

        Its threads end with it, so no lock of theirs is held in the child;
        records in flight are delivered first (up to ``delivery_timeout``).
        A failure here must not stop the fork: it is logged.
        """
        if self._client is None or not self._made_here():
            return
        try:
            left = self.close()
        except Exception:
            logger.exception("the Kafka producer could not be closed before a fork")
            return
        if left:
            logger.warning("%d record(s) to Kafka were still in flight at a fork", left)

    def _masked(self, exc: BaseException) -> str:
        # librdkafka quotes the setting it refused, rarely its value: mask any
        # secret it might have echoed.
        text = str(exc)
        for value in self.settings.security.values():
            if isinstance(value, str) and len(value) >= 4:
                text = text.replace(value, MASK)
        return text


def _what(headers: Any) -> str:
    """``event_type event_id`` of a record (from its headers), for error messages."""
    values = header_values(headers)
    event_type = values.get(HEADER_EVENT_TYPE)
    if event_type is None:
        return "a record"
    return f"{event_type} {values.get(HEADER_EVENT_ID, '')}".rstrip()


def _describe_error(error: Any) -> str:
    """A librdkafka ``KafkaError`` as ``NAME: text``, with a hint for the usual ones."""
    name = getattr(error, "name", None)
    text = getattr(error, "str", None)
    if not callable(name) or not callable(text):
        return str(error)
    described = f"{name()}: {text()}"
    if name() == "_MSG_TIMED_OUT":
        described += " (no acknowledgement within delivery_timeout: are the brokers up?)"
    return described
