"""Dead-letter replay in batches, on real brokers: a chunk of records is sent together.

A replay publishes its selected records in chunks (``store.REPLAY_CHUNK``),
each inside one ``bus.batch()``, and removes a chunk's records only after
that batch was sent (Redis) or confirmed (RabbitMQ). What a user sees: a
chunk whose sending failed keeps every one of its records, each reported;
the other chunks are replayed; a record that cannot be replayed is kept on
its own and does not spoil its chunk.

The faults are injected where the broker's answer arrives: on Redis the
pipeline of a batch runs and then raises (its outcome unknown, as kombu
reports a failed flush); on RabbitMQ the broker confirms and the wait then
reports a nack. Either way the messages may have been delivered: a failed
chunk is replayed again later (at-least-once).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from kombu.transport.redis import PublishBatch

import eventbus.celery.internals.confirms
from eventbus import DeadLetter, Envelope, ReplayError
from eventbus.celery.internals import compat
from eventbus.celery.internals.confirms import PublishNotConfirmed
from eventbus.deadletter.store import REPLAY_CHUNK
from eventbus.errors import ReplayConflict
from tests.support import run_concurrently

from .conftest import Env
from .helpers import OrderPlaced, Recorder, wait_for
from .test_dlq_store import listed_eventually, record_for
from .test_publish_confirms import close_pooled_connection, trace_wire


def fail_batches(env: Env, monkeypatch: pytest.MonkeyPatch, which: Callable[[int], bool]) -> None:
    """Make the n-th batch of the replay fail after sending, for each n that ``which`` accepts.

    Redis: the batch's pipeline runs, then its connection is lost before
    the reply (kombu marks the batch failed, delivery uncertain). RabbitMQ:
    the broker confirms the batch, then the wait reports a nack. One replay
    chunk is one non-empty flush, or one confirm wait.
    """
    batches = 0
    if env.kind == "redis":
        flush = PublishBatch.flush

        def failing_flush(self: PublishBatch) -> None:
            nonlocal batches
            if self._buffered:
                batches += 1
                if which(batches):
                    execute = self.pipeline.execute

                    def lost_reply() -> Any:
                        execute()
                        raise redis.ConnectionError("test: connection lost after the pipeline")

                    self.pipeline.execute = lost_reply  # kombu's flush turns it into its error
            flush(self)

        monkeypatch.setattr(PublishBatch, "flush", failing_flush)
        return
    confirms = eventbus.celery.internals.confirms
    if not compat.optimizations_on(env.app.conf):
        # Celery's stock path: py-amqp confirms each message; a chunk is one block.
        each = confirms.confirmed_each

        @contextmanager
        def failing_each(channel: Any, **kwargs: Any) -> Iterator[None]:
            nonlocal batches
            with each(channel, **kwargs):
                yield
            batches += 1
            if which(batches):
                raise PublishNotConfirmed("test: the broker nacked a message")

        monkeypatch.setattr(confirms, "confirmed_each", failing_each)
        return
    wait = confirms._wait

    def failing_wait(channel: Any, tags: Any, mine: list[int], timeout: float) -> None:
        nonlocal batches
        wait(channel, tags, mine, timeout)
        batches += 1
        if which(batches):
            raise PublishNotConfirmed(f"test: the broker nacked {len(mine)} message(s)")

    monkeypatch.setattr(eventbus.celery.internals.confirms, "_wait", failing_wait)


def fill(env: Env, handler: str, n: int) -> list[DeadLetter]:
    records = [record_for(env, handler, i) for i in range(n)]
    store = env.bus.dead_letter_store
    for record in records:
        store.append(record)
    return records


def claim_keys(env: Env) -> list[bytes]:
    """Redis claim keys of this test's DLQ still set (none on RabbitMQ)."""
    if env.kind != "redis":
        return []
    with env.connection() as conn:
        client = conn.default_channel.client
        return list(client.scan_iter(match=f"eventbus.dlq-claim:{env.dead_letter_queue}:*"))


def replay_each(env: Env) -> tuple[int, dict[str, Envelope[Any] | ReplayError]]:
    outcomes: dict[str, Envelope[Any] | ReplayError] = {}

    def report(record: DeadLetter, outcome: Envelope[Any] | ReplayError) -> None:
        assert record.id not in outcomes, f"{record.id} reported twice"
        outcomes[record.id] = outcome

    return env.bus.dead_letters.replay_each(lambda r: True, report), outcomes


