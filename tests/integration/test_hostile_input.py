"""Hostile input at the consumer: each bad message is dead-lettered, the worker goes on.

test_bad_input.py covers a non-JSON body, a pickle, a task message whose
argument is not an envelope and a message for an unknown task; these are the
rest: JSON that is not a task message, an envelope of an unknown event type,
oversized messages, and a few hundred random bodies.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from eventbus import DeadLetter, Envelope
from eventbus.deadletter.record import MAX_RAW_BODY

from .conftest import Env
from .helpers import UNPICKLED, OrderPlaced, Recorder, Tripwire, wait_for


def _still_handles_a_good_event(env: Env, recorder: Recorder, name: str) -> None:
    """Publish a good event and see the handler run it."""
    envelope = env.bus.publish(OrderPlaced(order_id="after-the-bad-one", quantity=1))
    wait_for(
        lambda: str(envelope.event_id) in {c.event_id for c in recorder.calls(name)},
        message="the worker to handle the good event published after the bad message",
    )


def _dead_letters(env: Env, count: int = 1) -> list[DeadLetter]:
    """Wait until the bus's DLQ holds ``count`` records; return them."""
    wait_for(
        lambda: len(env.bus.dead_letters) >= count,
        message=lambda: f"{len(env.bus.dead_letters)}/{count} dead letters",
    )
    return env.bus.dead_letters.list()


def _wire(event_type: str = "it.order.placed", **data: object) -> dict[str, Any]:
    """An envelope's wire dict built by hand: it never went through publish's checks."""
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "version": 1,
        "occurred_at": "2026-01-01T00:00:00Z",
        "aggregate_id": None,
        "aggregate_type": None,
        "sequence": None,
        "correlation_id": None,
        "causation_id": None,
        "metadata": {},
        "data": data or {"order_id": "o-1", "quantity": 1},
    }


def _subscribed(env: Env) -> tuple[Recorder, str]:
    recorder = Recorder()
    name = env.name("orders")
    env.bus.subscribe(OrderPlaced, name=name, handler=recorder.handler(name))
    return recorder, name


# -- JSON that is not a task message ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "task_header", "error"),
    [
        pytest.param({"hello": "world"}, False, "no task header", id="document-no-task-header"),
        pytest.param(_wire(), True, "body is not [args, kwargs, embed]", id="bare-envelope"),
        pytest.param([1, 2, 3], True, "args must be a list", id="array-of-three-numbers"),
        pytest.param("a string", True, "body is not [args, kwargs, embed]", id="json-string"),
    ],
)
def test_json_that_is_not_a_task_message_is_dead_lettered(
    env: Env, body: object, task_header: bool, error: str
) -> None:
    # Given a handler and a running worker
    recorder, name = _subscribed(env)
    env.start_worker()

    # When valid JSON that is not Celery's [args, kwargs, embed] lands on its queue
    # (a bare envelope as the body used to stop the worker)
    task_id = str(uuid.uuid4())
    env.publish_raw(
        json.dumps(body).encode(),
        headers={"task": name, "id": task_id} if task_header else {},
        content_type="application/json",
        content_encoding="utf-8",
    )

    # Then it is dead-lettered once as rejected, with its body, and the handler never ran
    [record] = _dead_letters(env)
    assert record.reason == "rejected"
    assert error in record.exception_message
    assert record.handler == (name if task_header else None)
    assert record.task_id == (task_id if task_header else None)
    assert record.raw_body == json.dumps(body)
    assert not record.replayable
    assert recorder.count(name) == 0
    # And the worker goes on with the next good event
    _still_handles_a_good_event(env, recorder, name)
    assert len(env.bus.dead_letters) == 1


