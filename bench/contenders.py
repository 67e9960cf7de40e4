"""The end-to-end contenders on one broker: how each publishes and how its worker runs.

* ``eventbus``: ``bus.publish(event)``; its handlers on a worker of
  ``bench.apps`` with eventbus's settings (``celeryconfig``; eventbus's Redis
  transport on Redis, its batched task events).
* ``raw``: raw Celery with the same guarantees: 5 ``apply_async`` per event,
  ``celeryconfig``'s settings (late acks, task events, task-sent events),
  kombu's own transport on the worker.
* ``raw-defaults``: raw Celery with Celery's defaults (``bench.defaults_app``):
  what a team runs before adopting eventbus.
* ``raw-late-acks``, ``raw-events``, ``raw-late-acks-events`` (on request,
  issue 16): raw-defaults plus one of celeryconfig's guarantees at a time
  (``bench.defaults_app.VARIANTS``), then both, in stock Celery alone.
* ``eventbus-no-task-events`` (on request, issue 16): eventbus with the
  worker's task events off (``worker_send_task_events = False``; Flower then
  sees no handler run): what Flower's events cost eventbus's worker.
* ``celery-pubsub``: ``publish(topic, payload)``, a group of 5; worker as raw's.
* ``dramatiq``: a reference, not an equal (``bench.dramatiq_app``): 5 messages
  per event, the ``dramatiq`` command with its defaults (2 processes x 8 threads,
  whatever the Celery pool being measured).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench import apps, defaults_app
from bench.common import COUNTER_URL, PYTHON, Janitor, Worker

CELERY = ["eventbus", "raw", "raw-defaults", "celery-pubsub"]
#: The default set (dramatiq when it is installed).
ALL = [*CELERY, "dramatiq"]
#: raw-defaults' variants, by contender: ``raw-<variant>`` (``bench.defaults_app``).
STOCK = {f"raw-{variant}": variant for variant in defaults_app.VARIANTS}
#: eventbus's variants, by contender: the environment of their worker (``bench.apps``).
VARIANTS = {"eventbus-no-task-events": {"BENCH_TASK_EVENTS": "0"}}
#: Every contender a benchmark can be asked for.
KNOWN = [*ALL, *(name for name in STOCK if name not in ALL), *VARIANTS]


def _base(contender: str) -> str:
    """The contender whose app, queue and publisher a variant of eventbus's uses."""
    return "eventbus" if contender in VARIANTS else contender


def choose(spec: str | None, *, with_dramatiq: bool = True) -> list[str]:
    """The contenders of a ``--contenders a,b,c`` option, in its order (None: the default set).

    Unknown names are refused (ValueError, listing the known ones); a name
    given twice counts once; ``with_dramatiq=False`` leaves dramatiq out.
    """
    if spec is None:
        names = list(ALL)
    else:
        names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
        unknown = [n for n in names if n not in KNOWN]
        if unknown or not names:
            raise ValueError(
                f"unknown contender(s) {', '.join(unknown) or '(none given)'}; "
                f"known: {', '.join(KNOWN)}"
            )
    return [n for n in names if with_dramatiq or n != "dramatiq"]


def dramatiq_available() -> str | None:
    """None when dramatiq can be imported, else why not."""
    try:
        import dramatiq  # noqa: F401
        import pika  # noqa: F401
    except ImportError as exc:
        return str(exc)
    return None


