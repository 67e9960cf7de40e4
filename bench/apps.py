"""The benchmark's Celery app: 5 eventbus handlers, 5 raw tasks, 5 celery-pubsub tasks.

All three fan-outs live on one app so that one worker serves all of them
with identical settings, and the runs can be interleaved on that worker.
Every handler/task is a no-op that counts its execution with a Redis ``INCR``
on the key carried in the event (``data.key``), in a separate Redis db.

A worker loads it with ``celery -A bench.apps:app worker``; ``app`` is then
built on first access from the environment:

``BENCH_BROKER_URL``   broker (default ``redis://127.0.0.1:6379/14``)
``BENCH_RUN``          run id, the queue-name prefix (``bench.<run>.eventbus`` ...)
``BENCH_COUNTER_URL``  Redis for the execution counters (default db 15)
``BENCH_STOCK_TRANSPORT``  set: kombu's own Redis transport (the raw Celery worker)

The benchmark scripts call :func:`build` directly instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from celery_pubsub.pubsub import PubSubManager

from bench.counting import DEFAULT_COUNTER_URL as DEFAULT_COUNTER_URL  # re-exported
from bench.counting import count
from bench.settings import make_app
from eventbus import Envelope, Event, EventBus, create_event

FANOUT = 5
TOPIC = "bench.happened"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/14"


class BenchHappened(Event):
    """The benchmark's event: a few fields of the usual kinds (~500 bytes on the wire)."""

    event_type = TOPIC

    seq: int
    key: str
    title: str
    tags: list[str] = []
    amount: float = 0.0


# -- the app -------------------------------------------------------------------


def queue_names(run: str) -> dict[str, str]:
    return {
        "eventbus": f"bench.{run}.eventbus",
        "raw": f"bench.{run}.raw",
        "pubsub": f"bench.{run}.pubsub",
        "dlq": f"bench.{run}.dlq",
    }


def exchange_names(run: str) -> dict[str, str]:
    """Per-run event and remote-control exchanges: no cross-talk with other Celery
    apps on a shared RabbitMQ vhost, and the run can delete them afterwards."""
    return {
        "event_exchange": f"bench.{run}.ev",
        "control_exchange": f"bench.{run}.ctl",
    }


def created_exchanges(run: str) -> list[str]:
    names = exchange_names(run)
    ctl = names["control_exchange"]
    return [names["event_exchange"], f"{ctl}.pidbox", f"reply.{ctl}.pidbox"]


@dataclass
class BenchApp:
    app: Any
    bus: EventBus
    raw_tasks: list[Any]
    pubsub: PubSubManager
    queues: dict[str, str]

    @property
    def consume_queues(self) -> list[str]:
        return [self.queues["eventbus"], self.queues["raw"], self.queues["pubsub"]]


