"""Default Celery configuration for eventbus apps (``app.config_from_object("celeryconfig")``).

The example app's (:mod:`handlers`), and a starting point for yours: it is not
installed with the package, so copy it next to your Celery app.

Lowercase Celery settings; every value a deployment changes comes from the
environment. Settings named ``eventbus_*`` are eventbus's own defaults,
overridable per handler in ``subscribe(...)``.
"""

from __future__ import annotations

import os


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


# -- broker ------------------------------------------------------------------
broker_url = (
    os.environ.get("EVENTBUS_BROKER_URL")
    or os.environ.get("CELERY_BROKER_URL")
    or "redis://127.0.0.1:6379/0"
)
broker_connection_retry_on_startup = True
# No broker_transport here: a worker of an app with an EventBus picks it from the
# app's broker URL when it starts (eventbus.celery.transport_selection), so an app that
# loads this module and then sets another broker_url gets the right one. On
# redis:// and rediss:// that is eventbus's transport (eventbus.celery.internals.redis_transport):
# it takes each message off its queue and records it as unacked in one atomic
# script, where kombu's own takes it with BRPOP and records it in a second round
# trip (a worker killed, or Redis crashing, in between loses that message). An idle
# worker waits for Redis to tell it a queue changed (CLIENT TRACKING) and looks anyway
# every 2 s (transport option eventbus_idle_poll_interval); where Redis cannot tell it,
# it polls every 0.05 s (eventbus_poll_interval; eventbus_idle_wake=False forces that).
# EVENTBUS_REDIS_TRANSPORT=kombu keeps kombu's transport (the worker warns).
eventbus_redis_transport = os.environ.get("EVENTBUS_REDIS_TRANSPORT") or "eventbus"
# Redis re-delivers an unacked message after visibility_timeout seconds. Handler
# tasks ack late and retries wait up to eventbus_retry_backoff_max, which must
# stay below this value (EventBus refuses a handler that would not).
broker_transport_options = {
    "visibility_timeout": _env_int("EVENTBUS_VISIBILITY_TIMEOUT", 3600),
}
# Redis Sentinel: EVENTBUS_BROKER_URL=sentinel://host1:26379;sentinel://host2:26379 and
# the name the sentinels monitor the master by (eventbus's transport serves it too).
if os.environ.get("EVENTBUS_BROKER_MASTER_NAME"):
    broker_transport_options["master_name"] = os.environ["EVENTBUS_BROKER_MASTER_NAME"]
# RabbitMQ: the broker confirms every event's messages, waited for once per event
# (eventbus.celery.internals.confirms). Not kombu's connection-wide "confirm_publish": that one
# hangs --pool threads workers sending task events.
eventbus_publish_confirms = os.environ.get("EVENTBUS_PUBLISH_CONFIRMS", "1") not in (
    "0",
    "false",
    "no",
)

# -- wire format: JSON only, never pickle --------------------------------------
task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# -- delivery ----------------------------------------------------------------
task_acks_late = True  # ack after the handler ran: a crash re-delivers
task_reject_on_worker_lost = True  # a killed worker's message goes back to the queue
worker_prefetch_multiplier = _env_int("EVENTBUS_PREFETCH", 4)
task_publish_retry = True
task_publish_retry_policy = {
    "max_retries": 3,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 2,
}
task_ignore_result = True  # handlers are side effects; no result backend needed

# -- visibility: Flower needs task events and task-sent events ----------------
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True
# A worker with an EventBus sends its buffered task events every this many
# seconds (Celery: after every turn of its event loop); 0 = Celery's way.
# See eventbus.celery.internals.task_events.
eventbus_task_events_interval = float(os.environ.get("EVENTBUS_TASK_EVENTS_INTERVAL", "0.05"))