@pytest.mark.parametrize(
    ("kwargs", "embed", "headers", "error"),
    [
        # each used to go wrong past the consumer: the comment says how
        pytest.param(  # a TypeError, retried until retries_exhausted
            {"envelope": _wire()}, {}, {}, "no keyword arguments", id="keyword-arguments"
        ),
        pytest.param(  # the bad errback raised before task_failure fired: no record
            {}, {"errbacks": [{"x": 1}]}, {}, "never linked, got errbacks", id="linked-errback"
        ),
        pytest.param(  # the run vanished: no result, no record, no log line
            {}, None, {"shadow": {"x": 1}}, "shadow", id="shadow-not-a-string"
        ),
        pytest.param(  # task_failure's receiver failed counting attempts: no record
            {}, None, {"retries": "soon"}, "retries must be a count", id="retries-not-a-count"
        ),
        pytest.param(  # stopped the worker ("Unrecoverable error")
            {}, None, {"timelimit": [1, 2, 3]}, "timelimit", id="timelimit-of-three"
        ),
    ],
)
def test_task_message_celery_would_choke_on_is_rejected(
    env: Env, kwargs: dict[str, Any], embed: object, headers: dict[str, Any], error: str
) -> None:
    # Given a handler and a running worker
    recorder, name = _subscribed(env)
    env.start_worker(pool="threads", concurrency=2)

    # When a task message for it, with a broken envelope, has this flaw too
    task_id = str(uuid.uuid4())
    wire = _wire()
    wire["data"] = {"quantity": 0}
    env.publish_raw(
        json.dumps([[wire], kwargs, embed]).encode(),
        headers={"task": name, "id": task_id, "retries": 0, **headers},
        content_type="application/json",
        content_encoding="utf-8",
    )

    # Then it is dead-lettered once as rejected, naming the flaw, before any run
    [record] = _dead_letters(env)
    assert record.reason == "rejected"
    assert error in record.exception_message
    assert (record.handler, record.task_id) == (name, task_id)
    assert recorder.count(name) == 0
    # And the worker goes on with the next good event
    _still_handles_a_good_event(env, recorder, name)
    assert len(env.bus.dead_letters) == 1


# -- an envelope of an event type nobody registered -----------------------------------


def test_envelope_of_an_unknown_event_type_is_dead_lettered(env: Env) -> None:
    # Given a handler and a running worker
    recorder, name = _subscribed(env)
    env.start_worker()

    # When its task message carries an envelope of an event type this worker does not know
    wire = _wire("it.order.vanished", order_id="o-7")
    env.app.send_task(name, args=(wire,), queue=env.queue)

    # Then it is dead-lettered as undecodable after one attempt, envelope kept for a replay
    [record] = _dead_letters(env)
    assert record.reason == "undecodable"
    assert record.handler == name
    assert record.attempts == 1
    assert record.exception_type == "eventbus.errors.EnvelopeDecodeError"
    assert "it.order.vanished" in record.exception_message
    assert record.event_type == "it.order.vanished"
    assert record.event_id == wire["event_id"]
    assert record.envelope == wire
    assert recorder.count(name) == 0
    # And the worker goes on with the next good event
    _still_handles_a_good_event(env, recorder, name)
    assert len(env.bus.dead_letters) == 1


# -- oversized messages -------------------------------------------------------------


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_oversized_message_is_dead_lettered_without_running_the_handler(
    env: Env, pool: str, tmp_path: Path
) -> None:
    # Given a handler with the default limit (256 KiB), in a worker with this
    # pool; it notes each event it runs in a file (prefork runs it in a child)
    ran = tmp_path / "ran"
    ran.touch()
    name = env.name("orders")

    def note(envelope: Envelope[Any]) -> None:
        with ran.open("a") as out:
            out.write(f"{envelope.event_id}\n")

    env.bus.subscribe(OrderPlaced, name=name, handler=note)
    assert env.bus.max_payload_bytes == 256 * 1024
    env.start_worker(pool=pool, concurrency=2)

    # When a valid-looking 1 MiB envelope is sent past publish's own check
    task_id = str(uuid.uuid4())
    wire = _wire(order_id="x" * (1024 * 1024), quantity=1)
    env.app.send_task(name, args=(wire,), queue=env.queue, task_id=task_id)

    # Then it is dead-lettered as oversized, its body cut to what a record keeps
    [record] = _dead_letters(env)
    assert record.reason == "oversized"
    assert record.exception_type == "PayloadTooLarge"
    assert f"over the limit of {256 * 1024}" in record.exception_message
    assert record.handler == name
    assert record.task_id == task_id
    assert record.raw_size is not None and record.raw_size > 1024 * 1024
    assert record.raw_body is not None and len(record.raw_body) == MAX_RAW_BODY
    # And the handler never ran it, and goes on with the next good event
    envelope = env.bus.publish(OrderPlaced(order_id="after-the-big-one", quantity=1))
    wait_for(
        lambda: ran.read_text().split() == [str(envelope.event_id)],
        message=lambda: f"the good event to run alone, ran: {ran.read_text().split()}",
    )
    assert len(env.bus.dead_letters) == 1


