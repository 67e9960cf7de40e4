"""The todo app's domain events (registered when this module is imported)."""

from pydantic import Field

from eventbus import Event


class TodoCreated(Event):
    event_type = "todos.todo_created"
    event_version = 1

    todo_id: int
    title: str = Field(min_length=1, max_length=200)
