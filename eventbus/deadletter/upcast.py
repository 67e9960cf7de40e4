"""A dead letter's data at its event class's current version: what an operator edits and replays."""

from __future__ import annotations

from typing import Any

from eventbus.deadletter.record import DeadLetter
from eventbus.domain.events import EventRegistry
from eventbus.errors import EventBusError

__all__ = ["current_data"]


def current_data(registry: EventRegistry, record: DeadLetter) -> tuple[Any, str | None]:
    """The record's data at its event class's current version, and how it got there.

    A record written at an older schema version is upcast (the registry's
    upcasters, as every reader does): the operator edits, and the replay
    sends, data of the version the handlers run today. ``None`` when no
    upcast was needed (or the type is unknown here: the replay says so).
    Raises :class:`~eventbus.errors.EventVersionError` when the upcasters
    cannot do it. ``eventbus dlq edit`` and the console's edit both use it.
    """
    wire = record.envelope or {}
    data = wire.get("data")
    version = wire.get("version")
    event_type = str(wire.get("event_type"))
    try:
        latest = registry.get(event_type).event_version
    except EventBusError:
        return data, None
    if not isinstance(data, dict) or not isinstance(version, int) or version == latest:
        return data, None
    upcast = registry.upcasters.upcast(event_type, version, data, latest)
    return upcast, f"upcast from v{version} to v{latest}"
