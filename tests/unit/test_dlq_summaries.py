"""The lean rows of DLQ messages equal the rows of their full decode, for every shape.

The console's snapshot reads a row per message without building the record
(eventbus/celery/deadletter/summaries.py). Each case here is a message as a
store meets it: a Redis list element (kombu's wrapper, body in base64) or a
RabbitMQ message (body and headers). Its row must be the one the full decode
gives (``Summary.of(decode_record(...))``), whichever path reads it; the
plain shapes eventbus writes must take the lean path (else the speed-up is
gone unnoticed), and every other shape may fall back to the full decode.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from celery import Celery
from kombu import Connection

from eventbus.celery.deadletter.base import DEAD_LETTER_TASK, decode_record, unwrap
from eventbus.celery.deadletter.redis import RedisDeadLetterStore
from eventbus.celery.deadletter.summaries import (
    lean_summary,
    lean_summary_of_element,
    summary_of_element,
)
from eventbus.deadletter.memory import InMemoryDeadLetterStore
from eventbus.deadletter.record import MAX_ENVELOPE_DEPTH, DeadLetter
from eventbus.deadletter.summary import Summary

FAILED_AT = datetime(2026, 12, 1, 8, 30, 15, 123456, tzinfo=UTC)
RECORD_ID = "0123456789abcdef0123456789abcdef"


def envelope(**fields: Any) -> dict[str, Any]:
    return {
        "event_id": "e-1",
        "event_type": "orders.placed",
        "version": 1,
        "occurred_at": "2026-12-01T08:30:00Z",
        "aggregate_id": "ord-1",
        "aggregate_type": "Order",
        "metadata": {"tenant": "t1"},
        "data": {"order_id": "ord-1", "lines": [{"sku": "A", "qty": 1}]},
        **fields,
    }


def record(**fields: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "id": RECORD_ID,
        "handler": "handlers.orders.charge",
        "reason": "retries_exhausted",
        "attempts": 6,
        "exception_type": "ConnectionError",
        "exception_message": "connection refused by payments:443",
        "traceback": 'Traceback (most recent call last):\n  File "x.py"\nConnectionError: no\n',
        "task_id": "task-1",
        "queue": "orders",
        "worker": "celery@w1",
        "failed_at": FAILED_AT,
        "event_id": "e-1",
        "event_type": "orders.placed",
        "envelope": envelope(),
    }
    return DeadLetter(**{**values, **fields})


#: Records as eventbus writes them: each must be read by the lean path.
WRITTEN = {
    "a handler's failure": record(),
    "no fraction of a second": record(failed_at=FAILED_AT.replace(microsecond=0)),
    "a permanent error, attempt 1": record(reason="permanent_error", attempts=1),
    "an integer aggregate id": record(envelope=envelope(aggregate_id=42)),
    "no aggregate id": record(envelope=envelope(aggregate_id=None)),
    "an aggregate id of 300 characters": record(envelope=envelope(aggregate_id="a" * 300)),
    "an empty envelope": record(envelope={}),
    "a long message": record(exception_message="x" * 1000 + " and more"),
    "no handler": record(handler=None),
    "no event type nor id": record(event_type=None, event_id=None),
    "undecodable, raw body kept": record(
        handler=None,
        reason="undecodable",
        attempts=0,
        envelope=None,
        event_id=None,
        event_type=None,
        raw_body="\x00 not json",
        raw_size=10,
    ),
    "from Kafka": record(source={"kafka_topic": "orders", "partition": 0, "offset": 7}),
    "no traceback, task, queue nor worker": record(
        traceback=None, task_id=None, queue=None, worker=None
    ),
    "unicode everywhere": record(
        handler="handlers.bestellung.prüfen",
        exception_message="Zahlung abgelehnt: «ungültig» ✗",
        envelope=envelope(aggregate_id="bestellung-ä"),
    ),
}

#: Records the lean path may leave to the full decode: the rows must still agree.
UNUSUAL = {
    "a message with a lone surrogate": record(exception_message="bad \ud800 byte"),
    "a message cut on write (over 4096 characters, a lone surrogate)": record(
        exception_message="\ud800" + "y" * 20_000
    ),
    "a message of 5,000 characters": record(exception_message="z" * 5000),
    "an envelope with many (shallow) brackets": record(
        envelope=envelope(data={"lines": [{"n": n} for n in range(MAX_ENVELOPE_DEPTH + 5)]})
    ),
    "a float aggregate id": record(envelope=envelope(aggregate_id=1.5)),
    "a boolean aggregate id": record(envelope=envelope(aggregate_id=True)),
    "a dict aggregate id": record(envelope=envelope(aggregate_id={"k": [1, 2]})),
}


def task_body(data: dict[str, Any]) -> bytes:
    """The body of an ``eventbus.dead_letter`` task message (Celery's protocol 2)."""
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    return json.dumps([[data], {}, embed]).encode()


def element(body: bytes | str, headers: Any = None, **wrapper: Any) -> bytes:
    """A Redis list element as kombu's virtual transport writes it: body in base64."""
    encoded = body if isinstance(body, str) else base64.b64encode(body).decode()
    message = {
        "body": encoded,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": DEAD_LETTER_TASK, "id": "x"} if headers is None else headers,
        "properties": {"body_encoding": "base64", "delivery_tag": "t"},
        **wrapper,
    }
    return json.dumps(message).encode()


@pytest.fixture(scope="module")
def store_element() -> Iterator[Any]:
    """The element the Redis store itself writes for a record (its own ``_element``)."""
    app = Celery("summaries", broker="memory://", set_as_current=False)
    store = RedisDeadLetterStore(app, "summaries.dlq")
    with Connection("memory://") as conn:
        channel = conn.default_channel

        def make(record: DeadLetter) -> bytes:
            headers, properties, body, _ = store.task_message(record)
            return store._element(channel, record, headers, properties, body).encode()

        yield make


def full_row_of_element(raw: bytes) -> Summary:
    return Summary.of(decode_record(*unwrap(raw)))


def comparable(row: Summary) -> Summary:
    """The row, without what a decode invents for a message that does not say it.

    A record without an id is given a new one by each decode: two decodes
    invent them alike, not the same. (A message without a time of its own
    has none: ``failed_at`` None, the same in both.)
    """
    if re.fullmatch(r"[0-9a-f]{32}", row.id) and row.id != RECORD_ID:
        row = replace(row, id="invented")
    return row


@pytest.mark.parametrize("name", list(WRITTEN))
def test_a_record_the_store_wrote_is_read_lean_into_the_row_of_its_full_decode(
    name: str, store_element: Any
) -> None:
    raw = store_element(WRITTEN[name])
    lean = lean_summary_of_element(raw)
    assert lean is not None, "the plain shape must take the lean path"
    assert lean == full_row_of_element(raw) == Summary.of(WRITTEN[name])
    assert summary_of_element(raw) == lean


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_an_unusual_record_gives_the_row_of_its_full_decode(name: str, store_element: Any) -> None:
    raw = store_element(UNUSUAL[name])
    assert summary_of_element(raw) == full_row_of_element(raw) == Summary.of(UNUSUAL[name])


@pytest.mark.parametrize("name", list(WRITTEN))
def test_a_rabbitmq_message_is_read_lean_into_the_row_of_its_full_decode(name: str) -> None:
    body = task_body(WRITTEN[name].model_dump(mode="json"))
    headers = {"task": DEAD_LETTER_TASK, "id": WRITTEN[name].id, "x-death": None}
    lean = lean_summary(body, headers)
    assert lean is not None
    assert lean == Summary.of(decode_record(body, headers)) == Summary.of(WRITTEN[name])


def test_a_bare_record_is_read_lean_too() -> None:
    """A record as the body itself (as earlier versions wrote it), on either broker."""
    written = WRITTEN["a handler's failure"]
    body = written.model_dump_json().encode()
    assert lean_summary(body, None) == Summary.of(decode_record(body, None))
    assert lean_summary(body, None) == Summary.of(written)
    raw = element(body, headers={})
    assert lean_summary_of_element(raw) == full_row_of_element(raw) == Summary.of(written)


def test_a_handler_message_the_broker_dead_lettered_gives_the_row_of_its_full_decode() -> None:
    body = json.dumps([[envelope()], {}, {"callbacks": None}]).encode()
    headers = {
        "task": "handlers.orders.ship",
        "id": "task-9",
        "retries": 2,
        "x-death": [{"queue": "orders", "reason": "rejected", "count": 1}],
    }
    full = comparable(Summary.of(decode_record(body, headers)))
    assert full.id == "broker-task-9" and full.reason == "broker" and full.replayable
    assert lean_summary(body, headers) is None  # (left to the full decode, which knows x-death)
    raw = element(body, headers=headers)
    assert comparable(summary_of_element(raw)) == comparable(full_row_of_element(raw)) == full


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def shapes() -> dict[str, bytes]:
    """Odd elements: every one must give the row of its full decode, whatever path reads it."""
    good = WRITTEN["a handler's failure"].model_dump(mode="json")

    def with_values(**fields: Any) -> bytes:
        return element(task_body({**good, **fields}))

    no_id = {k: v for k, v in good.items() if k != "id"}
    no_time = {k: v for k, v in good.items() if k != "failed_at"}
    deep = nested(MAX_ENVELOPE_DEPTH + 5)
    text = task_body(good).decode()
    padded = base64.b64encode((text + " " * (-len(text) % 3 + 1)).encode())
    assert padded.endswith(b"=")
    odd = task_body({**good, "exception_message": "refused ???>>>???>>>???"})
    url_safe = base64.urlsafe_b64encode(odd).decode()
    assert "_" in url_safe or "-" in url_safe
    return {
        "garbage": b"\x00\x01 hand-pushed, not JSON",
        "JSON, not a message": b'{"hello": "world"}',
        "a JSON list": b"[1, 2, 3]",
        "a wrapper without a body": json.dumps({"headers": {}, "properties": {}}).encode(),
        "a body that is not base64": element("@@not base64@@"),
        "a body not marked base64": element(text, properties={"body_encoding": None}),
        "a body in base64 without properties": element(task_body(good), properties=None),
        "properties that are a list": element(task_body(good), properties=[1]),
        "headers that are a list": element(task_body(good), headers=[1, 2]),
        "a task name that is a number": element(task_body(good), headers={"task": 5}),
        "an empty task name": element(task_body(good), headers={"task": ""}),
        "a body of garbage": element(b"\xff\xfe garbage"),
        "a body of JSON, not a record": element(b'{"hello": 1}'),
        "a task message without args": element(b"[[], {}, {}]"),
        "a task message with two args": element(json.dumps([[good, good], {}, {}]).encode()),
        "a task message whose args are no list": element(json.dumps([good, {}, {}]).encode()),
        "attempts as text": with_values(attempts="6"),
        "attempts as a float": with_values(attempts=6.0),
        "attempts as a boolean": with_values(attempts=True),
        "a reason eventbus does not know": with_values(reason="gremlins"),
        "a handler that is a number": with_values(handler=7),
        "no id": element(task_body(no_id)),
        "no time": element(task_body(no_time)),
        "a time with an offset": with_values(failed_at="2026-12-01T10:30:15.123456+02:00"),
        "a time with a zero offset": with_values(failed_at="2026-12-01T08:30:15.123456+00:00"),
        "a naive time": with_values(failed_at="2026-12-01T08:30:15.123456"),
        "a time of 7 fraction digits": with_values(failed_at="2026-12-01T08:30:15.1234567Z"),
        "a time of 3 fraction digits": with_values(failed_at="2026-12-01T08:30:15.123Z"),
        "a time as a number": with_values(failed_at=1796113815.5),
        "a date that does not exist": with_values(failed_at="2026-02-30T08:30:15Z"),
        "a time with a space": with_values(failed_at="2026-12-01 08:30:15Z"),
        "an envelope that is a list": with_values(envelope=[1, 2]),
        "an envelope of null": with_values(envelope=None),
        "an envelope nested deeper than the limit": with_values(envelope={"data": deep}),
        "an envelope nested 100,000 deep": element(
            text.replace(
                '"envelope": {', '"envelope": {"x": ' + "[" * 100_000 + "]" * 100_000 + ", "
            ).encode()
        ),
        "a traceback that is a number": with_values(traceback=3),
        "a source that is text": with_values(source="kafka"),
        "a raw size as text": with_values(raw_size="10"),
        "an extra field": with_values(colour="blue"),
        "a duplicated field": element(
            text.replace('"attempts": 6', '"attempts": 1, "attempts": 6').encode()
        ),
        "NaN in the data": element(text.replace('"qty": 1', '"qty": NaN').encode()),
        "a body with a UTF-8 byte order mark": element(b"\xef\xbb\xbf" + text.encode()),
        "a body in UTF-16": element(text.encode("utf-16")),
        "a body with invalid UTF-8": element(
            text.replace("refused", "ref\udcffused").encode("utf-8", "surrogateescape")
        ),
        "a body with an encoded surrogate": element(
            text.replace("refused", "ref\ud800used").encode("utf-8", "surrogatepass")
        ),
        "a lone surrogate escaped in the message": element(
            text.replace("refused", "ref\\ud800used").encode()
        ),
        # Where pydantic-core's JSON parser (the lean path's) and json.loads differ
        "a lone surrogate escaped in the event data": element(
            text.replace('"sku": "A"', '"sku": "\\udc00"').encode()
        ),
        "invalid UTF-8 in the event data": element(
            text.replace('"sku": "A"', '"sku": "\udcff"').encode("utf-8", "surrogateescape")
        ),
        "an integer of 5,000 digits in the event data": element(
            text.replace('"qty": 1', '"qty": ' + "7" * 5000).encode()
        ),
        "an envelope nested 150 deep (the limit < 150 < pydantic-core's 200)": with_values(
            envelope={"data": nested(150)}
        ),
        "a duplicated aggregate id": element(
            text.replace(
                '"aggregate_id": "ord-1"', '"aggregate_id": 5, "aggregate_id": "ord-1"'
            ).encode()
        ),
        "a body in base64 without its padding": element(padded.decode().rstrip("=")),
        "a body in the URL-safe base64 alphabet": element(url_safe),
    }


@pytest.mark.parametrize("name", list(shapes()))
def test_an_odd_element_gives_the_row_of_its_full_decode(name: str) -> None:
    raw = shapes()[name]
    assert comparable(summary_of_element(raw)) == comparable(full_row_of_element(raw))


def test_an_integer_json_loads_refuses_gives_the_row_of_its_full_decode() -> None:
    """An application lowered Python's limit of an integer's digits: json.loads refuses more."""
    good = WRITTEN["a handler's failure"].model_dump(mode="json")
    raw = element(task_body(good).decode().replace('"qty": 1', '"qty": ' + "7" * 2000).encode())
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(1000)
    try:
        assert full_row_of_element(raw).reason == "undecodable"
        assert comparable(summary_of_element(raw)) == comparable(full_row_of_element(raw))
    finally:
        sys.set_int_max_str_digits(limit)
    assert lean_summary_of_element(raw) is not None  # (at the default limit, lean)


def test_a_snapshot_of_odd_and_plain_elements_counts_each_record_once(store_element: Any) -> None:
    """The store's summaries: lean or not, each record once, garbage included, in order."""
    raws = [store_element(r) for r in WRITTEN.values()] + list(shapes().values())
    raws.append(store_element(WRITTEN["a handler's failure"]))  # a copy of a record

    class Store(RedisDeadLetterStore):
        def _raw_elements(self) -> Iterator[bytes]:
            return iter(raws)

    app = Celery("summaries", broker="memory://", set_as_current=False)
    rows = list(Store(app, "summaries.dlq").summaries())
    full = [Summary.of(r) for r in Store(app, "summaries.dlq").records()]
    assert list(map(comparable, rows)) == list(map(comparable, full))
    assert len(rows) == len({row.id for row in rows}) < len(raws)  # copies shown once


def test_a_store_without_a_lean_path_gives_the_rows_of_its_records() -> None:
    store = InMemoryDeadLetterStore()
    for r in (WRITTEN["a handler's failure"], WRITTEN["no handler"]):
        store.append(r)
    assert list(store.summaries()) == [Summary.of(r) for r in store.records()]
