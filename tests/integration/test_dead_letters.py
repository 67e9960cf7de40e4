"""Dead letters: what a failed delivery leaves in the DLQ, and replaying it after a fix."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from eventbus import PermanentHandlerError

from .conftest import Env
from .helpers import OrderPlaced, Recorder, assert_stays, wait_for


def _dead_letters(env: Env, count: int = 1) -> list:
    """Wait until the bus's DLQ holds ``count`` records; return them."""
    wait_for(
        lambda: len(env.bus.dead_letters) >= count,
        message=lambda: f"{len(env.bus.dead_letters)}/{count} dead letters",
    )
    return env.bus.dead_letters.list()


def test_exhausted_retries_leave_a_complete_record(env: Env) -> None:
    # Given a handler that always fails, with one retry
    recorder = Recorder()
    name = env.name("always_fails")
    env.bus.subscribe(
        OrderPlaced,
        name=name,
        max_retries=1,
        retry_backoff=1,
        retry_jitter=False,
        handler=recorder.handler(name, fail=lambda call: ValueError("boom")),
    )
    worker = env.start_worker()
    started = datetime.now(UTC)

    # When an event is published
    envelope = env.bus.publish(
        OrderPlaced(order_id="o-42", quantity=3), aggregate_id="o-42", aggregate_type="Order"
    )

    # Then exactly one record lands in the DLQ, after two attempts
    records = _dead_letters(env)
    assert len(records) == 1
    assert_stays(
        lambda: len(env.bus.dead_letters) == 1,
        duration=0.3,
        message=lambda: f"{len(env.bus.dead_letters)} dead letters",
    )
    record = records[0]
    assert recorder.count(name) == 2
    # And it carries the full envelope as it was sent
    assert record.event_id == str(envelope.event_id)
    assert record.event_type == "it.order.placed"
    assert record.envelope is not None
    assert record.envelope["event_id"] == str(envelope.event_id)
    assert record.envelope["event_type"] == "it.order.placed"
    assert record.envelope["data"] == {"order_id": "o-42", "quantity": 3}
    assert record.envelope["aggregate_id"] == "o-42"
    # And what failed, where, how often and why
    assert record.handler == name
    assert record.task_id
    assert record.attempts == 2
    assert record.exception_type.endswith("ValueError")
    assert record.exception_message == "boom"
    assert record.traceback and "boom" in record.traceback
    assert "ValueError" in record.traceback
    # (a `celery worker` process reports its node name, "celery@host"; the embedded
    # test worker skips that setup and Celery reports the bare host name)
    assert record.worker
    assert record.worker.rpartition("@")[2] == worker.hostname.rpartition("@")[2]
    assert record.queue == env.queue
    assert started - timedelta(seconds=1) <= record.failed_at <= datetime.now(UTC)
    assert record.reason == "retries_exhausted"
    assert record.replayable
    # And listing does not consume: the record is still there, twice over
    assert [r.id for r in env.bus.dead_letters.list()] == [record.id]
    assert len(env.bus.dead_letters) == 1
    assert [r.id for r in env.bus.dead_letters.list()] == [record.id]
    assert len(env.bus.dead_letters) == 1
    assert env.bus.dead_letters.get(record.id[:8]).id == record.id
    assert env.bus.dead_letters.groups() == {(name, "ValueError"): 1}


def test_permanent_error_is_dead_lettered_without_retry(env: Env) -> None:
    # Given a handler raising PermanentHandlerError, with retries configured
    recorder = Recorder()
    name = env.name("refuses")
    env.bus.subscribe(
        OrderPlaced,
        name=name,
        max_retries=2,
        retry_backoff=1,
        retry_jitter=False,
        handler=recorder.handler(name, fail=lambda call: PermanentHandlerError("bad order")),
    )
    env.start_worker()

    # When an event is published
    envelope = env.bus.publish(OrderPlaced(order_id="o-7", quantity=1))

    # Then it goes to the DLQ after one attempt, marked permanent
    [record] = _dead_letters(env)
    assert record.event_id == str(envelope.event_id)
    assert record.attempts == 1
    assert record.reason == "permanent_error"
    assert record.exception_type == "eventbus.errors.PermanentHandlerError"
    assert record.exception_message == "bad order"
    # And the handler is not retried (a retry would come after ~1 s)
    assert_stays(
        lambda: recorder.count(name) == 1,
        duration=1.5,
        message=lambda: f"{recorder.count(name)} attempts",
    )
    assert len(env.bus.dead_letters) == 1