def build(broker_url: str, run: str, *, stock_transport: bool = False) -> BenchApp:
    """The app, its bus with 5 handlers, 5 raw tasks and 5 celery-pubsub subscribers.

    ``stock_transport``: raw Celery as deployed, for the raw tasks' and
    celery-pubsub's worker: kombu's own Redis transport instead of eventbus's
    (celeryconfig's default on Redis), and Celery's own sending of task
    events instead of eventbus's batches (eventbus.celery.internals.task_events), which the bus
    on this app would otherwise install in the worker.
    """
    queues = queue_names(run)
    overrides: dict[str, Any] = {**exchange_names(run)}
    if stock_transport:
        overrides["eventbus_task_events_interval"] = 0
    if os.environ.get("BENCH_COALESCED_ACKS") == "0":  # bench/bench_acks.py's B side
        overrides["eventbus_coalesced_acks"] = False
    if os.environ.get("BENCH_TASK_EVENTS") == "0":  # what the worker's task events cost
        overrides["worker_send_task_events"] = False
    app = make_app(f"bench-{run}", broker_url, stock_transport=stock_transport, **overrides)
    if stock_transport and not broker_url.startswith("redis"):
        # kombu pools connections (and their producers' channels) per connection
        # parameters, across apps: in a process that also has eventbus's app,
        # raw Celery's apply_async would reuse channels that eventbus put in
        # confirm mode, and the broker would confirm what raw Celery never waits
        # for. A parameter of its own (the connection's name) gives it its own pool.
        app.conf.broker_transport_options = {
            **app.conf.broker_transport_options,
            "client_properties": {"connection_name": f"bench-{run}-stock"},
        }
    bus = EventBus(app, default_queue=queues["eventbus"], dead_letter_queue=queues["dlq"])

    for i in range(FANOUT):

        def handler(envelope: Envelope[BenchHappened]) -> None:
            count(envelope.data.key)

        bus.subscribe(BenchHappened, handler=handler, name=f"bench.eventbus.handler_{i}")

    def plain_task(name: str, queue: str) -> Any:
        def task(payload: dict[str, Any]) -> None:
            count(payload["data"]["key"])

        task.__name__ = task.__qualname__ = name.rpartition(".")[2]
        return app.task(name=name, queue=queue, shared=False)(task)

    raw_tasks = [plain_task(f"bench.raw.task_{i}", queues["raw"]) for i in range(FANOUT)]

    # celery-pubsub's module-level publish() uses one global manager; a manager
    # per app keeps two brokers' apps in one process apart (same code path).
    pubsub = PubSubManager()
    for i in range(FANOUT):
        pubsub.subscribe(TOPIC, plain_task(f"bench.pubsub.task_{i}", queues["pubsub"]))

    return BenchApp(app=app, bus=bus, raw_tasks=raw_tasks, pubsub=pubsub, queues=queues)


def make_events(n: int, key: str) -> list[BenchHappened]:
    return [
        BenchHappened(
            seq=i,
            key=key,
            title=f"benchmark event number {i}",
            tags=["bench", "eventbus", "celery"],
            amount=i * 1.25,
        )
        for i in range(n)
    ]


def wire_payloads(events: list[BenchHappened]) -> list[dict[str, Any]]:
    """What raw Celery and celery-pubsub send: each event's envelope wire dict."""
    return [create_event(BenchHappened, event).to_wire() for event in events]


# -- publishing, one function per contender -------------------------------------


def publish_eventbus(
    bench: BenchApp, events: list[BenchHappened], payloads: list[dict[str, Any]]
) -> None:
    publish = bench.bus.publish
    for event in events:
        publish(event)


def publish_raw(
    bench: BenchApp, events: list[BenchHappened], payloads: list[dict[str, Any]]
) -> None:
    tasks = bench.raw_tasks
    for payload in payloads:
        args = (payload,)
        for task in tasks:
            task.apply_async(args)


def publish_pubsub(
    bench: BenchApp, events: list[BenchHappened], payloads: list[dict[str, Any]]
) -> None:
    publish = bench.pubsub.publish
    for payload in payloads:
        publish(TOPIC, payload)


PUBLISHERS = {"raw": publish_raw, "eventbus": publish_eventbus, "celery-pubsub": publish_pubsub}
#: Which queue each contender's messages go to.
QUEUE_OF = {"raw": "raw", "eventbus": "eventbus", "celery-pubsub": "pubsub"}


# -- the worker's entry point ----------------------------------------------------

_from_env: BenchApp | None = None


def from_env() -> BenchApp:
    global _from_env
    if _from_env is None:
        _from_env = build(
            os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER_URL),
            os.environ.get("BENCH_RUN", "default"),
            stock_transport=bool(os.environ.get("BENCH_STOCK_TRANSPORT")),
        )
    return _from_env


def __getattr__(name: str) -> Any:
    # ``celery -A bench.apps:app`` resolves ``app`` here (PEP 562).
    if name == "app":
        return from_env().app
    if name == "bus":
        return from_env().bus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
