"""The app of test_quorum_queues' ``celery worker`` subprocesses, configured from the environment.

``celery -A tests.integration.quorum_app worker`` (and ``eventbus -A
tests.integration.quorum_app dlq ...``) builds its bus from :class:`QuorumConfig`
(``QUORUM_*`` variables); the test process builds its publishing bus from the
same config with :func:`build_bus`, so both declare the same quorum queues.

One handler, :data:`HANDLER`, on a quorum queue. For each event
(:class:`QuorumProbe`) it counts its attempt in Redis, then kills its own
pool process with SIGKILL if the event says ``kill`` (every time: a message
that kills whatever runs it), fails while the attempt is at most ``fails``
(retried 3 s later), and records the event as handled.
"""

from __future__ import annotations

import os
import signal
from dataclasses import asdict, dataclass
from typing import Any

import redis

from eventbus import Envelope, Event, EventBus
from tests.support import BROKER_URLS, STATE_REDIS_URL, make_app

HANDLER = "it.quorum.probe"  #: the handler's (and its task's) name
#: Retries of :data:`HANDLER`: each 3 s later (backoff 3 s, capped at 3 s, no jitter).
#: Three seconds is binary 11: Celery's delayed delivery holds such a retry in two
#: delay queues, ``celery_delayed_1`` and then ``celery_delayed_0``, so a second
#: retry passes again through a queue the message already expired from: the
#: dead-letter cycle of celery/celery#9867 (a 1 s or 2 s wait uses one queue only).
RETRY_OPTIONS: dict[str, Any] = {
    "max_retries": 3,
    "retry_backoff": 3,
    "retry_backoff_max": 3,
    "retry_jitter": False,
}


class QuorumProbe(Event):
    """One numbered event: fail its first ``fails`` attempts, or kill every run (``kill``)."""

    event_type = "it.quorum.probe"

    n: int
    fails: int = 0
    kill: bool = False


@dataclass(frozen=True)
class QuorumConfig:
    """What a worker subprocess needs to know, passed as ``QUORUM_*`` environment variables."""

    queue: str
    dead_letter_queue: str
    prefix: str  #: of the Redis keys where the handler counts what it did
    delivery_limit: int = 5

    def environ(self) -> dict[str, str]:
        return {f"QUORUM_{k.upper()}": str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_environ(cls, environ: dict[str, str]) -> QuorumConfig:
        return cls(
            queue=environ["QUORUM_QUEUE"],
            dead_letter_queue=environ["QUORUM_DEAD_LETTER_QUEUE"],
            prefix=environ["QUORUM_PREFIX"],
            delivery_limit=int(environ["QUORUM_DELIVERY_LIMIT"]),
        )


def effects_client() -> redis.Redis:
    """The Redis where the handler counts attempts and handled events (the test state's)."""
    return redis.Redis.from_url(STATE_REDIS_URL, socket_connect_timeout=5, socket_timeout=10)


def build_bus(config: QuorumConfig, **overrides: Any) -> EventBus:
    """The bus of the test (publisher) or of a worker subprocess, on quorum queues."""
    app = make_app(
        BROKER_URLS["rabbitmq"],
        eventbus_queue_type="quorum",
        eventbus_delivery_limit=config.delivery_limit,
        # Flower's task-sent events are not what these tests count.
        task_send_sent_event=False,
        **overrides,
    )
    bus = EventBus(app, default_queue=config.queue, dead_letter_queue=config.dead_letter_queue)
    client = effects_client()
    attempts, handled = f"{config.prefix}attempts", f"{config.prefix}handled"

    def probe(envelope: Envelope[QuorumProbe]) -> None:
        event_id = str(envelope.event_id)
        attempt = int(client.hincrby(attempts, event_id, 1))
        if envelope.data.kill:
            os.kill(os.getpid(), signal.SIGKILL)  # a segfault, the OOM killer
        if attempt <= envelope.data.fails:
            raise RuntimeError(f"event {envelope.data.n}: attempt {attempt} fails on purpose")
        client.hincrby(handled, event_id, 1)

    bus.subscribe(QuorumProbe, handler=probe, name=HANDLER, **RETRY_OPTIONS)
    return bus


if os.environ.get("QUORUM_QUEUE"):
    bus = build_bus(
        QuorumConfig.from_environ(dict(os.environ)),
        worker_hijack_root_logger=True,  # the worker's log is the test's evidence
    )
    app = bus.app
