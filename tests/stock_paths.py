"""Which integration modules CI runs a second time on Celery's stock paths.

CI's stock-path stage (``.ci/run``, stage 6) runs the integration tests again
with every eventbus optimisation off (``EVENTBUS_OPTIMIZATIONS=0``) and
kombu's own Redis transport (``EVENTBUS_TEST_REDIS_TRANSPORT=kombu``): what a
worker and a publisher run when an upgrade of Celery or kombu moved a name
eventbus reaches for (README, "Celery internals"). It runs the modules whose
code paths that switch changes: publishing (confirms, task-sent messages,
bound queues, batches), the worker's consumption (the message screen, task
events, the loop), dead letters and retries, and the Redis transport's
handling of what sits on a queue. The others test what neither path touches
and ran once already in the first stage.

Every module of ``tests/integration`` is in exactly one of the two tables
(``tests/unit/test_stock_paths.py``): a new module is placed on purpose.
``python -m tests.stock_paths`` prints the modules to run, for ``.ci/run``.
"""

from __future__ import annotations

import sys
from pathlib import Path

INTEGRATION = Path(__file__).resolve().parent / "integration"

#: Modules whose code paths the switch changes: run twice.
STOCK: tuple[str, ...] = (
    "test_bad_input.py",  # the message screen, kombu's transport on bad elements
    "test_batch.py",  # bus.batch(): confirms, pipelines
    "test_broker_dead_lettering.py",  # RabbitMQ's dead-letter exchange on rejects
    "test_compressed_messages.py",  # the compression guard, both transports
    "test_dead_letters.py",  # dead letters before acks, from the worker
    "test_dlq_copies.py",  # a dead letter's copy as the worker writes it
    "test_dlq_replay_batches.py",  # replay publishes through the bus
    "test_fanout.py",  # publish and consume, the plainest path
    "test_flower.py",  # task events, task-sent events
    "test_hostile_corpus.py",  # whatever bytes: the screen, kombu's transport
    "test_hostile_input.py",  # the same, message by message
    "test_metrics.py",  # worker hooks and task events feed the metrics
    "test_publish_confirms.py",  # per-message vs batched confirms
    "test_publish_errors.py",  # a broker that refuses
    "test_publish_path.py",  # the publish path itself
    "test_publish_reconnect.py",  # a connection replaced mid-publish
    "test_quorum_queues.py",  # native delayed delivery, confirms on quorum queues
    "test_replay_task.py",  # replay as a task: publish from the worker
    "test_retries.py",  # autoretry: the worker's own publishes
    "test_traces.py",  # spans from the publish path and the worker's hooks
)

#: Modules run once, with why: the switch does not change what they test.
ONCE: dict[str, str] = {
    "test_cli_dlq.py": "the operator CLI reads and replays through the DLQ store",
    "test_cli_dlq_progress.py": "the CLI's output modes (progress bar, summary, --json)",
    "test_cli_secrets.py": "the CLI's messages and redaction",
    "test_console.py": "the console reads and replays through the DLQ API",
    "test_console_browser.py": "the console in a browser",
    "test_demo.py": "the demo: its own app, run as a newcomer runs it",
    "test_demo_state.py": "the demo's state prefix",
    "test_dlq_readers.py": "readers of a RabbitMQ DLQ taking turns (the store)",
    "test_dlq_keyprefix.py": "the DLQ store's keys",
    "test_dlq_deep_headers.py": "reading a dead letter py-amqp cannot decode",
    "test_dlq_store.py": "the DLQ store",
    "test_dlq_unreadable.py": "the CLI on an unreadable DLQ",
    "test_lean_worker.py": "what the worker's main process imports",
    "test_redis_transport.py": "eventbus's own Redis transport (the stage runs kombu's)",
    "test_redis_transport_acks.py": "eventbus's Redis transport's ack batching",
    "test_redis_transport_idle.py": "eventbus's Redis transport's idle wake-up",
    "test_seam_fallbacks.py": "each name taken away in turn: the switch's own tests",
    "test_sentinel.py": "Sentinel with eventbus's transport and state",
    "test_state_errors.py": "the idempotency and ordering state on Redis",
    "test_state_stores.py": "the state stores",
    "test_task_events.py": "batched task events, an optimisation (marked)",
    "test_tls.py": "rediss:// to the state, the DLQ and the transport",
    "test_transport_selection.py": "the choice of transport itself",
    "test_worker_loop.py": "the worker loop, an optimisation (marked)",
    "test_coalesced_acks.py": "coalesced acks, an optimisation (marked)",
}


def modules_on_disk() -> set[str]:
    return {path.name for path in INTEGRATION.glob("test_*.py")}


def main() -> int:
    missing = sorted(modules_on_disk() - set(STOCK) - set(ONCE))
    if missing:
        print(f"not placed in tests/stock_paths.py: {', '.join(missing)}", file=sys.stderr)
        return 1
    print(" ".join(f"tests/integration/{name}" for name in STOCK))
    return 0


if __name__ == "__main__":
    sys.exit(main())
