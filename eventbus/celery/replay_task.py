"""``eventbus.replay_dead_letters``: replay from anywhere a task can be sent, Flower included.

An operator without a shell triggers it through Flower's API::

    curl -u admin:admin -H 'Content-Type: application/json' \\
         -d '{"kwargs": {"ids": ["3f2a9c…"]}}' \\
         http://localhost:5555/api/task/async-apply/eventbus.replay_dead_letters

Selections: ``ids`` (a list), or ``handler`` / ``event_type`` / ``exception_type``
patterns, or ``all=True``. Anything else fails the task before a single record
is replayed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventbus.errors import DeadLetterError

if TYPE_CHECKING:
    from eventbus.celery.bus import EventBus

__all__ = ["REPLAY_TASK", "register_replay_task"]

REPLAY_TASK = "eventbus.replay_dead_letters"  #: the replay task's name


def register_replay_task(bus: EventBus) -> Any:
    """Register the replay task on the bus's app (on its default queue); return it."""

    def replay_dead_letters(
        ids: list[str] | None = None,
        handler: str | None = None,
        event_type: str | None = None,
        exception_type: str | None = None,
        all: bool = False,  # shadows the builtin: it is the name an operator types
    ) -> dict[str, Any]:
        """Replay dead letters by id, by filter, or all of them; returns what was replayed."""
        dead_letters = bus.dead_letters
        filters = {"handler": handler, "event_type": event_type, "exception_type": exception_type}
        if ids is not None:
            if not isinstance(ids, list) or not all_strings(ids) or not ids:
                raise DeadLetterError("ids must be a non-empty list of dead-letter ids")
            if any(filters.values()) or all:
                raise DeadLetterError("give ids, or filters / all=True, not both")
            # Resolve every id first: an unknown one fails the task before any replay.
            records = [dead_letters.get(record_id) for record_id in ids]
            replayed = [str(dead_letters.replay(record.id).event_id) for record in records]
            return {"replayed": len(replayed), "event_ids": replayed}
        for name, value in filters.items():
            if value is not None and not isinstance(value, str):
                raise DeadLetterError(f"{name} must be a string pattern, got {value!r}")
        if not all and not any(filters.values()):
            raise DeadLetterError(
                "nothing selected: pass ids=[...], a handler/event_type/exception_type "
                "pattern, or all=true"
            )
        return {"replayed": dead_letters.replay_all(**filters)}

    return bus.app.task(
        name=REPLAY_TASK,
        shared=False,
        # Declared as the handler queues are (on RabbitMQ: with the DLX), or a
        # send through this task would meet an inequivalent declaration.
        queue=bus.handler_queue(bus.default_queue),
        acks_late=False,  # a replay that dies half-way must not run again by itself
        ignore_result=False,
    )(replay_dead_letters)


def all_strings(values: list[Any]) -> bool:
    return all(isinstance(value, str) for value in values)
