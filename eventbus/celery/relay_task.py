"""``eventbus.relay_outbox``: the outbox relay as a Celery task, for Celery beat.

Every :class:`~eventbus.EventBus` registers it on its app. It relays the
outbox named by the app's settings, batch after batch, until nothing is left
(or ``eventbus_outbox_max_batches`` batches), and returns the counts::

    eventbus_outbox_url = "postgresql://app@db/app"   # required: where the outbox table is
    eventbus_outbox_table = "eventbus_outbox"         # default
    eventbus_outbox_batch_size = 100                  # rows per batch (one transaction)
    eventbus_outbox_max_batches = 100                 # batches per run, at most

    beat_schedule = {
        "eventbus-relay-outbox": {
            "task": "eventbus.relay_outbox",
            "schedule": 1.0,                # seconds
            # A run that waited longer than this (no worker) is dropped, so they
            # do not pile up: the next one relays the same rows.
            "options": {"expires": 10},
        },
    }

Run ``celery -A proj beat`` next to the workers (or ``worker -B`` for one
worker). Runs that overlap are safe: they take different rows (PostgreSQL)
or take turns (SQLite). The task goes to the bus's default queue. Without
``eventbus_outbox_url`` it fails with a :class:`~eventbus.errors.ConfigurationError`
naming the setting.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from eventbus.errors import ConfigurationError, OutboxError

if TYPE_CHECKING:
    from eventbus.celery.bus import EventBus
    from eventbus.outbox.relay import OutboxRelay

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_MAX_BATCHES", "RELAY_TASK", "register_relay_task"]

RELAY_TASK = "eventbus.relay_outbox"  #: the relay task's name
DEFAULT_BATCH_SIZE = 100  #: default of ``eventbus_outbox_batch_size``
DEFAULT_MAX_BATCHES = 100  #: default of ``eventbus_outbox_max_batches``


def register_relay_task(bus: EventBus) -> Any:
    """Register the relay task on the bus's app (on its default queue); return it."""
    relays: dict[tuple[str, str, str | None, int], OutboxRelay] = {}
    lock = threading.Lock()

    def relay_for(batch_size: int) -> OutboxRelay:
        conf = bus.app.conf
        url = conf.get("eventbus_outbox_url")
        if not url:
            raise ConfigurationError(
                f"{RELAY_TASK} needs the eventbus_outbox_url setting: the database URL "
                "of the outbox table (e.g. postgresql://user@host/db)"
            )
        from eventbus.outbox.relay import OutboxRelay
        from eventbus.outbox.sql import DEFAULT_TABLE, Outbox

        key = (
            str(url),
            str(conf.get("eventbus_outbox_table") or DEFAULT_TABLE),
            conf.get("eventbus_outbox_schema") or None,
            batch_size,
        )
        with lock:  # one engine per process (and per setting), made on first use
            relay = relays.get(key)
            if relay is None:
                outbox = Outbox(key[0], table_name=key[1], schema=key[2])
                relay = relays[key] = OutboxRelay(outbox, bus, batch_size=batch_size)
        return relay

    def relay_outbox(
        batch_size: int | None = None, max_batches: int | None = None
    ) -> dict[str, Any]:
        """Publish the outbox's pending rows (eventbus_outbox_url); return what was done."""
        conf = bus.app.conf
        if batch_size is None:
            batch_size = conf.get("eventbus_outbox_batch_size") or DEFAULT_BATCH_SIZE
        if max_batches is None:
            max_batches = conf.get("eventbus_outbox_max_batches") or DEFAULT_MAX_BATCHES
        try:
            size = _positive_int(batch_size, "batch_size")
            batches = _positive_int(max_batches, "max_batches")
        except ValueError as exc:
            raise OutboxError(f"{RELAY_TASK}: {exc}") from None
        return relay_for(size).drain(max_batches=batches).as_dict()

    return bus.app.task(
        name=RELAY_TASK,
        shared=False,
        # Declared as the handler queues are (on RabbitMQ: with the DLX), or a
        # send through this task would meet an inequivalent declaration.
        queue=bus.handler_queue(bus.default_queue),
        # A run that dies half-way is not re-run by the broker: its rows stay
        # pending (rolled back) and the next scheduled run takes them.
        acks_late=False,
        ignore_result=True,  # every second from beat: the counts are in the logs and Flower
    )(relay_outbox)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # from an environment variable
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value
