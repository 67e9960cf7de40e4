"""A DLQ message's :class:`~eventbus.deadletter.summary.Summary` row, read without the whole record.

The console's first page waits for a read of the whole queue into rows
(:mod:`eventbus.console.snapshot`). :func:`~.base.decode_record` builds each
record in full: the message's JSON into Python objects (the traceback, the
envelope's data), then pydantic's validation, with a walk of the envelope
for its nesting depth: about 40 us a record, most of the 7.2 s the first
read of 100,000 records took on Redis. A row needs a dozen small values.
Here msgspec decodes just those into typed structs, skipping the rest of
the JSON without building it (a few us a record).

A lean row is never a guess. It is given only when the message has the
plain shape eventbus writes (an ``eventbus.dead_letter`` task message, or a
bare record) and every value the full decode checks has exactly the type
that decode accepts as it is: then the full decode builds the record from
the same values, and :meth:`Summary.of <eventbus.deadletter.summary.Summary.of>`
gives this row. Anything else returns None, and the caller decodes the
message in full (:func:`summary_of_element`): a handler's message the broker
dead-lettered, garbage, a value pydantic would coerce (``"6"`` attempts), a
time in another form than eventbus writes, an exception message long enough
to be cut, an envelope that might nest deeper than
:data:`~eventbus.deadletter.record.MAX_ENVELOPE_DEPTH`. Without msgspec
installed (it comes with ``eventbus[console]``), every message is decoded
in full. ``tests/unit/test_dlq_summaries.py`` compares both for each shape.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from eventbus.celery.deadletter.base import DEAD_LETTER_TASK, decode_record, unwrap
from eventbus.deadletter.record import MAX_ENVELOPE_DEPTH, MAX_EXCEPTION_MESSAGE, DeadLetterReason
from eventbus.deadletter.summary import Summary

try:
    import msgspec
except ImportError:  # pragma: no cover - the console's extra installs it
    msgspec = None  # type: ignore[assignment]

__all__ = ["LEAN", "lean_summary", "lean_summary_of_element", "summary_of_element"]

#: The time a record is written with (pydantic's JSON of an aware UTC datetime):
#: another form (an offset, a naive time, a number) is left to the full decode,
#: whose parser may read it otherwise than ``datetime.fromisoformat``.
_FAILED_AT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{6})?(?:Z|\+00:00)")
#: An exception message longer than this many characters may be cut on the
#: full decode's way (record._cut), which drops lone surrogates it keeps.
_UNCUT = MAX_EXCEPTION_MESSAGE // 4

if msgspec is not None:
    _NULL = msgspec.Raw(b"null")

    class _Envelope(msgspec.Struct):
        # An aggregate id of another type (str() of it) is left to the full decode.
        aggregate_id: str | int | None = None

    class _Record(msgspec.Struct):
        """A record's fields, typed as pydantic accepts them unchanged; envelope kept raw."""

        id: str
        handler: str | None
        reason: DeadLetterReason
        attempts: int
        exception_type: str
        exception_message: str
        failed_at: str
        traceback: str | None = None
        task_id: str | None = None
        queue: str | None = None
        worker: str | None = None
        event_id: str | None = None
        event_type: str | None = None
        envelope: msgspec.Raw = _NULL  # (msgspec's Raw takes any value, null too)
        raw_body: str | None = None
        raw_size: int | None = None
        source: dict[str, Any] | None = None

    class _Headers(msgspec.Struct):
        task: str | None = None

    class _Properties(msgspec.Struct):
        body_encoding: str | None = None

    class _Element(msgspec.Struct):
        """kombu's virtual-transport wrapper of a message (a Redis list element)."""

        # Decoded from base64 by msgspec itself, strictly: a body that only
        # base64.b64decode's lenient reading takes is left to the full decode.
        body: bytes
        headers: _Headers | None = None
        properties: _Properties | None = None

    #: A task message, ``[args, kwargs, embed]`` with the record as the one arg, or a bare record.
    _body_decoder: Any = msgspec.json.Decoder(
        tuple[tuple[_Record], msgspec.Raw, msgspec.Raw] | _Record
    )
    _envelope_decoder: Any = msgspec.json.Decoder(_Envelope | None)
    _element_decoder: Any = msgspec.json.Decoder(_Element)

#: Whether lean rows are read at all (msgspec is installed).
LEAN = msgspec is not None


def lean_summary(body: bytes, headers: Mapping[str, Any] | None = None) -> Summary | None:
    """The row of a DLQ message (its body and headers), or None: decode it in full."""
    if msgspec is None or not isinstance(body, bytes):
        return None
    task = headers.get("task") if headers else None
    if task and task != DEAD_LETTER_TASK:
        return None  # a handler's message the broker dead-lettered
    try:
        decoded = _body_decoder.decode(body)
        record = decoded if isinstance(decoded, _Record) else decoded[0][0]
        return _row(record)
    except Exception:  # not the plain shape (msgspec's errors, RecursionError, ...)
        return None


def lean_summary_of_element(raw: bytes) -> Summary | None:
    """The row of a kombu virtual-transport element (Redis, memory), or None: decode it in full."""
    if msgspec is None:
        return None
    try:
        element = _element_decoder.decode(raw)
    except Exception:
        return None
    properties = element.properties
    if properties is None or properties.body_encoding != "base64":
        return None
    headers = element.headers
    return lean_summary(element.body, {"task": headers.task} if headers is not None else None)


def summary_of_element(raw: bytes) -> Summary:
    """The row of a virtual-transport element: lean if it can be, else from its full decode."""
    row = lean_summary_of_element(raw)
    return row if row is not None else Summary.of(decode_record(*unwrap(raw)))


def _row(record: Any) -> Summary | None:
    message = record.exception_message
    if len(message) > _UNCUT or not _FAILED_AT.fullmatch(record.failed_at):
        return None
    replayable = False
    aggregate = ""
    raw = bytes(record.envelope)
    # No more brackets than the depth limit: it cannot nest deeper (else the
    # full decode would keep it as text, and the record not replayable).
    if raw.count(b"{") + raw.count(b"[") > MAX_ENVELOPE_DEPTH:
        return None
    envelope = _envelope_decoder.decode(raw)
    if envelope is not None:
        replayable = record.handler is not None
        if envelope.aggregate_id is not None:
            aggregate = str(envelope.aggregate_id)
    return Summary.make(
        id=record.id,
        handler=record.handler,
        event_type=record.event_type,
        event_id=record.event_id,
        aggregate_id=aggregate,
        reason=record.reason,
        exception_type=record.exception_type,
        message=message,
        failed_at=datetime.fromisoformat(record.failed_at).timestamp(),
        attempts=record.attempts,
        replayable=replayable,
    )
