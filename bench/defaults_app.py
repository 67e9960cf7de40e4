"""Raw Celery as a team runs it before adopting anything: Celery's default settings.

The "raw-defaults" contender (issue 16): 5 plain tasks, each counting its
execution like every other contender's (``bench.counting``), on an app that
sets nothing but the broker, the tasks' queue and names. So: no ``acks_late``
(acked before the task runs), no task events, no task-sent events, prefetch 4,
kombu's own transport and Celery's default transport options. The only
settings given are names, with no bearing on speed: per-run event and
remote-control exchanges (no cross-talk on a shared RabbitMQ vhost, deleted at
the end) and, on RabbitMQ, a connection name of its own, so that in the
benchmark's process kombu does not hand this app a channel that another app
put in confirm mode (kombu pools connections per connection parameters).

Variants (issue 16's decomposition): Celery's defaults plus one guarantee at a
time, so that a drain shows what each costs in stock Celery itself
(:data:`VARIANTS`; the contender ``raw-<variant>``, a queue of its own):

* ``defaults``: nothing added (the contender ``raw-defaults``).
* ``late-acks``: ``task_acks_late`` and ``task_reject_on_worker_lost``, as
  ``celeryconfig`` sets them (acked after the task ran; a killed pool
  process's message goes back to the queue).
* ``events``: ``worker_send_task_events`` (the worker's ``-E``: task-received,
  -started, -succeeded ... for Flower). Not ``task_send_sent_event``: that one
  is the publisher's, and a drain publishes before its worker starts.
* ``late-acks-events``: both, still without eventbus: what the contender
  ``raw`` (``celeryconfig`` on ``bench.apps``, whose worker also carries an
  EventBus's worker steps) would be in stock Celery alone.

It imports neither eventbus nor ``celeryconfig``. A worker loads it with
``celery -A bench.defaults_app:app worker`` (``BENCH_BROKER_URL``,
``BENCH_RUN``, ``BENCH_COUNTER_URL``, ``BENCH_DEFAULTS_VARIANT``); the
benchmarks call :func:`build`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from celery import Celery

from bench.counting import count

FANOUT = 5
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/14"

_LATE_ACKS = {"task_acks_late": True, "task_reject_on_worker_lost": True}
_EVENTS = {"worker_send_task_events": True}
#: The settings each variant adds to Celery's defaults.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "late-acks": _LATE_ACKS,
    "events": _EVENTS,
    "late-acks-events": {**_LATE_ACKS, **_EVENTS},
}


def queue_name(run: str, variant: str = "defaults") -> str:
    suffix = "" if variant == "defaults" else f".{variant}"
    return f"bench.{run}.defaults{suffix}"


@dataclass
class DefaultsApp:
    app: Any
    tasks: list[Any]
    queue: str


def build(
    broker_url: str, run: str, variant: str = "defaults", *, confirm_publish: bool = False
) -> DefaultsApp:
    """The app of ``variant``; ``confirm_publish`` (RabbitMQ): kombu's own publisher confirms,
    Celery's documented ``broker_transport_options={"confirm_publish": True}`` (each publish
    waits for its confirm): the publish benchmark's "raw-confirm" reference."""
    added = VARIANTS[variant]  # (a KeyError names an unknown variant)
    queue = queue_name(run, variant)
    tag = "defaults" if variant == "defaults" else f"defaults-{variant}"
    if confirm_publish:
        tag += "-confirm"
    app = Celery(f"bench-{tag}-{run}", set_as_current=False)
    # The same per-run exchange names as bench.apps (kept apart from this module
    # so that it imports no eventbus): names only.
    app.conf.update(
        broker_url=broker_url,
        event_exchange=f"bench.{run}.ev",
        control_exchange=f"bench.{run}.ctl",
        **added,
    )
    if not broker_url.startswith("redis"):
        app.conf.broker_transport_options = {
            "client_properties": {"connection_name": f"bench-{run}-{tag}"},
            **({"confirm_publish": True} if confirm_publish else {}),
        }

    def plain_task(name: str) -> Any:
        def task(payload: dict[str, Any]) -> None:
            count(payload["data"]["key"])

        task.__name__ = task.__qualname__ = name.rpartition(".")[2]
        return app.task(name=name, queue=queue, shared=False)(task)

    tasks = [plain_task(f"bench.defaults.task_{i}") for i in range(FANOUT)]
    return DefaultsApp(app=app, tasks=tasks, queue=queue)


def publish(defaults: DefaultsApp, payloads: list[dict[str, Any]]) -> None:
    """5 ``apply_async`` per event, as raw Celery publishes (the payload built beforehand)."""
    tasks = defaults.tasks
    for payload in payloads:
        args = (payload,)
        for task in tasks:
            task.apply_async(args)


_from_env: DefaultsApp | None = None


def from_env() -> DefaultsApp:
    global _from_env
    if _from_env is None:
        _from_env = build(
            os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER_URL),
            os.environ.get("BENCH_RUN", "default"),
            os.environ.get("BENCH_DEFAULTS_VARIANT") or "defaults",
        )
    return _from_env


def __getattr__(name: str) -> Any:
    # ``celery -A bench.defaults_app:app`` resolves ``app`` here (PEP 562).
    if name == "app":
        return from_env().app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
