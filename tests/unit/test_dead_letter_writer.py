"""The worker's dead-letter writer, and the handler task Request that waits for it (no broker).

The fault tests (``tests/faults/test_dead_letters_under_faults.py``) run the
same against real brokers and prefork workers; these pin the rules one by one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Reject, TimeLimitExceeded
from celery.worker.request import Request as CeleryRequest

from eventbus import DeadLetter, DeadLetterError, EventBus
from eventbus.celery.dead_letter_before_ack import reported_by_request, request_class
from eventbus.celery.dead_letter_writer import DeadLetterWriter, delivery_record_id
from eventbus.deadletter.memory import InMemoryDeadLetterStore
from tests.contract.events import ItemAdded
from tests.support import wait_for


def record(n: int = 0) -> DeadLetter:
    return DeadLetter(
        id=delivery_record_id("h", f"task-{n}", 1),
        handler="h",
        reason="time_limit",
        attempts=1,
        exception_type="TimeLimitExceeded",
        exception_message="TimeLimitExceeded(2,)",
        task_id=f"task-{n}",
    )


class FlakyStore(InMemoryDeadLetterStore):
    """A store whose writes fail while ``broken`` is set; counts every try."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = threading.Event()
        self.tries = 0

    def append(self, record: DeadLetter, *, again: bool = False) -> None:
        self.tries += 1
        if self.broken.is_set():
            raise DeadLetterError("the broker is gone")
        super().append(record, again=again)


