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
  is skipped, which a real lean send would have to decide itself.

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

ARGS = ({"event_type": "bench.happened", "data": {"key": "k"}},)


def per_message(app: Any, subs: list[Any], events: int, lean: bool) -> float:
    """CPU µs per handler message over ``events`` events of ``len(subs)`` messages."""
    amqp = app.amqp
    with app.producer_or_acquire() as producer:
        routes = list(bound_queues(app, producer, subs))
        sent = SentEvents(app)
        start = time.process_time()
        for _ in range(events):
            for sub, queue in routes:
                if lean:
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
        figures: dict[str, list[float]] = {"apply_async": [], "create+send": []}
        for _ in range(args.reps):  # interleaved
            figures["apply_async"].append(per_message(bench.app, subs, args.events, lean=False))
            figures["create+send"].append(per_message(bench.app, subs, args.events, lean=True))
        full, lean = (statistics.median(v) for v in figures.values())
        print(
            f"{args.broker}: CPU per handler message, median of {args.reps} reps of "
            f"{args.events} events x {len(subs)}: apply_async {full:.0f} us, "
            f"create_task_message + send_task_message {lean:.0f} us "
            f"({lean / full:.2f}x; per event {len(subs) * (full - lean) / 1000:.2f} ms less)"
        )
    finally:
        bench.app.pool.force_close_all()
        janitor.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
