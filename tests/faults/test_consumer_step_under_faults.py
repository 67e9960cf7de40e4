"""Dead letters of the consumer step under faults (issue 11), on Redis and on RabbitMQ.

A message on a handler queue that never becomes a task run (an element that
is not a message, a pickle, an oversized message) is dead-lettered by the
worker's consumer step (``eventbus.celery.worker``). The promise is the one of
handler failures: its record is durably written before the message is
acknowledged; a write that fails leaves the message unacknowledged (or puts
it back) and is tried again later, off the worker's event loop, and the log
says so once.

Real ``celery worker`` subprocesses (prefork) of :mod:`tests.faults.fault_app`
consume the handler queue; :data:`OTHER` runs on a queue of its own, to show
that the event loop keeps working while a record waits to be written. Each
test records its figure line (see ``conftest.py``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis
from kombu import Connection

from eventbus import create_event
from tests.faults.conftest import FaultEnv
from tests.faults.fault_app import OTHER, TIMED, Probe
from tests.faults.workers import WorkerProcess
from tests.support import wait_for

pytestmark = pytest.mark.faults

Figure = Callable[[str], str]

#: What a worker logs, once, when a dead letter could not be written yet.
PENDING = "not written yet"
#: What a worker logged when it gave a dead letter up (before the fix: and dropped its message).
NOT_WRITTEN = "DEAD LETTER NOT WRITTEN"
#: Seconds the broker must hold none of the handler queue's messages before
#: bad messages still without a record count as lost (nothing is left to write one).
DRAINED_FOR = 2.0
#: Bytes of the oversized message's body: over any limit the worker sets (256 KiB).
OVERSIZED = 2 * 1024 * 1024


@dataclass(frozen=True)
class Bad:
    """One bad message: the key its record names it by, and the reason it must carry."""

    key: str
    kind: str
    reason: str


def publish_bad_messages(env: FaultEnv) -> list[Bad]:
    """Put three bad messages on the handler queue: not a message, a pickle, an oversized one.

    On Redis with eventbus's transport the first is a raw list element (taken
    as a stand-in); elsewhere a message whose JSON body does not parse (kombu's
    own Redis transport stops its worker on a raw element: README, Limits).
    Each carries its key as its task id or in its first bytes.
    """
    queue = env.config.queue
    uid = env.config.state_prefix.rstrip(":")
    bad = [
        Bad(f"{uid}-not-a-message", "undecodable", "undecodable"),
        Bad(f"{uid}-pickle", "pickle", "undecodable"),
        Bad(f"{uid}-oversized", "oversized", "oversized"),
    ]
    raw_element = env.kind == "redis" and env.config.transport == "eventbus"
    declared = env.bus.handler_queue(queue)
    with Connection(env.broker.url, connect_timeout=3) as conn:
        if not isinstance(declared, str):
            # As the worker declares it (with its dead-letter exchange).
            declared(conn.default_channel).declare()
        producer = conn.Producer()

        def publish(body: object, key: str, **options: object) -> None:
            # The default exchange routes by queue name, on both brokers.
            producer.publish(
                body,
                exchange="",
                routing_key=queue,
                headers={"task": TIMED, "id": key},
                retry=True,
                **options,
            )

        first = bad[0].key
        if raw_element:
            with redis.Redis.from_url(env.broker.url) as client:
                client.lpush(queue, f"not a message: {first}".encode())
        else:
            publish(
                f"{{not json: {first}".encode(),
                first,
                content_type="application/json",
                content_encoding="utf-8",
            )
        publish(((f"a pickle: {bad[1].key}",), {}, {}), bad[1].key, serializer="pickle")
        publish(
            json.dumps([["x" * OVERSIZED], {}, {}]).encode(),
            bad[2].key,
            content_type="application/json",
            content_encoding="utf-8",
        )
    return bad


@dataclass(frozen=True)
class Recorded:
    """What became of the bad messages: their records in the DLQ."""

    bad: int
    dead_lettered: int  #: bad messages with at least one record
    lost: list[str]  #: keys of bad messages with no record
    duplicates: int  #: records beyond the first of a bad message
    reasons: dict[str, str]  #: key -> the reason of its (first) record
    unknown: int  #: records naming no bad message

    def figures(self) -> str:
        return (
            f"bad={self.bad} dead_lettered={self.dead_lettered} lost={len(self.lost)} "
            f"duplicates={self.duplicates}"
        )


def recorded(env: FaultEnv, bad: list[Bad]) -> Recorded:
    records = env.bus.dead_letters.list()
    per_key: Counter[str] = Counter()
    reasons: dict[str, str] = {}
    unknown = 0
    for record in records:
        keys = [b.key for b in bad if record.task_id == b.key or b.key in (record.raw_body or "")]
        if not keys:
            unknown += 1
        for key in keys:
            per_key[key] += 1
            reasons.setdefault(key, record.reason)
    return Recorded(
        bad=len(bad),
        dead_lettered=len(per_key),
        lost=[b.key for b in bad if b.key not in per_key],
        duplicates=sum(count - 1 for count in per_key.values()),
        reasons=reasons,
        unknown=unknown,
    )


def wait_until_recorded(env: FaultEnv, bad: list[Bad], timeout: float) -> None:
    """Wait until every bad message has a record and the broker holds none of them.

    Returns early, with records still missing, once the broker has held
    nothing for :data:`DRAINED_FOR` seconds: nothing can write them.
    """
    drained_since: list[float] = []

    def settled() -> bool:
        if env.remaining():
            drained_since.clear()
            return False
        if not drained_since:
            drained_since.append(time.monotonic())
        done = len(env.bus.dead_letters) >= len(bad)
        return done or time.monotonic() - drained_since[0] >= DRAINED_FOR

    wait_for(
        settled,
        timeout=timeout,
        interval=0.2,
        message=lambda: (
            f"a record for each of {len(bad)} bad messages, or the queue to drain: "
            f"{len(env.bus.dead_letters)} records, messages left on the broker: "
            f"{env.remaining()}\n{env.logs()}"
        ),
    )


def logged(worker: WorkerProcess) -> str:
    return (
        f"'{PENDING}' logged {worker.count_in_log(PENDING)}x, "
        f"'{NOT_WRITTEN}' {worker.count_in_log(NOT_WRITTEN)}x"
    )


def expected_reasons(bad: list[Bad]) -> dict[str, str]:
    return {b.key: b.reason for b in bad}


def test_a_dead_letter_write_outage_loses_no_bad_message(
    fault_env: Callable[..., FaultEnv], figure: Figure
) -> None:
    # Given a prefork worker, whose next dead-letter write waits (held by the
    # test) before it reaches the broker
    env = fault_env("dlq")
    [worker] = env.start_workers(1, concurrency=2)
    env.effects.hold_dead_letters()

    # When bad messages arrive on a handler queue, and the first one's record
    # is on its way to the broker (on Redis: once the worker took them all and
    # recorded them as unacked, as kombu's own transport cannot record a message
    # it took from a full Redis)
    bad = publish_bad_messages(env)

    def taken() -> bool:
        return env.kind != "redis" or env.remaining() - env.waiting() == len(bad)

    wait_for(
        lambda: env.effects.held_writes() >= 1 and taken(),
        timeout=30,
        message=lambda: f"a dead-letter write held, every bad message taken\n{env.logs()}",
    )

    # and the broker refuses writes (Redis: full; RabbitMQ: a memory alarm,
    # then stopped) from then on, until the worker said what it could not
    # write (on Redis: after three refused tries of each record)
    def outage_seen() -> bool:
        if not (worker.count_in_log(PENDING) or worker.count_in_log(NOT_WRITTEN)):
            return False
        return env.kind != "redis" or env.failed_calls("eval") >= 3 * len(bad)

    outage = env.broker.refuse_writes(
        on_refusing=env.effects.release_dead_letters,
        until=outage_seen,
        waiting_for=lambda: (
            f"the worker to log the record it could not write: {logged(worker)}"
            + (f", {env.failed_calls('eval')} writes refused" if env.kind == "redis" else "")
        ),
    )

    # Then, once the broker takes writes again, each bad message is exactly
    # one record, with its reason: none was acknowledged without one
    wait_until_recorded(env, bad, timeout=90)
    result = recorded(env, bad)
    figure(
        f"dlq-write-outage[consumer-step,{env.label}]: {result.figures()} "
        f"(outage {outage:.1f}s, {logged(worker)})"
    )
    assert not result.lost, f"bad messages acknowledged without a dead letter: {result.lost}"
    assert result.duplicates == 0, f"{result.duplicates} duplicate records"
    assert result.unknown == 0, env.bus.dead_letters.list()
    assert result.reasons == expected_reasons(bad)
    # And the worker said once what was pending, and gave nothing up
    assert worker.count_in_log(PENDING) == 1, worker.log()
    assert worker.count_in_log(NOT_WRITTEN) == 0, worker.log()
    assert worker.alive(), worker.log()


def test_a_pending_dead_letter_of_a_bad_message_holds_up_no_other_handler(
    fault_env: Callable[..., FaultEnv], figure: Figure
) -> None:
    # Given a prefork worker whose dead-letter writes fail (each taking a
    # second, as a write to a broker that went away does)
    env = fault_env("dlq")
    [worker] = env.start_workers(1, concurrency=2)
    env.effects.break_dead_letters()

    # When bad messages arrive on a handler queue, and their records are refused
    bad = publish_bad_messages(env)
    wait_for(
        lambda: env.effects.refused_writes() >= 1,
        timeout=30,
        message=lambda: f"a dead-letter write refused\n{env.logs()}",
    )
    # and an event for a handler of another queue is published meanwhile
    env.bus.publish(create_event(Probe, {"n": 0}))

    # Then that handler runs while the records are still not written
    wait_for(
        lambda: env.effects.handled(OTHER) == 1,
        timeout=30,
        message=lambda: f"{OTHER} to run while dead letters are pending\n{env.logs()}",
    )
    refused_meanwhile = env.effects.refused_writes()
    # and the bad messages are still on the broker (unacknowledged), with no record yet
    wait_for(
        lambda: env.remaining() == len(bad),
        timeout=10,
        message=lambda: (
            f"the bad messages left unacknowledged on the broker: {env.remaining()} "
            f"held, {env.dead_letters()} dead letters, {logged(worker)}\n{env.logs()}"
        ),
    )
    assert env.dead_letters() == 0
    # and the worker says what is pending
    wait_for(
        lambda: worker.count_in_log(PENDING) or worker.count_in_log(NOT_WRITTEN),
        timeout=10,
        message=lambda: f"the pending records logged: {logged(worker)}",
    )

    # When writes work again, the records are written and only then the messages acked
    env.effects.break_dead_letters(False)
    wait_until_recorded(env, bad, timeout=60)
    result = recorded(env, bad)
    figure(
        f"dlq-pending[consumer-step,{env.label}]: other_handled_while_pending=1 "
        f"{result.figures()} (refused writes: {refused_meanwhile} before the other handler "
        f"ran, {env.effects.refused_writes()} in all; {logged(worker)})"
    )
    assert not result.lost and result.duplicates == 0, result
    assert result.unknown == 0, env.bus.dead_letters.list()
    assert result.reasons == expected_reasons(bad)
    # and it said so once, however many tries it took
    assert worker.count_in_log(PENDING) == 1, worker.log()
    assert worker.count_in_log(NOT_WRITTEN) == 0, worker.log()
    assert worker.alive(), worker.log()