def test_size_at_the_consumer_is_measured_as_publish_measures_it(env: Env) -> None:
    # Given a 4 KiB limit and a running worker
    env.app.conf.eventbus_max_payload_bytes = 4096
    recorder, name = _subscribed(env)
    env.start_worker()

    # When an event just under the limit is published: Celery's JSON (a space
    # after each comma) makes its message half as large again
    zeros = [0] * 1880
    accepted = env.bus.publish(OrderPlaced(order_id="o-1", quantity=1), metadata={"z": zeros})
    # And an envelope just over the limit, then a body far over it that is
    # not even JSON, are sent past publish's check
    over = _wire(order_id="y" * 4200)
    env.app.send_task(name, args=(over,), queue=env.queue)
    garbage = b'[[{"event_type": "it.order.placed", "data": {"order_id": "' + b"z" * 20_000
    env.publish_raw(
        garbage,
        headers={"task": name, "id": "garbage"},
        content_type="application/json",
        content_encoding="utf-8",
    )

    # Then the published event is handled
    wait_for(
        lambda: [c.event_id for c in recorder.calls(name)] == [str(accepted.event_id)],
        message="the event publish accepted to be handled",
    )
    # And both others are dead-lettered as oversized: the envelope measured as
    # publish measures it, the garbage by its size alone (never decoded)
    records = {r.task_id != "garbage": r for r in _dead_letters(env, 2)}
    assert {r.reason for r in records.values()} == {"oversized"}
    measured, unread = records[True], records[False]
    size = len(json.dumps(over, separators=(",", ":")))
    assert f"'it.order.placed' is {size} bytes" in measured.exception_message
    assert "over the limit of 4096" in measured.exception_message
    # (on eventbus's Redis transport, refused unread by the take script: the
    # size is the list element's, the body in base64 with the headers)
    assert unread.raw_size is not None and unread.raw_size >= len(garbage)
    assert f"is {unread.raw_size} bytes" in unread.exception_message
    assert unread.handler == name
    assert recorder.count(name) == 1
    # And the worker goes on with the next good event
    _still_handles_a_good_event(env, recorder, name)
    assert len(env.bus.dead_letters) == 2


def test_headers_count_toward_the_payload_limit(env: Env) -> None:
    # Given a 4 KiB limit and a running worker
    env.app.conf.eventbus_max_payload_bytes = 4096
    recorder, name = _subscribed(env)
    env.start_worker()

    # When a small envelope comes with a 30 KB header, sent past publish
    task_id = str(uuid.uuid4())
    env.app.send_task(
        name, args=(_wire(),), queue=env.queue, task_id=task_id, headers={"pad": "p" * 30_000}
    )

    # Then it is dead-lettered as oversized, the handler named, and never run
    [record] = _dead_letters(env)
    assert record.reason == "oversized"
    assert (record.handler, record.task_id, record.queue) == (name, task_id, env.queue)
    assert "over the limit of 4096" in record.exception_message
    # And the worker goes on with the next good event, the only one it ran
    _still_handles_a_good_event(env, recorder, name)
    assert recorder.count(name) == 1
    assert len(env.bus.dead_letters) == 1


def test_another_task_of_the_app_on_the_default_queue_is_not_held_to_the_handlers_limit(
    env: Env,
) -> None:
    # Given a 4 KiB limit, a handler on Celery's default queue, and a plain task
    # of the app there too
    env.app.conf.eventbus_max_payload_bytes = 4096
    env.app.conf.task_default_queue = env.queue
    recorder, name = _subscribed(env)
    ran: list[int] = []

    @env.app.task(name=env.name("plain"), shared=False)
    def plain(data: str) -> None:
        ran.append(len(data))

    env.start_worker()

    # When that task is sent 20 KB of data
    plain.delay("z" * 20_000)

    # Then it runs: the payload limit is the handlers'
    wait_for(lambda: ran == [20_000], message=lambda: f"the plain task to run, ran: {ran}")
    _still_handles_a_good_event(env, recorder, name)
    assert len(env.bus.dead_letters) == 0


