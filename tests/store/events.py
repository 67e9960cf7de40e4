"""Event classes of the store tests: today's code and the old code that wrote v1/v2 data.

``store.todo_created`` evolved twice::

    v1  {"name": str}
    v2  {"name": str, "priority": str}      v1 -> v2: priority "normal"
    v3  {"title": str, "priority": str}     v2 -> v3: name renamed to title

Each generation lives in a registry of its own (as it would in its own
deployment), so the old classes never replace the current one.
"""

from __future__ import annotations

from typing import Any

from eventbus import Event, EventRegistry

CURRENT = EventRegistry()  #: what the code reads with today
OLD_V1 = EventRegistry()  #: the first release
OLD_V2 = EventRegistry()  #: the second release


class TodoCreated(Event, registry=CURRENT):
    event_type = "store.todo_created"
    event_version = 3

    title: str
    priority: str


class TodoDone(Event, registry=CURRENT):
    event_type = "store.todo_done"


@CURRENT.upcaster("store.todo_created", from_version=1)
def _todo_created_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "priority": "normal"}


@CURRENT.upcaster(TodoCreated, from_version=2)
def _todo_created_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    data["title"] = data.pop("name")  # in place: the reader must not see its input change
    return data


class TodoCreatedV1(Event, registry=OLD_V1):
    event_type = "store.todo_created"

    name: str


class TodoArchived(Event, registry=OLD_V1):
    """A type the current code dropped."""

    event_type = "store.todo_archived"
    event_version = 4


class TodoCreatedV2(Event, registry=OLD_V2):
    event_type = "store.todo_created"
    event_version = 2

    name: str
    priority: str
