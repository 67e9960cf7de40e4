"""The event store: an aggregate's events, appended with optimistic concurrency.

::

    from typing import Any

    from eventbus import Envelope, Event, create_event
    from eventbus.store import EventStore

    class TodoCreated(Event):
        event_type = "todo.created"
        title: str

    class TodoDone(Event):
        event_type = "todo.done"

    store = EventStore.from_url("sqlite:///events.db")  # or memory://, postgresql://...
    store.create_schema()

    created = create_event(TodoCreated, {"title": "Buy milk"},
                           aggregate_id="42", aggregate_type="Todo")
    [stored] = store.append([created], expected_version=0)   # 0: a new aggregate
    assert stored.envelope.sequence == 1

    done = create_event(TodoDone, {}, aggregate_id="42", aggregate_type="Todo")
    store.append([done], expected_version=1)  # ConcurrencyError if someone else wrote #2

    def apply(state: dict[str, Any], envelope: Envelope[Any]) -> dict[str, Any]:
        if isinstance(envelope.data, TodoCreated):
            return {**state, "title": envelope.data.title}
        return {**state, "done": True}

    todo = store.replay("42", apply, {}, aggregate_type="Todo")
    # {'title': 'Buy milk', 'done': True}

    for event in store.read_all(after=0):  # every aggregate, in global order
        print(event.position, event.envelope.event_type)

An aggregate is identified by ``(aggregate_type, aggregate_id)``, as on its
envelopes; its events are numbered 1, 2, 3 ... (``envelope.sequence``) by the
store, so publishing the returned envelopes gives ordered handlers the same
numbers. Every read decodes through :meth:`Envelope.from_wire
<eventbus.domain.envelope.Envelope.from_wire>`'s code, so older data is upcast
(:mod:`eventbus.domain.upcasting`); ``load_records``/``read_all_records`` give the
rows undecoded, for types this code no longer knows.

Backends: :class:`InMemoryEventStore`, :class:`SQLEventStore` (SQLite and
PostgreSQL through SQLAlchemy Core: ``pip install 'eventbus[store]'``).
Errors: :class:`~eventbus.errors.ConcurrencyError` (nothing written),
:class:`~eventbus.errors.EventStoreError` (the database's error is its cause).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventbus.store.base import ANY_SCHEME, EventRecord, EventStore, StoredEvent, register_backend
from eventbus.store.memory import InMemoryEventStore

if TYPE_CHECKING:
    from eventbus.store.sql import SQLEventStore

__all__ = ["EventRecord", "EventStore", "InMemoryEventStore", "SQLEventStore", "StoredEvent"]


def __getattr__(name: str) -> Any:
    # SQLAlchemy is an optional dependency: import it only when asked for.
    if name == "SQLEventStore":
        from eventbus.store.sql import SQLEventStore

        return SQLEventStore
    raise AttributeError(f"module 'eventbus.store' has no attribute {name!r}")


def _open_memory_store(url: str, **options: Any) -> EventStore:
    return InMemoryEventStore(**options)


def _open_sql_store(url: str, **options: Any) -> EventStore:
    from eventbus.store.sql import SQLEventStore  # SQLAlchemy is loaded by a SQL URL only

    return SQLEventStore.open(url, **options)


# EventStore.from_url picks among these; the interface itself imports no backend.
register_backend("memory", _open_memory_store)
register_backend(ANY_SCHEME, _open_sql_store)