# -- a few hundred random bodies ---------------------------------------------------------

FUZZ_MESSAGES = 300
#: Content types a hostile producer may claim; pickle must never be unpickled.
WRONG_CONTENT_TYPES = [
    "application/x-python-serialize",
    "application/x-yaml",
    "application/x-msgpack",
    "application/octet-stream",
    "text/plain",
    "",
]


#: Celery headers a hostile message garbles now and then.
GARBLED_HEADERS = [
    "eta", "expires", "retries", "timelimit", "argsrepr", "group", "group_index",
    "stamped_headers", "stamps", "replaced_task_nesting", "ignore_result", "shadow",
    "root_id", "parent_id",
]  # fmt: skip


class Fuzzer:
    """Random hostile messages for one handler task, reproducible from a seed."""

    def __init__(self, rng: random.Random, task: str) -> None:
        self.rng = rng
        self.task = task

    def value(self, depth: int = 0) -> Any:
        """Any JSON value, nested a little."""
        rng = self.rng
        kinds = ["null", "bool", "int", "float", "str"] + (["list", "dict"] if depth < 3 else [])
        kind = rng.choice(kinds)
        if kind == "list":
            return [self.value(depth + 1) for _ in range(rng.randint(0, 4))]
        if kind == "dict":
            return {self.text(): self.value(depth + 1) for _ in range(rng.randint(0, 4))}
        return {
            "null": None,
            "bool": rng.random() < 0.5,
            "int": rng.randint(-(2**70), 2**70),
            "float": rng.uniform(-1e9, 1e9),
            "str": self.text(),
        }[kind]

    def text(self) -> str:
        alphabet = 'abc"\\{}[]:, \n\t\u00e9\u2603\U0001f600\x00'
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, 12)))

    def broken_envelope(self) -> Any:
        """A wire dict with at least one thing an envelope cannot have."""
        rng = self.rng
        wire = _wire(order_id=self.text(), quantity=rng.randint(1, 9))
        breakage = rng.choice(["drop", "type", "event_type", "data"])
        if breakage == "drop":
            del wire[rng.choice(["event_type", "version", "data"])]
        elif breakage == "type":
            key = rng.choice(["event_id", "version", "occurred_at", "metadata", "data"])
            wire[key] = rng.choice([[], "not-it"])  # pydantic coerces a number or a bool
        elif breakage == "event_type":
            wire["event_type"] = rng.choice([None, 7, "", "it.no.such.event", self.text() + "?"])
        else:
            wire["data"] = rng.choice([{}, {"order_id": None}, {"quantity": 0}, self.value()])
        return wire

    def headers(self, task_id: str) -> dict[str, Any]:
        """Celery's protocol 2 headers, a few of them garbled."""
        rng = self.rng
        headers: dict[str, Any] = {
            "lang": "py",
            "task": self.task,
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "retries": 0,
            "eta": None,
            "expires": None,
            "timelimit": [None, None],
            "argsrepr": "(...)",
            "kwargsrepr": "{}",
            "origin": "fuzz@host",
        }
        if rng.random() < 0.3:
            key = rng.choice(GARBLED_HEADERS)
            headers[key] = rng.choice(["soon", [1, 2, 3], {"x": 1}, -1, "2026-13-45", 1e300])
        return headers

    def message(self) -> tuple[str, bytes, dict[str, Any], str]:
        """One hostile message: (kind, body, headers, content type)."""
        rng = self.rng
        task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        kind = rng.choice(["bytes", "json", "task", "task", "task", "content_type", "empty"])
        if kind == "bytes":
            headers = self.headers(task_id) if rng.random() < 0.5 else {}
            return kind, rng.randbytes(rng.randint(1, 300)), headers, "application/json"
        if kind == "json":
            headers = {"task": self.task, "id": task_id} if rng.random() < 0.5 else {}
            return kind, json.dumps(self.value()).encode(), headers, "application/json"
        if kind == "task":
            args = rng.choice([[self.broken_envelope()], [], [self.value(), self.value()]])
            kwargs = rng.choice([{}, {}, {self.text(): self.value()}, {"envelope": _wire()}])
            link = rng.choice(["callbacks", "errbacks", "chain", "chord"])
            embed = rng.choice(
                [None, {}, self.value(), {link: self.value()}, {link: [{"task": self.task}]}]
            )
            body = rng.choice([[args, kwargs, embed], [args, kwargs], [args, self.value(), embed]])
            return kind, json.dumps(body).encode(), self.headers(task_id), "application/json"
        if kind == "content_type":
            content_type = rng.choice(WRONG_CONTENT_TYPES)
            if content_type == "application/x-python-serialize":
                payload = ((Tripwire(task_id),), {}, {"callbacks": None})
                return kind, pickle.dumps(payload), self.headers(task_id), content_type
            body = json.dumps([[_wire()], {}, {}]).encode()  # valid JSON, wrongly labelled
            return kind, body, self.headers(task_id), content_type
        return kind, b"", self.headers(task_id) if rng.random() < 0.5 else {}, "application/json"


