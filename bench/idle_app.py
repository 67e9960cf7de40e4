"""The idle benchmark's app: an eventbus handler or a raw Celery task that notes when it starts.

Each records the moment it starts (``time.monotonic()``: one clock for every
process of the machine) with the probe's sequence number, in a Redis list
(``BENCH_PROBE_URL``, key ``bench:<run>:probe:<kind>``), for
``bench_idle.py`` to set against the moment ``publish`` returned.

Three kinds of worker, each on a queue of its own (``bench.<run>.idle.<kind>``):

``eventbus``  an eventbus handler; eventbus's Redis transport, idle channels told by Redis
``poll``      the same, with ``eventbus_idle_wake = False``: idle channels poll every 0.05 s
``raw``       a raw Celery task; kombu's own Redis transport (``BRPOP``)

``celery -A bench.idle_app:app worker`` builds it from the environment:
``BENCH_BROKER_URL``, ``BENCH_RUN``, ``BENCH_IDLE_KIND``, ``BENCH_PROBE_URL``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import redis

from bench.settings import make_app
from eventbus import Envelope, Event, EventBus

KINDS = ("eventbus", "poll", "raw")


class Probed(Event):
    """The probe's event: its sequence number."""

    event_type = "bench.probed"

    seq: int


@dataclass
class IdleApp:
    kind: str
    app: Any
    queue: str
    probe_key: str
    bus: EventBus | None = None
    raw_task: Any = None

    def publish(self, seq: int) -> None:
        """Publish probe ``seq``: ``bus.publish`` or ``apply_async``, as a producer would."""
        if self.bus is not None:
            self.bus.publish(Probed(seq=seq))
        else:
            self.raw_task.apply_async((seq,))


def build(broker_url: str, run: str, kind: str, *, probe_url: str | None = None) -> IdleApp:
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {', '.join(KINDS)}")
    queue = f"bench.{run}.idle.{kind}"
    probe_key = f"bench:{run}:probe:{kind}"
    overrides: dict[str, Any] = {
        # (per run: no cross-talk with other Celery apps on the broker)
        "event_exchange": f"bench.{run}.idle.ev",
        "control_exchange": f"bench.{run}.idle.ctl",
    }
    if kind == "poll":
        overrides["broker_transport_options"] = {"eventbus_idle_wake": False}
    app = make_app(
        f"bench-idle-{run}-{kind}", broker_url, stock_transport=kind == "raw", **overrides
    )
    probes = redis.Redis.from_url(probe_url or broker_url)

    def record(seq: int) -> None:
        started = time.monotonic()
        probes.rpush(probe_key, f"{seq} {started!r}")

    idle = IdleApp(kind=kind, app=app, queue=queue, probe_key=probe_key)
    if kind == "raw":

        @app.task(name="bench.idle.raw_probe", queue=queue, shared=False)
        def raw_probe(seq: int) -> None:
            record(seq)

        idle.raw_task = raw_probe
        return idle

    bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")

    @bus.subscribe(Probed, name="bench.idle.eventbus_probe")
    def eventbus_probe(envelope: Envelope[Probed]) -> None:
        record(envelope.data.seq)

    idle.bus = bus
    return idle


_from_env: IdleApp | None = None


def from_env() -> IdleApp:
    global _from_env
    if _from_env is None:
        _from_env = build(
            os.environ["BENCH_BROKER_URL"],
            os.environ.get("BENCH_RUN", "default"),
            os.environ.get("BENCH_IDLE_KIND", "eventbus"),
            probe_url=os.environ.get("BENCH_PROBE_URL") or None,
        )
    return _from_env


def __getattr__(name: str) -> Any:
    # ``celery -A bench.idle_app:app`` resolves ``app`` here (PEP 562).
    if name == "app":
        return from_env().app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
