"""The guarantees benchmark's app: 5 plain, 5 idempotent and 5 ordered handlers.

Each set listens to its own event type on its own queue, so one worker serves
the three sets with identical settings and the runs can be interleaved on it.
Every handler is a no-op that INCRs the run's counter (``data.key``) in the
counter Redis db, like ``bench.apps``. Idempotency claims and sequence
positions live in that db too, under the run's prefix.

``celery -A bench.guarantees_app:app worker`` builds it from ``BENCH_BROKER_URL``,
``BENCH_RUN`` and ``BENCH_COUNTER_URL``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bench.apps import DEFAULT_BROKER_URL, DEFAULT_COUNTER_URL, count, exchange_names
from bench.settings import make_app
from eventbus import Envelope, Event, EventBus

FANOUT = 5
AGGREGATES = 50  #: events go round-robin over this many aggregates
SETS = ("plain", "idempotent", "ordered")


class PlainHappened(Event):
    event_type = "bench.guarantees.plain"
    seq: int
    key: str
    title: str


class IdempotentHappened(Event):
    event_type = "bench.guarantees.idempotent"
    seq: int
    key: str
    title: str


class OrderedHappened(Event):
    event_type = "bench.guarantees.ordered"
    seq: int
    key: str
    title: str


EVENT_OF: dict[str, type[Event]] = {
    "plain": PlainHappened,
    "idempotent": IdempotentHappened,
    "ordered": OrderedHappened,
}


@dataclass
class GuaranteesApp:
    app: Any
    bus: EventBus
    queues: dict[str, str]
    state_prefix: str


def build(broker_url: str, run: str, counter_url: str = DEFAULT_COUNTER_URL) -> GuaranteesApp:
    queues = {name: f"bench.{run}.{name}" for name in SETS}
    queues["dlq"] = f"bench.{run}.dlq"
    prefix = f"bench:{run}:state:"
    app = make_app(
        f"bench-{run}",
        broker_url,
        eventbus_redis_url=counter_url,
        eventbus_redis_prefix=prefix,
        **exchange_names(run),
    )
    bus = EventBus(app, dead_letter_queue=queues["dlq"])
    for name in SETS:
        options = {"idempotent": name == "idempotent", "ordered": name == "ordered"}
        for i in range(FANOUT):

            def handler(envelope: Envelope[Any]) -> None:
                count(envelope.data.key)

            bus.subscribe(
                EVENT_OF[name],
                handler=handler,
                name=f"bench.{name}.handler_{i}",
                queue=queues[name],
                **options,
            )
    return GuaranteesApp(app=app, bus=bus, queues=queues, state_prefix=prefix)


def make_events(kind: str, n: int, key: str) -> list[Event]:
    cls = EVENT_OF[kind]
    return [cls(seq=i, key=key, title=f"benchmark event number {i}") for i in range(n)]


def publish(bench: GuaranteesApp, events: list[Event]) -> None:
    publish = bench.bus.publish
    for i, event in enumerate(events):
        # Every set's events carry an aggregate; only the ordered set's get sequences.
        publish(event, aggregate_id=f"agg-{i % AGGREGATES}", aggregate_type="Bench")


_from_env: GuaranteesApp | None = None


def from_env() -> GuaranteesApp:
    global _from_env
    if _from_env is None:
        _from_env = build(
            os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER_URL),
            os.environ.get("BENCH_RUN", "default"),
            os.environ.get("BENCH_COUNTER_URL", DEFAULT_COUNTER_URL),
        )
    return _from_env


def __getattr__(name: str) -> Any:
    if name == "app":
        return from_env().app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