def test_fuzz_hundreds_of_hostile_messages_then_a_good_event(env: Env) -> None:
    # Given a handler and a running worker
    seed = int(os.environ.get("EVENTBUS_FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    print(f"fuzz seed={seed} (EVENTBUS_FUZZ_SEED={seed} replays it)")
    recorder, name = _subscribed(env)
    env.start_worker(pool="threads", concurrency=2)
    fuzzer = Fuzzer(random.Random(seed), name)

    # When a few hundred random hostile messages land on its queue
    by_id: dict[str, str] = {}  # task id -> kind, of the messages naming the handler
    by_body: Counter[str] = Counter()  # the others, by the raw body their record keeps
    started = time.monotonic()
    with env.connection() as conn:
        producer = conn.Producer()
        for _ in range(FUZZ_MESSAGES):
            kind, body, headers, content_type = fuzzer.message()
            if headers.get("task") == name:
                by_id[headers["id"]] = kind
            else:
                by_body[body.decode("utf-8", "replace")] += 1
            producer.publish(
                body,
                exchange=env.queue,
                routing_key=env.queue,
                headers=headers,
                content_type=content_type,
                content_encoding="binary" if kind in {"bytes", "content_type"} else "utf-8",
                retry=True,
            )

    # Then every one of them is dead-lettered, once, and the queue is drained
    def unaccounted() -> str:
        records = env.bus.dead_letters.list()
        ids = Counter(r.task_id for r in records)
        bodies = Counter(r.raw_body for r in records if r.task_id not in by_id)
        missing = [task_id for task_id in by_id if not ids[task_id]]
        extra = {task_id: n for task_id, n in ids.items() if task_id in by_id and n > 1}
        return (
            f"{len(records)}/{FUZZ_MESSAGES} dead letters; no record for {sorted(missing)} "
            f"and {sum((by_body - bodies).values())} others; several for {extra}"
        )

    wait_for(
        lambda: len(env.bus.dead_letters) >= FUZZ_MESSAGES,
        timeout=30,
        message=lambda: f"{unaccounted()} (seed {seed})",
    )
    records = env.bus.dead_letters.list()
    assert sorted(r.task_id for r in records if r.task_id in by_id) == sorted(by_id), unaccounted()
    assert Counter(r.raw_body for r in records if r.task_id not in by_id) == by_body
    wait_for(lambda: env.queue_length() == 0, message="the handler queue to drain")
    # And the handler never ran, nothing was unpickled
    assert recorder.count(name) == 0
    assert not set(UNPICKLED) & set(by_id)

    # And the worker goes on with the next good event
    _still_handles_a_good_event(env, recorder, name)
    assert len(env.bus.dead_letters) == FUZZ_MESSAGES
    reasons = Counter(r.reason for r in records)
    print(
        f"fuzz: sent={FUZZ_MESSAGES} dead_lettered={len(records)} "
        f"logged_and_acked={FUZZ_MESSAGES - len(records)} handled_good={recorder.count(name)} "
        f"seed={seed} broker={env.kind} reasons={dict(sorted(reasons.items()))} "
        f"seconds={time.monotonic() - started:.1f}"
    )