# -- eventbus defaults (see eventbus.domain.options) --------------------------------
eventbus_default_queue = os.environ.get("EVENTBUS_QUEUE", "eventbus")
eventbus_dead_letter_queue = os.environ.get("EVENTBUS_DLQ", "eventbus.dlq")
eventbus_max_retries = _env_int("EVENTBUS_MAX_RETRIES", 5)
eventbus_retry_backoff = _env_int("EVENTBUS_RETRY_BACKOFF", 2)  # seconds, doubled per retry
eventbus_retry_backoff_max = _env_int("EVENTBUS_RETRY_BACKOFF_MAX", 600)
# RabbitMQ: handler queues carry a dead-letter exchange to the DLQ, so what the
# broker itself drops (rejected, expired, over a limit) is kept too.
eventbus_broker_dead_lettering = os.environ.get("EVENTBUS_BROKER_DLX", "1") not in (
    "0",
    "false",
    "no",
)
eventbus_retry_jitter = os.environ.get("EVENTBUS_RETRY_JITTER", "1") not in ("0", "false", "no")
# RabbitMQ: "quorum" declares every handler queue and the DLQ as a quorum queue
# (replicated on a cluster; RabbitMQ 3.10+), and retries then wait in RabbitMQ
# (Celery's native delayed delivery). Refused on Redis. An existing queue keeps its
# type: delete it (drained) to switch. See README, "Quorum queues".
eventbus_queue_type = os.environ.get("EVENTBUS_QUEUE_TYPE") or "classic"
# Quorum queues: a message that comes back unacknowledged this many times (its
# worker process was killed each time) goes to the DLQ, reason delivery_limit.
eventbus_delivery_limit = _env_int("EVENTBUS_DELIVERY_LIMIT", 5)

# -- delivery guarantees (README: "Delivery guarantees") -------------------------
# Idempotency claims, sequence counters and ordering positions live in Redis:
# by default the broker when it is Redis; with RabbitMQ set EVENTBUS_REDIS_URL.
eventbus_redis_url = os.environ.get("EVENTBUS_REDIS_URL") or None
eventbus_redis_prefix = os.environ.get("EVENTBUS_REDIS_PREFIX", "eventbus:")  # of every key
# A sentinel:// state URL of its own: its master's name (default: the broker's master_name).
eventbus_redis_master_name = os.environ.get("EVENTBUS_REDIS_MASTER_NAME") or None
# Redis replicates asynchronously: a fail-over can lose what a master acknowledged.
# N > 0: a publish (and a dead letter, a sequence number) returns only once N replicas
# have it (WAIT, at most eventbus_redis_wait_timeout seconds; fewer: PublishError).
# README: "Redis Sentinel and TLS".
eventbus_redis_wait_replicas = _env_int("EVENTBUS_REDIS_WAIT_REPLICAS", 0)
eventbus_redis_wait_timeout = float(os.environ.get("EVENTBUS_REDIS_WAIT_TIMEOUT", "1"))
eventbus_idempotent = os.environ.get("EVENTBUS_IDEMPOTENT", "0") not in ("0", "false", "no")
eventbus_idempotency_ttl = _env_int("EVENTBUS_IDEMPOTENCY_TTL", 7 * 24 * 3600)  # seconds
# An ordered handler's event whose predecessor has not shown up for this long
# (and is not waiting for a retry) is dead-lettered as a sequence gap.
eventbus_ordering_gap_timeout = _env_int("EVENTBUS_ORDERING_GAP_TIMEOUT", 60)
# The largest envelope published or run, in JSON bytes (0: no limit).
eventbus_max_payload_bytes = _env_int("EVENTBUS_MAX_PAYLOAD_BYTES", 256 * 1024)

# -- metrics (see eventbus.metrics.handlers): a worker serves /metrics on this port; 0 = off
eventbus_metrics_port = _env_int("EVENTBUS_METRICS_PORT", 0)
eventbus_metrics_addr = os.environ.get("EVENTBUS_METRICS_ADDR", "127.0.0.1")

# -- transactional outbox (eventbus.outbox) ------------------------------------
# The relay task eventbus.relay_outbox publishes the pending rows of the outbox
# table in this database; with the URL set, `celery beat` runs it every second.
eventbus_outbox_url = os.environ.get("EVENTBUS_OUTBOX_URL") or None
if eventbus_outbox_url:
    beat_schedule = {
        "eventbus-relay-outbox": {
            "task": "eventbus.relay_outbox",
            "schedule": float(os.environ.get("EVENTBUS_OUTBOX_RELAY_INTERVAL", "1")),
            # A run that waited longer (no worker) is dropped: the next one relays the rows.
            "options": {"expires": 10},
        },
    }