def test_a_batch_that_fails_keeps_every_record(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given 30 dead letters (one chunk), and a broker whose answer to the batch is a failure
    name = env.name("h")
    env.bus.subscribe(OrderPlaced, name=name, handler=lambda e: None)
    records = fill(env, name, 30)
    close_pooled_connection(env.app)
    fail_batches(env, monkeypatch, lambda n: True)

    # When everything is replayed
    with pytest.raises(ReplayError, match="replayed 0; 30 record") as raised:
        env.bus.dead_letters.replay_all()

    # Then no record was removed, the error says why, and no claim is left behind
    assert "batch of 30 record(s) failed" in str(raised.value)
    listed_eventually(env, [r.id for r in records])
    assert claim_keys(env) == []

    # And replay_each reports each of them as kept, with the batch's error
    replayed, outcomes = replay_each(env)
    assert replayed == 0
    assert set(outcomes) == {r.id for r in records}
    assert all(isinstance(o, ReplayError) for o in outcomes.values())
    listed_eventually(env, [r.id for r in records])

    # When the broker is well again, a replay sends them all and empties the DLQ
    monkeypatch.undo()
    assert env.bus.dead_letters.replay_all() == 30
    listed_eventually(env, [])
    # (The failed batches were delivered all the same: at-least-once, 3 x 30 messages.)
    wait_for(lambda: env.queue_length() == 90, message=lambda: f"{env.queue_length()} queued")


def test_a_failed_chunk_keeps_its_records_and_the_other_chunks_go(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given more dead letters than two chunks, and a broker that fails the second batch
    name = env.name("h")
    env.bus.subscribe(OrderPlaced, name=name, handler=lambda e: None)
    n = 2 * REPLAY_CHUNK + 200
    records = fill(env, name, n)
    close_pooled_connection(env.app)
    fail_batches(env, monkeypatch, lambda batch: batch == 2)

    # When every record is replayed, reporting each
    replayed, outcomes = replay_each(env)

    # Then the first and the last chunk were replayed and removed; the second
    # chunk's records are all kept, in their order, each reported as kept
    second = {r.id for r in records[REPLAY_CHUNK : 2 * REPLAY_CHUNK]}
    assert replayed == n - REPLAY_CHUNK
    assert len(outcomes) == n
    assert {i for i, o in outcomes.items() if isinstance(o, ReplayError)} == second
    sent = {i: o for i, o in outcomes.items() if not isinstance(o, ReplayError)}
    assert {str(o.event_id) for o in sent.values()} == {
        r.event_id for r in records if r.id not in second
    }
    listed_eventually(env, [r.id for r in records if r.id in second])
    assert claim_keys(env) == []


def test_a_bad_record_in_a_chunk_is_kept_and_the_others_are_replayed(env: Env) -> None:
    # Given 20 dead letters of a running handler, three of them not replayable:
    # a handler this bus does not have, data its schema refuses, no envelope at all
    recorder = Recorder()
    name = env.name("h")
    env.bus.subscribe(OrderPlaced, name=name, handler=recorder.handler(name))
    env.start_worker()
    records = [record_for(env, name, i) for i in range(20)]
    records[5] = record_for(env, env.name("gone"), 5)
    assert records[9].envelope is not None
    records[9].envelope["data"]["quantity"] = 0
    records[14] = DeadLetter(
        handler=name,
        reason="undecodable",
        attempts=1,
        exception_type="EnvelopeDecodeError",
        exception_message="not JSON",
        raw_body="%%%",
    )
    store = env.bus.dead_letter_store
    for record in records:
        store.append(record)
    bad = {records[i].id for i in (5, 9, 14)}

    # When everything is replayed
    replayed, outcomes = replay_each(env)

    # Then the 17 good ones went in one batch, the three bad ones were kept, each with its reason
    assert replayed == 17
    kept = {i: o for i, o in outcomes.items() if isinstance(o, ReplayError)}
    assert set(kept) == bad
    assert "not subscribed" in str(kept[records[5].id])
    assert "quantity" in str(kept[records[9].id])
    assert "no decodable envelope" in str(kept[records[14].id])
    listed_eventually(env, [records[i].id for i in (5, 9, 14)])
    assert claim_keys(env) == []

    # And the handler ran each good event once, under its own event id, marked as a replay
    good = [r for r in records if r.id not in bad]
    wait_for(lambda: recorder.count(name) == 17, message=lambda: f"{recorder.count(name)}/17 runs")
    calls = recorder.calls(name)
    assert sorted(c.event_id for c in calls) == sorted(str(r.event_id) for r in good)
    assert {c.envelope.metadata["eventbus_replays"] for c in calls} == {1}
    assert all("eventbus_replayed_at" in c.envelope.metadata for c in calls)


def test_concurrent_replays_across_chunks_publish_each_record_once(env: Env) -> None:
    # Given more dead letters than two chunks
    name = env.name("h")
    env.bus.subscribe(OrderPlaced, name=name, handler=lambda e: None)
    n = 2 * REPLAY_CHUNK + 100
    fill(env, name, n)
    counts: Counter[str] = Counter()
    kept: list[ReplayError] = []

    def replay() -> None:
        def report(record: DeadLetter, outcome: Envelope[Any] | ReplayError) -> None:
            # A record another operator holds is theirs to replay, not kept.
            if isinstance(outcome, ReplayError) and not isinstance(outcome, ReplayConflict):
                kept.append(outcome)

        me = threading.current_thread().name
        counts[me] += env.bus.dead_letters.replay_each(lambda r: True, report)

    # When three operators replay all of them at the same time
    run_concurrently(replay, 3, timeout=120)

    # Then together they replayed each record once: n messages, an empty DLQ
    assert not kept
    assert sum(counts.values()) == n
    wait_for(lambda: env.queue_length() == n, message=lambda: f"{env.queue_length()}/{n} queued")
    listed_eventually(env, [])
    assert claim_keys(env) == []


def test_a_replay_running_while_another_removes_records_misses_none(env: Env) -> None:
    if env.kind != "redis":
        pytest.skip("RabbitMQ: a browse holds its messages, no other replay removes them meanwhile")
    # Given two failure groups interleaved over more than two chunks
    a, b = env.name("a"), env.name("b")
    env.bus.subscribe(OrderPlaced, name=a, handler=lambda e: None)
    env.bus.subscribe(OrderPlaced, name=b, handler=lambda e: None)
    records = [record_for(env, a if n % 2 else b, n) for n in range(2 * REPLAY_CHUNK + 100)]
    store = env.bus.dead_letter_store
    for record in records:
        store.append(record)
    of_a = [r.id for r in records if r.handler == a]
    of_b = [r.id for r in records if r.handler == b]
    replayed_b: list[int] = []

    def replay_b() -> None:
        replayed_b.append(env.bus.dead_letters.replay_all(handler=b))

    def report(record: DeadLetter, outcome: Envelope[Any] | ReplayError) -> None:
        # While the first chunk of a is being sent, another operator replays
        # all of b: records behind and ahead of this replay leave the DLQ.
        if not replayed_b:
            run_concurrently(replay_b, 1, timeout=60)

    # When every record of a is replayed meanwhile
    replayed_a = env.bus.dead_letters.replay_each(lambda r: r.handler == a, report)

    # Then each operator replayed every record of its group, and the DLQ is empty
    assert replayed_b == [len(of_b)]
    assert replayed_a == len(of_a)
    n = len(records)
    wait_for(lambda: env.queue_length() == n, message=lambda: f"{env.queue_length()}/{n} queued")
    listed_eventually(env, [])
    assert claim_keys(env) == []


@pytest.mark.optimization
@pytest.mark.rabbitmq
def test_a_rabbitmq_replay_waits_for_confirms_once_per_chunk(
    rabbitmq_env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = rabbitmq_env
    # Given 40 dead letters (one chunk), on a bus that has not published yet
    name = env.name("h")
    env.bus.subscribe(OrderPlaced, name=name, handler=lambda e: None)
    fill(env, name, 40)
    close_pooled_connection(env.app)
    trace = trace_wire(monkeypatch)

    # When they are replayed
    assert env.bus.dead_letters.replay_all() == 40

    # Then the 40 messages and their task-sent events (one message: a batch
    # sends them 100 to a message) went out before the one wait for their
    # confirms (the monitor events of the replay follow it)
    first_wait = trace.index("wait")
    assert trace[:first_wait] == ["publish"] * 41
    after = trace[first_wait:]
    waits = next((i for i, step in enumerate(after) if step != "wait"), len(after))
    assert "wait" not in after[waits:]
    listed_eventually(env, [])
