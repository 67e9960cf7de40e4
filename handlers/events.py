"""The example domain's events: users and todos."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from eventbus import Event


class EventTypes(StrEnum):
    """The type names, for code that publishes by name (``create_event``)."""

    USER_REGISTERED = "user.registered"
    TODO_CREATED = "todo.created"
    TODO_COMPLETED = "todo.completed"


class UserRegistered(Event):
    event_type = EventTypes.USER_REGISTERED.value

    user_id: str
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    name: str = Field(min_length=1)


class TodoCreated(Event):
    event_type = EventTypes.TODO_CREATED.value

    title: str = Field(min_length=1, max_length=200)
    priority: Literal["low", "normal", "high"] = "normal"
    assignee: str | None = None


class TodoCompleted(Event):
    event_type = EventTypes.TODO_COMPLETED.value

    completed_by: str
