"""The example handlers' event models as plain pydantic models (for bench.raw_pydantic_app).

``handlers/events.py`` defines ``UserRegistered``, ``TodoCreated`` and
``TodoCompleted`` on eventbus's ``Event`` base; a raw Celery app that
validates the same payloads cannot import eventbus, so these are the same
models written on pydantic's ``BaseModel``: same class names, same fields,
types, defaults and ``Field`` constraints, and ``Event``'s configuration
(``extra="forbid"``, ``frozen=True``). Neither side has a custom validator.

``bench/test_raw_models.py`` checks that they stay equal: same JSON schema,
same configuration, same validators, and the same verdict (accepted with the
same values, or rejected at the same places) on a set of valid and invalid
payloads. Change both files together.

This module imports pydantic only.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _EventModel(BaseModel):
    # eventbus.Event's configuration: unknown fields rejected, instances immutable.
    model_config = ConfigDict(extra="forbid", frozen=True)


class UserRegistered(_EventModel):
    user_id: str
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    name: str = Field(min_length=1)


class TodoCreated(_EventModel):
    title: str = Field(min_length=1, max_length=200)
    priority: Literal["low", "normal", "high"] = "normal"
    assignee: str | None = None


class TodoCompleted(_EventModel):
    completed_by: str


#: The models by event type name: what handlers/events.py's ``event_type`` says.
MODELS: dict[str, type[BaseModel]] = {
    "user.registered": UserRegistered,
    "todo.created": TodoCreated,
    "todo.completed": TodoCompleted,
}