def _failing_while(broken: dict[str, bool], recorder: Recorder, name: str) -> Callable:
    return recorder.handler(
        name, fail=lambda call: RuntimeError("index offline") if broken["yes"] else None
    )


def test_replay_after_fix_delivers_the_same_event_to_the_failed_handler(env: Env) -> None:
    # Given a handler that fails while a flag is set, and a healthy one on the same event
    recorder = Recorder()
    broken = {"yes": True}
    flaky, healthy = env.name("indexer"), env.name("healthy")
    env.bus.subscribe(
        OrderPlaced, name=flaky, max_retries=0, handler=_failing_while(broken, recorder, flaky)
    )
    env.bus.subscribe(OrderPlaced, name=healthy, handler=recorder.handler(healthy))
    env.start_worker()
    envelope = env.bus.publish(OrderPlaced(order_id="o-1", quantity=1))
    [record] = _dead_letters(env)
    assert record.handler == flaky
    # (the healthy handler's message is behind the failed one's on the queue)
    wait_for(lambda: recorder.count(healthy) == 1, message="the healthy handler's run")

    # When the fix is deployed and the record is replayed
    broken["yes"] = False
    sent = env.bus.dead_letters.replay(record.id)

    # Then the failed handler runs again, successfully, with the same event id
    wait_for(
        lambda: recorder.count(flaky) >= 2,
        message=lambda: f"{recorder.count(flaky)}/2 runs of the fixed handler",
    )
    rerun = recorder.calls(flaky)[-1]
    assert sent.event_id == envelope.event_id
    assert rerun.event_id == str(envelope.event_id)
    assert rerun.envelope.data == envelope.data
    assert rerun.envelope.metadata["eventbus_replays"] == 1
    assert rerun.envelope.metadata["eventbus_dead_letter_id"] == record.id
    # And the DLQ is empty, and the other subscriber did not get the event again
    assert len(env.bus.dead_letters) == 0
    assert env.bus.dead_letters.list() == []
    assert_stays(
        lambda: recorder.count(healthy) == 1 and recorder.count(flaky) == 2,
        duration=0.5,
        message=lambda: f"runs: {recorder.pairs()}",
    )


def test_replay_all_redelivers_every_record(env: Env) -> None:
    # Given three events dead-lettered by a broken handler
    recorder = Recorder()
    broken = {"yes": True}
    name = env.name("indexer")
    env.bus.subscribe(
        OrderPlaced, name=name, max_retries=0, handler=_failing_while(broken, recorder, name)
    )
    env.start_worker()
    envelopes = [env.bus.publish(OrderPlaced(order_id=f"o-{i}", quantity=1)) for i in range(3)]
    records = _dead_letters(env, 3)
    assert {r.event_id for r in records} == {str(e.event_id) for e in envelopes}

    # When the fix is deployed and everything is replayed
    broken["yes"] = False
    replayed = env.bus.dead_letters.replay_all(handler=name)

    # Then each event runs once more, successfully, and the DLQ is empty
    assert replayed == 3
    wait_for(lambda: recorder.count(name) >= 6, message=lambda: f"{recorder.count(name)}/6 runs")
    reruns = [c for c in recorder.calls(name) if c.envelope.metadata.get("eventbus_replays")]
    assert sorted(c.event_id for c in reruns) == sorted(str(e.event_id) for e in envelopes)
    assert {c.envelope.metadata["eventbus_replays"] for c in reruns} == {1}
    assert len(env.bus.dead_letters) == 0
    assert_stays(
        lambda: recorder.count(name) == 6,
        duration=0.5,
        message=lambda: f"{recorder.count(name)} runs",
    )


def test_failure_is_dead_lettered_only_by_the_bus_that_owns_the_task(make_env) -> None:
    # Given two apps in one process, each with its own bus, DLQ and a handler of the same name
    first, second = make_env("owner1"), make_env("owner2")
    shared_name = f"it.{first.uid}.same_name"
    recorder = Recorder()
    first.bus.subscribe(OrderPlaced, name=shared_name, handler=recorder.handler("first"))
    second.bus.subscribe(
        OrderPlaced,
        name=shared_name,
        max_retries=0,
        handler=recorder.handler("second", fail=lambda c: ValueError("boom")),
    )
    second.start_worker()

    # When the second app's handler fails
    second.bus.publish(OrderPlaced(order_id="o-1", quantity=1))

    # Then the failure is in the second bus's DLQ, and not in the first's
    [record] = _dead_letters(second)
    assert record.handler == shared_name
    assert len(first.bus.dead_letters) == 0


