"""Schema evolution: upcasters bring older event data to the current version.

When an event class changes shape, bump its ``event_version`` and register
one upcaster per step, a function from the data of version N to that of
N + 1::

    class TodoCreated(Event):
        event_type = "todo.created"
        event_version = 2

        title: str
        priority: str  # new in v2

    @upcaster("todo.created", from_version=1)
    def _todo_created_v1(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "priority": "normal"}

Every reader upcasts: :meth:`Envelope.from_wire <eventbus.domain.envelope.Envelope.from_wire>`
runs the chain ``v1 -> v2 -> ... -> current`` before validating the data, and
the worker, the event store's ``load`` and dead-letter replay all decode
through it. Stored events and messages are never rewritten.

Upcasters belong to an :class:`~eventbus.domain.events.EventRegistry` (the
process-wide one unless told otherwise) and work on plain JSON dicts: the
old class need not exist any more.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

from eventbus.errors import EventVersionError

__all__ = ["UPCAST_FROM_KEY", "Upcaster", "Upcasters"]

#: An upcaster: the ``data`` of version N in, the ``data`` of version N + 1 out.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

#: Metadata key of an upcast envelope: the version its data had on the wire.
#: The envelope's own ``version`` is the current one, the version of its data.
UPCAST_FROM_KEY = "eventbus_upcast_from"


class Upcasters:
    """The upcasters of one registry, one per ``(event_type, from_version)`` step.

    Thread-safe. Registering the same function again (a module reload)
    replaces it; a different function for a step that has one raises
    :class:`EventVersionError`.
    """

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}
        self._lock = threading.Lock()

    def register(self, event_type: str, from_version: int, upcaster: Upcaster) -> None:
        if not isinstance(from_version, int) or isinstance(from_version, bool) or from_version < 1:
            raise EventVersionError(
                f"upcaster {_name(upcaster)} of {event_type!r}: from_version must be a "
                f"positive int, got {from_version!r}",
                event_type=event_type,
                version=0,
            )
        key = (event_type, from_version)
        with self._lock:
            current = self._steps.get(key)
            if current is not None and _name(current) != _name(upcaster):
                raise EventVersionError(
                    f"{event_type!r} v{from_version} -> v{from_version + 1} is already upcast "
                    f"by {_name(current)}; {_name(upcaster)} cannot claim it too",
                    event_type=event_type,
                    version=from_version,
                )
            self._steps[key] = upcaster

    def versions(self, event_type: str) -> list[int]:
        """The versions ``event_type`` data can be upcast from, ascending."""
        return sorted(v for (name, v) in self._steps if name == event_type)

    def upcast(
        self, event_type: str, version: int, data: dict[str, Any], current: int
    ) -> dict[str, Any]:
        """``data`` of ``version`` brought to ``current`` (a new dict; ``data`` is untouched).

        Raises :class:`EventVersionError` when ``version`` is newer than
        ``current``, when a step of the chain is missing, or when an upcaster
        fails or returns something other than a dict.
        """
        if version == current:
            return data
        if version > current:
            raise EventVersionError(
                f"{event_type!r} data is v{version}, newer than this code's v{current}: "
                "deploy the code that defines it before reading such events",
                event_type=event_type,
                version=version,
                current=current,
            )
        # The upcasters may change their argument in place; the caller's
        # payload (a dead letter, a stored row) must stay as it was.
        result = copy.deepcopy(data)
        for step in range(version, current):
            upcaster = self._steps.get((event_type, step))
            if upcaster is None:
                raise EventVersionError(
                    f"{event_type!r} data is v{version} and no upcaster goes from v{step} "
                    f"to v{step + 1} (the class is v{current}): register "
                    f"@upcaster({event_type!r}, from_version={step})",
                    event_type=event_type,
                    version=version,
                    current=current,
                )
            try:
                result = upcaster(result)
            except Exception as exc:
                raise EventVersionError(
                    f"upcaster {_name(upcaster)} of {event_type!r} v{step} -> v{step + 1} "
                    f"failed: {type(exc).__name__}: {exc}",
                    event_type=event_type,
                    version=version,
                    current=current,
                ) from exc
            if not isinstance(result, dict):
                raise EventVersionError(
                    f"upcaster {_name(upcaster)} of {event_type!r} v{step} -> v{step + 1} "
                    f"returned {type(result).__name__}, not a dict",
                    event_type=event_type,
                    version=version,
                    current=current,
                )
        return result


def _name(func: Callable[..., Any]) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"
