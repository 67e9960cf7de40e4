"""Edit-and-replay: the data an operator edits, and its check against the event's schema.

The editor shows a record's data at its event class's *current* version
(upcast by the registry's upcasters, as ``eventbus dlq edit`` does), because
that is what the replay sends. Before anything is sent, the edited text must
be JSON, an object, and valid for the current event class: each failing
field is reported by its path, and nothing is sent. The replay itself is
:meth:`DeadLetterQueue.replay` with ``data``, which validates again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from eventbus.bus.base import BaseEventBus
from eventbus.deadletter.record import DeadLetter
from eventbus.errors import EventBusError, EventVersionError

__all__ = ["Edited", "FieldError", "check_edit", "field_errors"]


@dataclass(frozen=True)
class FieldError:
    """One problem with the edited data: the field's path (``(data)`` for the whole) and why."""

    field: str
    message: str


@dataclass(frozen=True)
class Edited:
    """The outcome of checking an edit: the data to send, or the problems found."""

    data: dict[str, Any] | None
    errors: list[FieldError]


def field_errors(error: ValidationError) -> list[FieldError]:
    """pydantic's errors as (field path, message), without the values given."""
    return [
        FieldError(".".join(str(part) for part in err.get("loc", ())) or "(data)", err["msg"])
        for err in error.errors(include_input=False, include_url=False)
    ]


def check_edit(bus: BaseEventBus, record: DeadLetter, text: str) -> Edited:
    """Parse and validate the edited ``text`` for ``record``'s event type; send nothing."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return Edited(None, [FieldError("(data)", f"not valid JSON: {exc}")])
    if not isinstance(value, dict):
        return Edited(None, [FieldError("(data)", "must be a JSON object")])
    event_type = record.event_type or ""
    try:
        event_class = bus.event_registry.get(event_type)
    except EventBusError as exc:
        return Edited(None, [FieldError("(event type)", str(exc))])
    try:
        event_class.parse_data(value)
    except ValidationError as exc:
        return Edited(None, field_errors(exc))
    except EventVersionError as exc:  # (a validator that upcasts)
        return Edited(None, [FieldError("(data)", str(exc))])
    return Edited(value, [])
