"""dramatiq, as a reference (issue 16): 5 no-op actors, one message each per event.

Not a contender with equal guarantees: dramatiq acks after the actor ran
(its default) but sends no task events and, on RabbitMQ, asks for no
publisher confirms (``confirm_delivery=False``, its default). It is there to
show how fast a Python worker of no-op jobs can go on the same machine in the
same run. Each actor counts its execution as every contender does
(``bench.counting``), from the same envelope wire dict that raw Celery's tasks
receive; an event is 5 messages, one per actor, as an event is 5 handler
messages for the others.

Dramatiq's defaults throughout: its default middleware, its brokers' defaults
(Redis: a namespace of the run's own, so its keys are the run's; RabbitMQ:
queues ``Q``, ``Q.DQ``, ``Q.XQ`` of the run's own). The worker is the
``dramatiq`` command with its defaults, 2 processes x 8 threads.

``python -m dramatiq bench.dramatiq_app:broker`` builds it from the
environment (``BENCH_BROKER_URL``, ``BENCH_RUN``, ``BENCH_COUNTER_URL``); the
benchmarks call :func:`build`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from bench.counting import count

FANOUT = 5
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/14"
PROCESSES, THREADS = 2, 8  # the dramatiq command's defaults


def queue_name(run: str) -> str:
    return f"bench.{run}.dramatiq"


def amqp_queues(run: str) -> list[str]:
    """The queues dramatiq's RabbitMQ broker declares for one queue name."""
    q = queue_name(run)
    return [q, f"{q}.DQ", f"{q}.XQ"]


def pika_url(url: str) -> str:
    """kombu's ``amqp://host//`` (the default vhost ``/``) as pika reads it: ``/%2F``.

    (pika takes the path after its first slash, unquoted: ``//`` would be vhost ``""``.)
    """
    parts = urlsplit(url)
    if parts.path in ("", "/", "//"):
        parts = parts._replace(path="/%2F")
    return urlunsplit(parts)


@dataclass
class DramatiqApp:
    broker: Any
    actors: list[Any]
    queue: str


def build(broker_url: str, run: str) -> DramatiqApp:
    broker: Any
    if broker_url.startswith("redis"):
        broker = RedisBroker(url=broker_url, namespace=f"bench-dq-{run}")
    else:
        broker = RabbitmqBroker(url=pika_url(broker_url))
    queue = queue_name(run)

    def actor(name: str) -> Any:
        def body(payload: dict[str, Any]) -> None:
            count(payload["data"]["key"])

        body.__name__ = body.__qualname__ = name
        return dramatiq.actor(body, actor_name=name, queue_name=queue, broker=broker)

    actors = [actor(f"bench_dramatiq_{i}") for i in range(FANOUT)]
    return DramatiqApp(broker=broker, actors=actors, queue=queue)


def publish(dq: DramatiqApp, payloads: list[dict[str, Any]]) -> None:
    """One message per actor and event: 5 ``send`` per event (the payload built beforehand)."""
    actors = dq.actors
    for payload in payloads:
        for actor in actors:
            actor.send(payload)


def argv(python: str) -> list[str]:
    return [
        python,
        "-m",
        "dramatiq",
        "bench.dramatiq_app:broker",
        "--processes",
        str(PROCESSES),
        "--threads",
        str(THREADS),
    ]


_from_env: DramatiqApp | None = None


def from_env() -> DramatiqApp:
    global _from_env
    if _from_env is None:
        _from_env = build(
            os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER_URL),
            os.environ.get("BENCH_RUN", "default"),
        )
        dramatiq.set_broker(_from_env.broker)
    return _from_env


def __getattr__(name: str) -> Any:
    # ``dramatiq bench.dramatiq_app:broker`` resolves ``broker`` here (PEP 562).
    if name == "broker":
        return from_env().broker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
