"""A DLQ message's :class:`~eventbus.deadletter.summary.Summary` row, read without the whole record.

The console's first page waits for a read of the whole queue into rows
(:mod:`eventbus.console.snapshot`). :func:`~.base.decode_record` builds each
record in full: the message's JSON into Python objects (the traceback, the
envelope's data), then pydantic's validation, with a walk of the envelope
for its nesting depth: about 40 us a record, most of the 7.2 s the first
read of 100,000 records took on Redis. A row needs a dozen small values.
Here pydantic validates the message's JSON against small typed dicts
(``TypeAdapter.validate_json``, strict): pydantic-core parses it in Rust
and builds Python objects only for the values a row or the full decode's
checks need, not for the envelope's data (about 15 us a record, the row
included, on the bench's records).

A lean row is never a guess. It is given only when the message has the
plain shape eventbus writes (an ``eventbus.dead_letter`` task message, or a
bare record) and every value the full decode checks has exactly the type
that decode accepts as it is: then the full decode builds the record from
the same values, and :meth:`Summary.of <eventbus.deadletter.summary.Summary.of>`
gives this row. Anything else returns None, and the caller decodes the
message in full (:func:`summary_of_element`): a handler's message the broker
dead-lettered, garbage, a value pydantic would coerce (``"6"`` attempts), a
time in another form than eventbus writes, an exception message long enough
to be cut, a message with more than
:data:`~eventbus.deadletter.record.MAX_ENVELOPE_DEPTH` brackets (its
envelope might nest deeper than that), JSON that pydantic-core's parser
refuses where ``json.loads`` reads it (a lone surrogate, a UTF-8 byte order
mark, nesting past its 200 levels). Where pydantic-core's parser is the
more lenient of the two (a base64 body without padding or in the URL-safe
alphabet; an integer of more digits than ``sys.get_int_max_str_digits()``
allows once an application lowered it), the lean path is not taken either.
``tests/unit/test_dlq_summaries.py`` compares both for each shape.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Required

from pydantic import ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import TypedDict  # (pydantic needs its TypedDict on Python 3.11)

from eventbus.celery.deadletter.base import DEAD_LETTER_TASK, decode_record, unwrap
from eventbus.deadletter.record import MAX_ENVELOPE_DEPTH, MAX_EXCEPTION_MESSAGE, DeadLetterReason
from eventbus.deadletter.summary import Summary

__all__ = ["lean_summary", "lean_summary_of_element", "summary_of_element"]

#: The time a record is written with (pydantic's JSON of an aware UTC datetime):
#: another form (an offset, a naive time, a number) is left to the full decode,
#: whose parser may read it otherwise than ``datetime.fromisoformat``.
_FAILED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{6})?(?:Z|\+00:00)")
#: An exception message longer than this many characters may be cut on the
#: full decode's way (record._cut), which drops lone surrogates it keeps.
_UNCUT = MAX_EXCEPTION_MESSAGE // 4
#: The digits of the longest integer pydantic-core's JSON parser reads (Python's
#: default ``sys.get_int_max_str_digits()``): ``json.loads`` reads as many unless
#: an application lowered that limit, and then refuses what pydantic-core reads.
_PARSER_INT_DIGITS = 4300


class _Object(TypedDict):
    """Any JSON object, its values not built: the full decode checks no more of it."""


class _Envelope(TypedDict, total=False):
    # An aggregate id of another type (str() of it) is left to the full decode.
    aggregate_id: str | int | None


class _Record(TypedDict, total=False):
    """A record's fields, typed as the full decode accepts them unchanged (strict)."""

    id: Required[str]
    handler: Required[str | None]
    reason: Required[DeadLetterReason]
    attempts: Required[int]
    exception_type: Required[str]
    exception_message: Required[str]
    failed_at: Required[str]
    traceback: str | None
    task_id: str | None
    queue: str | None
    worker: str | None
    event_id: str | None
    event_type: str | None
    envelope: _Envelope | None
    raw_body: str | None
    raw_size: int | None
    source: _Object | None