@dataclass
class Contenders:
    broker: str
    url: str
    run: str
    bench: apps.BenchApp
    defaults: defaults_app.DefaultsApp
    dramatiq: Any  # bench.dramatiq_app.DramatiqApp, or None without dramatiq
    #: The contenders measured, in order (:func:`choose`).
    names: list[str]
    #: raw-defaults and its variants among them, by contender.
    stock: dict[str, defaults_app.DefaultsApp]

    @classmethod
    def build(
        cls,
        broker: str,
        url: str,
        run: str,
        *,
        with_dramatiq: bool,
        names: Sequence[str] | None = None,
    ) -> Contenders:
        """``names``: the contenders (default: the default set, dramatiq with ``with_dramatiq``)."""
        chosen = choose(None, with_dramatiq=with_dramatiq) if names is None else list(names)
        dq = None
        if with_dramatiq and "dramatiq" in chosen:
            from bench import dramatiq_app

            dq = dramatiq_app.build(url, run)
        chosen = [n for n in chosen if n != "dramatiq" or dq is not None]
        defaults = defaults_app.build(url, run)
        stock = {"raw-defaults": defaults}
        for name in chosen:
            if name in STOCK and name not in stock:
                stock[name] = defaults_app.build(url, run, STOCK[name])
        return cls(
            broker=broker,
            url=url,
            run=run,
            bench=apps.build(url, run),
            defaults=defaults,
            dramatiq=dq,
            names=chosen,
            stock=stock,
        )

    @property
    def env(self) -> dict[str, str]:
        return {
            "BENCH_BROKER_URL": self.url,
            "BENCH_RUN": self.run,
            "BENCH_COUNTER_URL": COUNTER_URL,
        }

    def track(self, janitor: Janitor) -> None:
        janitor.track(*self.bench.queues.values(), *(d.queue for d in self.stock.values()))
        janitor.track_exchanges(*apps.created_exchanges(self.run))
        if self.dramatiq is not None and self.broker == "rabbitmq":
            from bench import dramatiq_app

            janitor.track(*dramatiq_app.amqp_queues(self.run))
        # (on Redis the janitor deletes every key the run created in the broker's
        # db: dramatiq's, under its namespace of the run's, too)

    def queue(self, contender: str) -> str:
        if contender in STOCK:
            return self.stock[contender].queue
        if contender == "dramatiq":
            return str(self.dramatiq.queue)
        return self.bench.queues[apps.QUEUE_OF[_base(contender)]]

    def publish(
        self, contender: str, events: list[apps.BenchHappened], payloads: list[dict[str, Any]]
    ) -> None:
        if contender in STOCK:
            defaults_app.publish(self.stock[contender], payloads)
        elif contender == "dramatiq":
            from bench import dramatiq_app

            dramatiq_app.publish(self.dramatiq, payloads)
        else:
            apps.PUBLISHERS[_base(contender)](self.bench, events, payloads)

    def app_of(self, contender: str) -> Any:
        """The Celery app whose control pings the contender's worker."""
        return self.stock[contender].app if contender in STOCK else self.bench.app

    def worker(self, contenders: Sequence[str], pool: str, concurrency: int, name: str) -> Worker:
        """One worker serving ``contenders`` (a list of one, but raw's and
        celery-pubsub's can share one: both are stock Celery with celeryconfig)."""
        first = contenders[0]
        queues = [self.queue(c) for c in contenders]
        if first == "dramatiq":
            from bench import dramatiq_app

            return Worker(
                "bench.dramatiq_app",
                queues=queues,
                pool="dramatiq",
                concurrency=dramatiq_app.PROCESSES * dramatiq_app.THREADS,
                name=name,
                env=self.env,
                command=dramatiq_app.argv(PYTHON),
            )
        if first in STOCK:
            spec = "bench.defaults_app:app"
            env = {**self.env, "BENCH_DEFAULTS_VARIANT": STOCK[first]}
        elif _base(first) == "eventbus":
            spec, env = "bench.apps:app", {**self.env, **VARIANTS.get(first, {})}
        else:  # raw Celery as deployed: kombu's own transport, Celery's task events
            spec, env = "bench.apps:app", {**self.env, "BENCH_STOCK_TRANSPORT": "1"}
        return Worker(spec, queues=queues, pool=pool, concurrency=concurrency, name=name, env=env)

    def describe(self, contender: str) -> str:
        return {
            "eventbus": (
                "eventbus's settings, "
                + ("eventbus's" if self.broker == "redis" else "kombu's")
                + " transport, eventbus's batched task events"
            ),
            "eventbus-no-task-events": "as eventbus, without the worker's task events",
            "raw": "celeryconfig's guarantees (late acks, task + sent events), kombu's transport",
            "celery-pubsub": "as raw",
            "raw-defaults": "Celery's default settings, kombu's transport",
            "raw-late-acks": "Celery's defaults + late acks (acks_late, reject_on_worker_lost)",
            "raw-events": "Celery's defaults + the worker's task events (-E)",
            "raw-late-acks-events": "Celery's defaults + late acks + task events, no eventbus",
            "dramatiq": "dramatiq's defaults, 2 processes x 8 threads",
        }[contender]

    def close(self) -> None:
        self.bench.app.pool.force_close_all()
        for stock in self.stock.values():
            stock.app.pool.force_close_all()
        if self.dramatiq is not None:
            self.dramatiq.broker.close()
