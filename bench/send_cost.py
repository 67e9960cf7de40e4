"""What Celery's ``apply_async`` costs per handler message, against a leaner send.

Issue 16's lead for publishing one event at a time on RabbitMQ: eventbus sends
each handler message with ``task.apply_async`` (as raw Celery does). This
measures, in one process and on one producer, the CPU per message of:

* ``apply_async``: what eventbus does (its task-sent events kept and sent
  once per event, as ``bus.publish`` does: ``SentEvents``);
* ``create+send``: the same message built with ``app.amqp.create_task_message``
  and sent with ``app.amqp.send_task_message`` (Celery's own two steps under
  ``send_task``), task-sent events the same way: what ``send_task`` decides
  per message (routing, parent and root ids, time limits, the result object)
  is skipped, which a real lean send would have to decide itself;
* ``faithful``: ``create+send`` with those decisions made as ``send_task``
  makes them for a handler message (exec options, shadow name, routing,
  parent and root ids, time limits, the backend's ``on_task_call``, Celery's
  error translation): what a lean send that changes nothing could save.

No confirms (the CPU is the question, not the round trip), messages left on
a queue of the run's, deleted at the end. Medians of ``--reps``.

    python bench/send_cost.py --broker rabbitmq
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import apps
from bench.common import BROKER_URLS, Janitor, new_run_id
from eventbus.celery.internals.bound_queues import bound_queues
from eventbus.celery.internals.sent_events import SentEvents

#: The ways of sending measured, in order (see the module docstring).
MODES = ("apply_async", "faithful", "create+send")
ARGS = ({"event_type": "bench.happened", "data": {"key": "k"}},)


def faithful_send(app: Any, task: Any, producer: Any, extra: dict[str, Any]) -> None:
    """``send_task``'s decisions for a handler message (no eta, expiry, links or chord)."""
    options = dict(task._get_exec_options(), argsrepr="(...)", kwargsrepr="{}", **extra)
    shadow = task.shadow_name(ARGS, {}, options)
    options.setdefault("ignore_result", task.ignore_result)
    time_limit = options.pop("time_limit", None)
    soft_time_limit = options.pop("soft_time_limit", None)
    expires = options.pop("expires", None)
    ignore_result = options.pop("ignore_result", None)
    amqp = app.amqp
    options = amqp.router.route(options, task.name, ARGS, {}, task)
    root_id = parent_id = None
    parent = app.current_worker_task
    if parent:
        root_id = parent.request.root_id or parent.request.id
        parent_id = parent.request.id
    task_id = str(uuid.uuid4())
    message = amqp.create_task_message(
        task_id,
        task.name,
        ARGS,
        {},
        expires=expires,
        reply_to=app.thread_oid,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        create_sent_event=app.conf.task_send_sent_event,
        root_id=root_id,
        parent_id=parent_id,
        shadow=shadow,
        ignore_result=ignore_result,
        **options,
    )
    for stamp in options.pop("stamped_headers", []):
        options.pop(stamp)
    with producer.connection._reraise_as_library_errors():
        if not ignore_result:
            task.backend.on_task_call(producer, task_id)
        amqp.send_task_message(producer, task.name, message, **options)


def per_message(app: Any, subs: list[Any], events: int, mode: str) -> float:
    """CPU µs per handler message over ``events`` events of ``len(subs)`` messages."""
    amqp = app.amqp
    with app.producer_or_acquire() as producer:
        routes = list(bound_queues(app, producer, subs))
        sent = SentEvents(app)
        start = time.process_time()
        for _ in range(events):
            for sub, queue in routes:
                if mode == "faithful":
                    faithful_send(app, sub.task, producer, {**sent.options(), **queue})
                elif mode == "create+send":
                    task_id = str(uuid.uuid4())
                    message = amqp.create_task_message(
                        task_id,
                        sub.name,
                        ARGS,
                        {},
                        argsrepr="(...)",
                        kwargsrepr="{}",
                        create_sent_event=True,
                        root_id=task_id,
                        ignore_result=True,
                    )
                    amqp.send_task_message(producer, sub.name, message, **sent.options(), **queue)
                else:
                    sub.task.apply_async(
                        ARGS,
                        producer=producer,
                        argsrepr="(...)",
                        kwargsrepr="{}",
                        **sent.options(),
                        **queue,
                    )
            sent.send(producer)
        took = time.process_time() - start
    return 1e6 * took / (events * len(routes))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--broker", choices=("redis", "rabbitmq"), default="rabbitmq")
    p.add_argument("--events", type=int, default=600)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    url = BROKER_URLS[args.broker]
    run = new_run_id("send")
    janitor = Janitor(args.broker, url)
    bench = apps.build(url, run)
    janitor.track(*bench.queues.values())
    janitor.track_exchanges(*apps.created_exchanges(run))
    try:
        subs = list(bench.bus.subscriptions())
        figures: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(args.reps):  # interleaved
            for mode in MODES:
                figures[mode].append(per_message(bench.app, subs, args.events, mode))
        full = statistics.median(figures["apply_async"])
        print(
            f"{args.broker}: CPU per handler message, median of {args.reps} reps of "
            f"{args.events} events x {len(subs)} handlers"
        )
        for mode in MODES:
            value = statistics.median(figures[mode])
            less = len(subs) * (full - value) / 1000
            print(
                f"  {mode:12s} {value:4.0f} us ({value / full:.2f}x; {less:.2f} ms less an event)"
            )
    finally:
        bench.app.pool.force_close_all()
        janitor.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