class Loop:
    """Stands in for the event loop: runs what the writer hands it, and says where."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.threads: set[str] = set()

    def call_soon(self, callback: Any) -> None:
        self.threads.add(threading.current_thread().name)
        callback()

    def settle(self, label: str) -> Any:
        return lambda: self.ran.append(label)


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def writer(store: FlakyStore) -> Iterator[DeadLetterWriter]:
    writer = DeadLetterWriter(lambda: store, patience=30, retry_first=0.01, retry_max=0.02)
    yield writer
    writer.stop()


def test_a_record_id_names_one_failed_delivery() -> None:
    assert delivery_record_id("h", "t1", 1) == delivery_record_id("h", "t1", 1)
    assert len({delivery_record_id("h", "t1", 1), delivery_record_id("h", "t1", 2)}) == 2
    assert delivery_record_id("h", "t1", 1) != delivery_record_id("g", "t1", 1)
    assert len(delivery_record_id("h", "t1", 1)) == 32  # as a uuid4().hex record id


def test_the_message_is_settled_only_after_the_record_is_written(
    writer: DeadLetterWriter, store: FlakyStore
) -> None:
    loop = Loop()
    writer.bind(loop.call_soon)
    store.broken.set()
    writer.submit(record(), written=loop.settle("ack"), given_up=loop.settle("requeue"))
    wait_for(lambda: store.tries >= 3, message=lambda: f"{store.tries} tries")
    assert loop.ran == [] and store.count() == 0  # still pending: not acked

    store.broken.clear()
    wait_for(lambda: loop.ran == ["ack"], message=lambda: f"settled: {loop.ran}")
    assert [r.id for r in store] == [record().id]
    assert loop.threads == {"eventbus-dead-letter-writer"}  # handed over, never run inline


def test_failing_writes_are_logged_once_and_their_recovery_once(
    writer: DeadLetterWriter, store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    loop = Loop()
    writer.bind(loop.call_soon)
    store.broken.set()
    with caplog.at_level(logging.DEBUG, logger="eventbus.celery.dead_letter_writer"):
        for n in range(3):
            writer.submit(record(n), written=loop.settle(f"ack{n}"), given_up=loop.settle("x"))
        wait_for(lambda: store.tries >= 12, message=lambda: f"{store.tries} tries")
        store.broken.clear()
        wait_for(lambda: len(loop.ran) == 3, message=lambda: f"settled: {loop.ran}")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert "not written yet" in warnings[0] and "stays unacknowledged" in warnings[0]
    assert "work again" in warnings[1]
    assert not any(r.exc_info for r in caplog.records)  # no traceback per try
    assert sorted(loop.ran) == ["ack0", "ack1", "ack2"]


def test_a_write_that_never_succeeds_is_given_up_and_its_message_requeued(
    store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    loop = Loop()
    writer = DeadLetterWriter(lambda: store, patience=0.05, retry_first=0.01, retry_max=0.01)
    writer.bind(loop.call_soon)
    store.broken.set()
    try:
        writer.submit(record(), written=loop.settle("ack"), given_up=loop.settle("requeue"))
        wait_for(lambda: loop.ran == ["requeue"], message=lambda: f"settled: {loop.ran}")
    finally:
        writer.stop()
    assert writer.pending == 0
    [given_up] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "goes back to its queue" in given_up


def test_one_failed_delivery_reported_twice_is_written_once(
    writer: DeadLetterWriter, store: FlakyStore
) -> None:
    loop = Loop()
    writer.bind(loop.call_soon)
    store.broken.set()
    announced: list[str] = []  # what dead_letter_written would send (metrics count it)

    def submit(label: str) -> None:
        writer.submit(
            record(),
            written=loop.settle(label),
            given_up=loop.settle("x"),
            on_written=lambda: announced.append(label),
        )

    # reported twice while pending (a hard time limit; a redelivery)
    submit("first")
    submit("second")
    store.broken.clear()
    wait_for(lambda: len(loop.ran) == 2, message=lambda: f"settled: {loop.ran}")
    # and once more after it was written (its message came back)
    submit("third")
    wait_for(lambda: len(loop.ran) == 3, message=lambda: f"settled: {loop.ran}")
    assert sorted(loop.ran) == ["first", "second", "third"]
    assert store.count() == 1
    # announced once: the write
    assert announced == ["first"]


class AppRequest:
    """An app's own Request (as Django's or Flask's Task class may have), reporting like Celery.

    ``on_failure`` acks and reports the failure (Celery's ``task_failure``,
    whose eventbus receiver calls ``reported_by_request``); ``on_timeout`` too.
    """

    def __init__(self, task: Any, *, requeue_on_timeout: bool = False) -> None:
        self.task = task
        self.id = "task-0"
        self.args = [{"event_id": "e-1", "event_type": "t"}]
        self.request_dict = {"retries": 0}
        self.delivery_info = {"routing_key": "q"}
        self.hostname = "w@h"
        self.connection_errors = ()  # (Celery: a property over its _connection_errors)
        self.settled: list[str] = []
        self.requeue_on_timeout = requeue_on_timeout
        self.reported = 0

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        self._report(exc_info.exception)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        self._report(TimeLimitExceeded(timeout))

    def _report(self, exc: BaseException) -> None:
        if not return_ok_for(exc):
            reported_by_request(self.task, exc, None)
            self.reported += 1
        if self.requeue_on_timeout:
            self.reject(requeue=True)
        else:
            self.acknowledge()

    def acknowledge(self) -> None:
        self.settled.append("ack")

    def reject(self, requeue: bool = False) -> None:
        self.settled.append("requeue" if requeue else "drop")


def return_ok_for(exc: BaseException) -> bool:
    """In these tests a ValueError stands for a failure its task reported (and recorded)."""
    return isinstance(exc, ValueError)


class Task:
    """Stands in for the handler task a request runs."""

    name = "h"


class Recorder:
    def __init__(self, writer: DeadLetterWriter) -> None:
        self.writer = writer

    def record_of_request(self, request: Any, exception: BaseException, tb: str | None) -> Any:
        return DeadLetter.from_exception(
            exception,
            id=delivery_record_id("h", request.id, 1),
            handler="h",
            reason="time_limit",
            attempts=1,
            envelope=request.args[0],
            task_id=request.id,
        )


class ExcInfo:
    def __init__(self, exc: BaseException) -> None:
        self.exception = exc
        self.traceback = "Traceback: ..."


def test_a_hard_time_limit_reported_twice_is_one_record_acked_after_the_write(
    writer: DeadLetterWriter, store: FlakyStore
) -> None:
    loop = Loop()
    writer.bind(loop.call_soon)
    cls = request_class(AppRequest, Recorder(writer))
    assert issubclass(cls, AppRequest)  # composed with the app's own Request
    request = cls(task=Task())
    store.broken.set()

    # Celery reports a hard time limit twice: on_failure, then on_timeout
    request.on_failure(ExcInfo(TimeLimitExceeded(2)))
    request.on_timeout(False, 2)
    assert request.reported == 2
    assert request.settled == []  # held: nothing acked before the record is written

    store.broken.clear()
    wait_for(lambda: request.settled == ["ack"], message=lambda: f"{request.settled}")
    assert store.count() == 1


def test_a_failure_its_task_recorded_and_a_requeue_are_settled_at_once(
    writer: DeadLetterWriter, store: FlakyStore
) -> None:
    cls = request_class(AppRequest, Recorder(writer))
    recorded_by_its_task = cls(task=Task())
    recorded_by_its_task.on_failure(ExcInfo(ValueError("recorded in the task")))
    assert recorded_by_its_task.settled == ["ack"]

    requeued = cls(task=Task(), requeue_on_timeout=True)
    requeued.on_timeout(False, 2)
    assert requeued.settled == ["requeue"]
    assert store.count() == 0 and writer.pending == 0


def test_a_dropping_reject_is_recorded_then_acked(
    writer: DeadLetterWriter, store: FlakyStore
) -> None:
    class Dropping(AppRequest):
        def on_failure(self, exc_info: Any, *args: Any, **kwargs: Any) -> None:
            reported_by_request(self.task, exc_info.exception, None)
            self.reject(requeue=False)  # Celery: RabbitMQ would dead-letter a second copy

    loop = Loop()
    writer.bind(loop.call_soon)
    request = request_class(Dropping, Recorder(writer))(task=Task())
    request.on_failure(ExcInfo(Reject("no", requeue=False)))
    wait_for(lambda: request.settled == ["ack"], message=lambda: f"{request.settled}")
    assert store.count() == 1


def test_a_retry_celery_could_not_send_is_requeued_not_dead_lettered(
    writer: DeadLetterWriter, store: FlakyStore
) -> None:
    class RetryNotSent(AppRequest):
        def on_failure(self, exc_info: Any, *args: Any, **kwargs: Any) -> None:
            reported_by_request(self.task, exc_info.exception, None)
            self.reject(requeue=False)

    request = request_class(RetryNotSent, Recorder(writer))(task=Task())
    # What Task.retry raises when the broker took no retry
    request.on_failure(ExcInfo(Reject(ConnectionRefusedError(111, "refused"), requeue=False)))
    assert request.settled == ["requeue"]
    assert store.count() == 0


class MyRequest(CeleryRequest):
    """An app's own Request class (a custom Task class may name one)."""


def test_handler_tasks_compose_the_app_tasks_own_request() -> None:
    app = Celery("t", broker="memory://", set_as_current=False)

    class AppTask(app.Task):  # type: ignore[name-defined,misc]
        Request = f"{__name__}:MyRequest"

    app.Task = AppTask
    bus = EventBus(app)

    @bus.subscribe(ItemAdded, name="t.handler")
    def handler(envelope: Any) -> None:
        pass

    [sub] = bus.subscriptions()
    request_cls = sub.task.Request
    assert isinstance(request_cls, type)
    assert issubclass(request_cls, MyRequest)
    assert sub.task.acks_late and sub.task.acks_on_failure and sub.task.acks_on_timeout
