"""The stand-in for a queue element that cannot be delivered as it is.

Whatever bytes sit on a Redis list, eventbus's transport
(:mod:`eventbus.celery.internals.redis_transport`) hands the consumer a message: an element
that is not a message kombu can read (not JSON, not a kombu message, nested
deeper than a JSON decoder goes), or one larger than its queue's limit (never
decoded, by Redis or by the worker), is taken, recorded as unacked and
delivered as a stand-in: a kombu message of content type :data:`CONTENT_TYPE`
whose body is the element's first :data:`KEPT_BYTES` bytes, as a JSON string
(a byte that is not UTF-8 reads as U+FFFD in Python, as it does in a dead
letter's ``raw_body``), and whose headers give the element's size (and, for
an oversized kombu message, its ``task`` and ``id``).

No serializer is registered for that content type, so nothing ever decodes
it; eventbus's worker dead-letters it (reason: :data:`REASON_HEADER`) and acks
it. Until then it is an ordinary unacked message: a worker that dies first
leaves it to kombu's restore after ``visibility_timeout``, which puts the
stand-in back on its queue, to be dead-lettered then.

The take script builds the same stand-in in Lua; :func:`stand_in` builds it
in Python (an element Redis could read but Python cannot).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from eventbus.deadletter.record import MAX_RAW_BODY

__all__ = ["CONTENT_TYPE", "KEPT_BYTES", "Refusal", "StandIn", "read_stand_in", "stand_in"]

#: The content type of a stand-in: never accepted, never decoded.
CONTENT_TYPE = "application/x-eventbus-undecodable"
#: Header: the element's size in bytes.
SIZE_HEADER = "x-eventbus-raw-size"
#: Header: why the element was not delivered as it is.
REASON_HEADER = "x-eventbus-refused"
#: Header (optional): what was wrong with it, in words.
WHY_HEADER = "x-eventbus-why"
#: Bytes of the element a stand-in keeps (what a dead letter keeps).
KEPT_BYTES = MAX_RAW_BODY

#: Why: ``undecodable`` (not a message kombu can read) or ``oversized`` (over the limit).
Refusal = Literal["undecodable", "oversized"]

#: What a stand-in says when it does not say why.
NOT_A_MESSAGE = "not a message (not JSON, not a kombu message, or nested too deep to decode)"


class StandIn(NamedTuple):
    """What a stand-in stands in for."""

    reason: Refusal
    raw: bytes  #: the first bytes of the element (or body)
    size: int  #: the element's size in bytes
    why: str  #: what was wrong with it


def stand_in(raw: bytes, *, reason: Refusal, delivery_tag: str, queue: str) -> dict[str, Any]:
    """The kombu message (as on the wire) standing in for the element ``raw`` of ``queue``."""
    return {
        "body": raw[:KEPT_BYTES].decode("utf-8", "replace"),
        "content-encoding": "utf-8",
        "content-type": CONTENT_TYPE,
        "headers": {SIZE_HEADER: len(raw), REASON_HEADER: reason},
        "properties": {
            # The default exchange routes by queue name: a restore puts it back there.
            "delivery_info": {"exchange": "", "routing_key": queue},
            "delivery_tag": delivery_tag,
            "priority": 0,
        },
    }


def read_stand_in(content_type: object, headers: object, body: object) -> StandIn | None:
    """What this message stands in for, if it is a stand-in, else None.

    A producer may forge one: whatever its headers say, it is refused.
    """
    if content_type != CONTENT_TYPE:
        return None
    headers = headers if isinstance(headers, Mapping) else {}
    reason: Refusal = "oversized" if headers.get(REASON_HEADER) == "oversized" else "undecodable"
    if isinstance(body, bytes):
        raw = body[:KEPT_BYTES]
    else:
        raw = str(body or "").encode("utf-8", "replace")[:KEPT_BYTES]
    size = headers.get(SIZE_HEADER)
    why = headers.get(WHY_HEADER)
    return StandIn(
        reason,
        raw,
        size if type(size) is int and size >= 0 else len(raw),
        why[:200] if isinstance(why, str) else NOT_A_MESSAGE,
    )
