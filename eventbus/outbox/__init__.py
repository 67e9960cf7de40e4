"""The transactional outbox: events committed with your data, published by a relay.

Publishing from inside a database transaction has two ways to go wrong: the
broker gets an event whose transaction then rolls back, or the transaction
commits and the publish fails. The outbox makes them one unit: rows are
written in the caller's transaction (committed with the data, or rolled back
with it), and a relay publishes pending rows afterwards and marks them sent::

    from eventbus.outbox import Outbox

    outbox = Outbox(engine)            # or Outbox("postgresql://..."); SQLite works too
    outbox.create_schema()             # once (or outbox_table() in a migration)

    with engine.begin() as conn:       # the request's own transaction
        conn.execute(orders.insert().values(id=order_id, ...))
        outbox.add(OrderPlaced(total=42), connection=conn,
                   aggregate_id=order_id, aggregate_type="Order")

    # elsewhere, on a schedule: publish what is pending
    result = outbox.relay(bus)         # RelayResult(published=1, failed=0, pending_left=0)

With the event store, ``outbox.append(store, envelopes, expected_version=n)``
appends the events and their rows in one transaction; the rows carry the
store's sequence numbers, and the bus publishes them as they are.

Running the relay:

* Celery beat: the bus registers the task ``eventbus.relay_outbox`` on its
  app; it reads the ``eventbus_outbox_url`` setting (see
  :mod:`eventbus.celery.relay_task` for the ``beat_schedule`` entry).
* A process of its own: ``eventbus outbox relay --loop`` (``eventbus outbox
  status`` counts pending and failed rows).
* Your code: :class:`OutboxRelay` (``relay_once``, ``drain``, ``run_forever``).

Several relays at once never publish a row twice (PostgreSQL: ``FOR UPDATE
SKIP LOCKED``; SQLite: one writer at a time). Delivery is at-least-once: a
relay that dies between publishing and its commit publishes those rows again
(same ``event_id``); see :mod:`eventbus.outbox.relay` for failures.

The payload helpers (:func:`outbox_payload`, :func:`decode_outbox_payload`)
import without SQLAlchemy, for integrations that write rows with their own
ORM; everything else needs ``pip install 'eventbus[store]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventbus.outbox.payload import decode_outbox_payload, outbox_payload

if TYPE_CHECKING:
    from eventbus.outbox.relay import OutboxRelay, RelayResult
    from eventbus.outbox.sql import DEFAULT_TABLE, FailedRow, Outbox, OutboxStatus, outbox_table

__all__ = [
    "DEFAULT_TABLE",
    "FailedRow",
    "Outbox",
    "OutboxRelay",
    "OutboxStatus",
    "RelayResult",
    "decode_outbox_payload",
    "outbox_payload",
    "outbox_table",
]

_LAZY = {
    "DEFAULT_TABLE": "eventbus.outbox.sql",
    "FailedRow": "eventbus.outbox.results",
    "Outbox": "eventbus.outbox.sql",
    "OutboxStatus": "eventbus.outbox.results",
    "outbox_table": "eventbus.outbox.sql",
    "OutboxRelay": "eventbus.outbox.relay",
    "RelayResult": "eventbus.outbox.results",
}


def __getattr__(name: str) -> Any:
    # SQLAlchemy is an optional dependency: import it only when asked for.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'eventbus.outbox' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