class _Headers(TypedDict, total=False):
    task: str | None


class _Properties(TypedDict, total=False):
    body_encoding: str | None


@with_config(ConfigDict(val_json_bytes="base64"))
class _Element(TypedDict, total=False):
    """kombu's virtual-transport wrapper of a message (a Redis list element)."""

    # The body decoded from base64 by pydantic-core (about 1 us for a 2.6 kB
    # body, where binascii takes 5-6 us), and its text: pydantic-core also reads
    # the URL-safe alphabet and a body without padding, which
    # base64.b64decode (unwrap's) reads otherwise: those are left to the full decode.
    body: Required[bytes]
    text: Required[Annotated[str, Field(validation_alias="body")]]
    headers: _Headers | None
    properties: _Properties | None


#: A task message, ``[args, kwargs, embed]`` with the record as the one arg.
_task_message: TypeAdapter[tuple[tuple[_Record], Any, Any]] = TypeAdapter(
    tuple[tuple[_Record], Any, Any]
)
#: A bare record, as earlier versions wrote it.
_bare_record: TypeAdapter[_Record] = TypeAdapter(_Record)
_element: TypeAdapter[_Element] = TypeAdapter(_Element)


def lean_summary(body: bytes, headers: Mapping[str, Any] | None = None) -> Summary | None:
    """The row of a DLQ message (its body and headers), or None: decode it in full."""
    if not isinstance(body, bytes):
        return None
    task = headers.get("task") if headers else None
    if task and task != DEAD_LETTER_TASK:
        return None  # a handler's message the broker dead-lettered
    # No more brackets in the whole message than the depth limit: its envelope
    # cannot nest deeper (else the full decode would keep it as text, and the
    # record not replayable). Counted before any parsing: two passes in C.
    if body.count(b"{") + body.count(b"[") > MAX_ENVELOPE_DEPTH:
        return None
    limit = sys.get_int_max_str_digits()
    if 0 < limit < _PARSER_INT_DIGITS:
        return None
    try:
        if body.startswith(b"["):
            record = _task_message.validate_json(body, strict=True)[0][0]
        elif body.startswith(b"{"):
            record = _bare_record.validate_json(body, strict=True)
        else:
            return None
        return _row(record)
    except Exception:  # not the plain shape (pydantic's ValidationError, ValueError, ...)
        return None


def lean_summary_of_element(raw: bytes) -> Summary | None:
    """The row of a kombu virtual-transport element (Redis, memory), or None: decode it in full."""
    try:
        element = _element.validate_json(raw, strict=True)
    except Exception:
        return None
    properties = element.get("properties")
    if properties is None or properties.get("body_encoding") != "base64":
        return None
    text = element["text"]
    if len(text) % 4 or "-" in text or "_" in text:
        return None  # (see _Element.body)
    headers = element.get("headers")
    return lean_summary(element["body"], {"task": headers.get("task")} if headers else None)


def summary_of_element(raw: bytes) -> Summary:
    """The row of a virtual-transport element: lean if it can be, else from its full decode."""
    row = lean_summary_of_element(raw)
    return row if row is not None else Summary.of(decode_record(*unwrap(raw)))


def _row(record: _Record) -> Summary | None:
    message = record["exception_message"]
    failed_at = record["failed_at"]
    if len(message) > _UNCUT or not _FAILED_AT.fullmatch(failed_at):
        return None
    envelope = record.get("envelope")
    aggregate = None if envelope is None else envelope.get("aggregate_id")
    handler = record["handler"]
    return Summary.make(
        id=record["id"],
        handler=handler,
        event_type=record.get("event_type"),
        event_id=record.get("event_id"),
        aggregate_id="" if aggregate is None else str(aggregate),
        reason=record["reason"],
        exception_type=record["exception_type"],
        message=message,
        failed_at=datetime.fromisoformat(failed_at).timestamp(),
        attempts=record["attempts"],
        replayable=envelope is not None and handler is not None,
    )