def test_a_dead_letter_that_cannot_be_written_requeues_the_message(
    env: Env, monkeypatch: Any
) -> None:
    # Given a handler that fails permanently, and a DLQ whose first write fails
    # (the broker went away for a moment)
    import eventbus.celery.worker
    from eventbus import DeadLetterError

    monkeypatch.setattr(eventbus.celery.worker, "REQUEUE_PAUSE", 0.05)
    store = env.bus.dead_letter_store
    real_append = store.append
    failures = [DeadLetterError("connection reset")]

    def flaky_append(record: Any, **options: Any) -> None:
        if failures:
            raise failures.pop()
        real_append(record, **options)

    monkeypatch.setattr(store, "append", flaky_append)
    recorder = Recorder()
    name = env.name("picky")
    env.bus.subscribe(
        OrderPlaced,
        name=name,
        handler=recorder.handler(name, fail=lambda call: PermanentHandlerError("bad order")),
    )
    env.start_worker()
    # When an event fails
    env.bus.publish(OrderPlaced(order_id="o-7", quantity=1))
    # Then the unwritten record did not ack the message: it ran again, and then
    # exactly one record was written
    [record] = _dead_letters(env)
    assert recorder.count(name) == 2
    assert record.reason == "permanent_error"
    assert_stays(lambda: len(env.bus.dead_letters) == 1, duration=0.3)


def test_a_dead_letter_written_again_after_a_lost_answer_is_one_record(
    env: Env, monkeypatch: Any
) -> None:
    # Given a handler that fails permanently, and a DLQ whose first write goes
    # through but whose answer is lost (the connection broke right after it)
    import eventbus.celery.worker
    from eventbus import DeadLetterError

    monkeypatch.setattr(eventbus.celery.worker, "REQUEUE_PAUSE", 0.05)
    store = env.bus.dead_letter_store
    real_append = store.append
    answers_lost = [DeadLetterError("connection reset by peer after the write")]

    def append_losing_the_answer(record: Any, **options: Any) -> None:
        real_append(record, **options)
        if answers_lost:
            raise answers_lost.pop()

    monkeypatch.setattr(store, "append", append_losing_the_answer)
    recorder = Recorder()
    name = env.name("picky")
    env.bus.subscribe(
        OrderPlaced,
        name=name,
        handler=recorder.handler(name, fail=lambda call: PermanentHandlerError("bad order")),
    )
    env.start_worker()

    # When an event fails: the worker, told the write failed, re-queues the
    # message, and the handler fails a second time on the same delivery
    envelope = env.bus.publish(OrderPlaced(order_id="o-7", quantity=1))
    wait_for(lambda: recorder.count(name) == 2, message=lambda: f"{recorder.count(name)}/2 runs")

    # Then the failed delivery is one record, not two
    wait_for(lambda: env.queue_length() == 0, message="the handler queue drained")
    [record] = _dead_letters(env)
    assert_stays(
        lambda: len(env.bus.dead_letters) == 1,
        duration=0.5,
        message=lambda: f"{len(env.bus.dead_letters)} records of one failed delivery",
    )
    assert record.event_id == str(envelope.event_id)
    assert record.attempts == 1
    assert record.reason == "permanent_error"


def test_the_same_failure_appended_twice_is_one_record(env: Env) -> None:
    # Given the record of one failed delivery
    name = env.name("h")
    env.bus.subscribe(OrderPlaced, name=name, handler=lambda e: None)
    store = env.bus.dead_letter_store
    from eventbus import DeadLetter

    record = DeadLetter(
        id="5d8e1c0a9b7f4e3d8c2b1a0f9e8d7c6b",
        handler=name,
        reason="retries_exhausted",
        attempts=3,
        exception_type="ValueError",
        exception_message="boom",
        task_id="0a1b2c3d",
    )

    # When it is appended, then appended again as a write that may repeat an
    # earlier one (after a lost answer, or for a message delivered again)
    store.append(record)
    store.append(record, again=True)

    # Then the DLQ holds it once
    assert [r.id for r in env.bus.dead_letters.list()] == [record.id]
    assert len(env.bus.dead_letters) == 1
