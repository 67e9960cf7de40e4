"""Every private or undocumented name of Celery, kombu, py-amqp, redis-py and prometheus_client eventbus uses.

One table: :data:`FEATURES` says what each piece of eventbus that reaches into
a dependency does, why (the upstream issue it works around, the measurement
that justified it), and what runs when the installed library no longer has
what it uses; :data:`REACHES` lists each name it uses, with the signature it
expects where a changed one would break it. :mod:`eventbus.celery.internals.compat`
checks the table once per process; ``tests/unit/test_seam.py`` keeps every
use of such a name inside :mod:`eventbus.celery.internals`.

A feature is one of four kinds:

* ``optimisation``: only faster. Missing names, a library version outside
  :data:`SUPPORTED`, or ``eventbus_optimizations = False`` turn it off and
  Celery's (kombu's, py-amqp's) own path runs.
* ``fallback``: a convenience with a plainer way to do the same: missing
  names turn it off (with the warning) and the plainer way runs.
* ``guarantee``: what eventbus promises (a dead letter written before its
  message is acked, a worker that survives any bytes on a queue, a confirmed
  publish). It cannot hold without its names: the worker (or ``publish``)
  refuses to start with :class:`~eventbus.errors.IncompatibleDependency`
  rather than run with the guarantee silently gone. A version outside
  :data:`SUPPORTED` alone does not stop it while every name and signature
  it checks is there (the optimisations are off then).
* ``transport``: eventbus's Redis transport (no message lost between take and
  record). It subclasses kombu's private code: missing names or a kombu outside
  :data:`SUPPORTED` make it refuse, naming the setting that selects kombu's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["FEATURES", "REACHES", "SUPPORTED", "Feature", "Kind", "Reach", "reaches_of"]

Kind = Literal["optimisation", "fallback", "guarantee", "transport"]

#: Distribution -> (lowest supported version, first unsupported version). The same
#: ranges as pyproject.toml's dependencies (a unit test holds them equal).
SUPPORTED: dict[str, tuple[str, str]] = {
    "celery": ("5.7", "6"),
    "kombu": ("5.7", "5.8"),
    "amqp": ("5.4", "5.5"),
    "prometheus-client": ("0.20", "1"),
    "redis": ("6.4", "9"),
}

#: The distribution each top-level module belongs to.
DISTRIBUTIONS = {
    "celery": "celery",
    "kombu": "kombu",
    "amqp": "amqp",
    "prometheus_client": "prometheus-client",
    "redis": "redis",
}


@dataclass(frozen=True)
class Feature:
    """One piece of eventbus that reaches into a dependency."""

    key: str
    kind: Kind
    module: str  #: the eventbus module that does it
    what: str  #: what it does
    without: str  #: what runs (or happens) when its names are missing
    upstream: str  #: the upstream issue it works around ("" if none is filed)
    measured: str  #: the measurement that justified it


@dataclass(frozen=True)
class Reach:
    """One name of a dependency a feature uses.

    ``target`` is ``"module:Owner.name"`` (``"module:name"`` for a module's
    own). ``kind``: ``method`` and ``attribute`` live on the owner (a class
    or module); an ``instance attribute`` is set by the owner's ``__init__``
    (found in its code). ``params``: the parameter names expected (``self``
    included; ``*args``/``**kwargs`` by name); ``exact`` False means "these
    are among them". ``mentions``: a name the target's code must use.
    """

    feature: str
    target: str
    kind: Literal["method", "attribute", "instance attribute"]
    use: str
    params: tuple[str, ...] | None = None
    exact: bool = True
    mentions: str | None = None

    @property
    def library(self) -> str:
        """The distribution the name belongs to (``celery``, ``kombu``...)."""
        return DISTRIBUTIONS[self.target.split(".", 1)[0].split(":", 1)[0]]


FEATURES: tuple[Feature, ...] = (
    Feature(
        "redis_transport",
        "transport",
        "eventbus.celery.internals.redis_transport",
        "takes and records a Redis message in one Lua script (no loss between BRPOP and "
        "the unacked record); acks in one pipeline; survives any bytes on a list; behind "
        "Redis Sentinel too (eventbus.celery.internals.sentinel_transport)",
        "refuses to start (IncompatibleDependency): set eventbus_redis_transport = "
        '"kombu" (EVENTBUS_REDIS_TRANSPORT=kombu) to run kombu\'s own Redis transport',
        "celery/kombu#1733, celery/celery#7950",
        "SIGKILL and Redis-crash fault tests lose no message (tests/faults); acks in one "
        "pipeline per 0.02 s were 22% of a busy Redis worker's py-spy samples before "
        "(bench/README.md)",
    ),
    Feature(
        "redis_idle_wake",
        "fallback",
        "eventbus.celery.internals.redis_wake",
        "an idle channel of eventbus's Redis transport waits for Redis's invalidation "
        "messages (CLIENT TRACKING on a second connection the event loop watches) instead "
        "of polling its take script",
        "the idle channel polls every eventbus_poll_interval (0.05 s): about 20 take "
        "scripts a second per idle worker, a message waits up to 50 ms",
        "",
        "50 idle workers: 0.5 commands/s each instead of 97 (20 take scripts); a handler "
        "starts p50 0.1-0.2 ms after publish returned instead of 25 ms (bench/bench_idle.py, "
        "bench/README.md)",
    ),
    Feature(
        "worker_loop",
        "optimisation",
        "eventbus.celery.internals.worker_loop",
        "the worker's event loop does not poll while callbacks (late acks) are queued",
        "kombu's own loop: a solo worker on RabbitMQ can stall up to 10 s per prefetch window",
        "celery/celery#7718 (fix proposed in celery/kombu#1587, not merged)",
        "10-20 s stalls of a solo RabbitMQ worker draining a queue, gone "
        "(tests/integration/test_worker_loop.py, bench/README.md)",
    ),
    Feature(
        "task_events",
        "optimisation",
        "eventbus.celery.internals.task_events",
        "Celery's buffered task events go out every 0.05 s (or 100 events), not every loop turn",
        "Celery's own: the buffer is sent after every turn of the event loop",
        "",
        "those publishes were a quarter of a busy Redis worker's py-spy samples (bench/README.md)",
    ),
    Feature(
        "coalesced_acks",
        "optimisation",
        "eventbus.celery.internals.acks",
        "a busy RabbitMQ worker holds its acks until the loop would wait (or half the "
        "prefetch count, or 5 ms), and sends a settled run of delivery tags as one "
        "basic.ack with multiple set",
        "Celery's own: one basic.ack (a frame and a socket write) per message",
        "",
        "one basic.ack per message was 15% of an eventbus worker's main process and 24% of "
        "a worker with Celery's defaults, draining on RabbitMQ (bench/profiles)",
    ),
    Feature(
        "sent_events",
        "optimisation",
        "eventbus.celery.internals.sent_events",
        "the task-sent events of one event's K messages go out as one task.multi message "
        "(in a bus.batch(), up to 100 to a message)",
        "Celery's own: one task-sent publish per task message",
        "",
        "6 publishes per 5-handler event instead of 10 (bench/README.md)",
    ),
    Feature(
        "bound_queues",
        "optimisation",
        "eventbus.celery.internals.bound_queues",
        "handler queues bound to a producer's channel once, not at every publish",
        "Celery's own: kombu's maybe_declare binds a copy of the queue per message",
        "",
        "~40 us per message; with batched confirms the RabbitMQ publish went from 0.93x to "
        "1.10x raw Celery (bench/README.md)",
    ),
    Feature(
        "batched_confirms",
        "optimisation",
        "eventbus.celery.internals.confirms",
        "RabbitMQ publisher confirms waited for once per event (or batch), not per message",
        "py-amqp's own per-message confirms (basic_publish_confirm): the same guarantee, "
        "one wait per message",
        "",
        "the confirm wait is ~1.0-1.3 ms of ~5-6 ms per event; publish 1.10x raw Celery "
        "with it (bench/README.md, README Performance)",
    ),
    Feature(
        "coalesced_writes",
        "optimisation",
        "eventbus.celery.internals.coalesced_writes",
        "the messages of one RabbitMQ confirm block (an event, a batch) go out in one "
        "socket write, not one write per message",
        "py-amqp's own writes: one sendall per message",
        "",
        "6 writes per 5-handler event became 1 (bench/README.md)",
    ),
    Feature(
        "publish_confirms",
        "guarantee",
        "eventbus.celery.internals.confirms",
        "a publish on RabbitMQ returns only once the broker confirmed every message",
        "refuses to publish (IncompatibleDependency); eventbus_publish_confirms = False "
        "publishes unconfirmed",
        "",
        "DESIGN: publish confirms on RabbitMQ (an event publish returned for is never lost)",
    ),
    Feature(
        "replicated_publish",
        "guarantee",
        "eventbus.celery.internals.replication",
        "with eventbus_redis_wait_replicas, a publish on Redis returns once that many replicas "
        "acknowledged its messages (WAIT on the connection that sent them)",
        "refuses to publish (IncompatibleDependency); eventbus_redis_wait_replicas = 0 "
        "publishes without waiting for replicas",
        "",
        "Sentinel fail-over tests: acknowledged events lost without it (tests/faults, README)",
    ),
    Feature(
        "message_screen",
        "guarantee",
        "eventbus.celery.internals.consumer_hooks",
        "messages on handler queues that Celery would drop or choke on (not JSON, not a "
        "task message, unknown task, oversized) are screened and dead-lettered, acked "
        "only once their record is written",
        "the worker refuses to start (IncompatibleDependency)",
        "celery/celery#4308, celery/celery#7975",
        "tests/integration/test_hostile_input.py, test_hostile_corpus.py: the worker keeps "
        "running and every such message is one dead letter",
    ),
    Feature(
        "compression_guard",
        "guarantee",
        "eventbus.celery.internals.compression",
        "compressed messages on handler queues are refused, or decompressed within the "
        "payload limit (no compression bomb)",
        "the worker refuses to start (IncompatibleDependency)",
        "",
        "100 KB of zlib is 100 MB of zeros: a few messages exhaust a worker "
        "(tests/integration/test_compressed_messages.py)",
    ),
    Feature(
        "deep_headers_guard",
        "guarantee",
        "eventbus.celery.internals.amqp_headers",
        "a RabbitMQ message whose headers nest deeper than py-amqp decodes becomes a "
        "dead letter instead of stopping the worker",
        "a worker on RabbitMQ refuses to start (IncompatibleDependency)",
        "celery/celery#2873",
        "a 15 KB header stops a stock worker, and every worker RabbitMQ redelivers it to "
        "(tests/integration/test_dlq_deep_headers.py)",
    ),
    Feature(
        "dead_letter_before_ack",
        "guarantee",
        "eventbus.celery.dead_letter_before_ack",
        "failures Celery reports in the worker's main process (hard time limits, "
        "Reject(requeue=False), lost workers) are acked only after their dead letter is "
        "written (a documented custom Request, relying on what Celery calls inside it)",
        "the worker refuses to start (IncompatibleDependency)",
        "celery/celery#9596, celery/celery#1628",
        "tests/faults/test_dead_letters_under_faults.py: a refused write loses no failure",
    ),
    Feature(
        "consume_handler_queues",
        "fallback",
        "eventbus.celery.internals.worker_queues",
        "a worker started without -Q also consumes the handler queues",
        "guessed from the public consume_from (every known queue selected: no -Q)",
        "",
        "",
    ),
    Feature(
        "payload_allowance",
        "fallback",
        "eventbus.celery.internals.worker_queues",
        "the payload limit allows Celery's argsrepr/kwargsrepr headers their own maximum",
        "Celery 5.7's maximum, 1024 bytes each",
        "",
        "",
    ),
    Feature(
        "django_app",
        "fallback",
        "eventbus.celery.internals.celery_apps",
        "Django: finds the Celery app configured from django.conf:settings (Celery's guide)",
        "eventbus builds an app from the CELERY_ settings; set EVENTBUS_CELERY_APP to name yours",
        "",
        "",
    ),
    Feature(
        "multiprocess_metrics",
        "fallback",
        "eventbus.celery.internals.prometheus_values",
        "prefork pool processes count into prometheus_client's multiprocess files even "
        "when PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported",
        "prometheus_client's own choice: set PROMETHEUS_MULTIPROC_DIR before the worker "
        "starts, or pool processes' counts stay in those processes",
        "prometheus/client_python#701, prometheus/client_python#886",
        "",
    ),
    Feature(
        "worker_stop",
        "fallback",
        "eventbus.celery.internals.worker_state",
        "`eventbus demo` asks its in-process worker's loop to stop (as Celery's own test "
        "worker does)",
        "the demo's worker thread (a daemon) ends with the process",
        "",
        "",
    ),
    Feature(
        "started_jobs",
        "fallback",
        "eventbus.celery.internals.warm_shutdown",
        "a prefork pool's flush at a worker's stop keeps the jobs already written to a pool "
        "process while the connection is open: their results are read and their messages "
        "acked at the pool's join",
        "Celery's flush: a job whose start the parent had not read is dropped; if its "
        "process runs it, its message is not acked and runs again elsewhere, and the pool "
        "process waits 30 s for its result to be read",
        "celery/celery#3802 (open); the drop came with celery/celery#6863, for a lost connection",
        "warm shutdown of a busy prefork worker on RabbitMQ: duplicate_effects=1-2 in 2 of 3 "
        "runs before, with eventbus's optimisations on or off (tests/faults)",
    ),
)

#: One line per name: feature | target | kind | signature | what eventbus uses it for.
#: A signature is "(a, b)": exactly these parameters (self included, *args and
#: **kwargs by name); "(..., a, b)": these among others; "uses NAME": the code
#: of the target must use NAME. Kinds: see :class:`Reach`.
_TABLE = """
redis_transport | kombu.transport.redis:QoS.ack | method | (self, delivery_tag) | overridden: an ack waits for the ack pipeline
redis_transport | kombu.transport.redis:QoS.append | method | (self, message, delivery_tag) | overridden: a take the script recorded is not recorded again
redis_transport | kombu.transport.virtual:QoS.ack | method | (self, delivery_tag) | frees the prefetch slot only
redis_transport | kombu.transport.virtual:QoS.append | method | (self, message, delivery_tag) | the in-process bookkeeping only
redis_transport | kombu.transport.redis:MultiChannelPoller.get | method | (self, callback, timeout) | overridden: waits no longer than an idle channel's next poll
redis_transport | kombu.transport.redis:MultiChannelPoller.maybe_restore_messages | method | (self) | overridden: at most once a second; a full Redis logged once
redis_transport | kombu.transport.redis:MultiChannelPoller._channels | instance attribute | | the channels whose next poll bounds the wait
redis_transport | kombu.transport.redis:MultiChannelPoller._fd_to_chan | instance attribute | | a readable socket's channel and kind (a wake connection is read whatever the prefetch)
redis_transport | kombu.transport.redis:Channel.from_transport_options | attribute | | extended with eventbus_poll_interval
redis_transport | kombu.transport.redis:Channel.basic_consume | method | (self, queue, args, kwargs) | overridden: no_ack queues noted; unreadable elements become stand-ins
redis_transport | kombu.transport.redis:Channel._basic_cancel | method | (self, consumer_tag) | overridden: a cancelled no_ack queue forgotten
redis_transport | kombu.transport.redis:Channel._brpop_start | method | (self, timeout) | overridden: sends the take script instead of BRPOP
redis_transport | kombu.transport.redis:Channel._brpop_read | method | (self, options) | overridden: reads the take script's reply
redis_transport | kombu.transport.redis:Channel._flush_brpop_reauth | method | (self) | called after each poll, as kombu's _brpop_read does
redis_transport | kombu.transport.redis:Channel._q_for_pri | method | (self, queue, pri) | the list key of each priority step
redis_transport | kombu.transport.redis:Channel._queue_cycle | instance attribute | | the queue order BRPOP would take, rotated after a take
redis_transport | kombu.transport.redis:Channel._tag_to_queue | instance attribute | | the queue of a cancelled consumer
redis_transport | kombu.transport.redis:Channel._active_queues | instance attribute | | whether a queue is still consumed
redis_transport | kombu.transport.redis:Channel._closing | attribute | | a closing channel's acks go at once
redis_transport | kombu.transport.redis:Channel._in_poll | attribute | | set while the take script is in flight (the poller reads it)
redis_transport | kombu.transport.redis:Channel._brpop_sent_at | attribute | | kombu's health check of a poll in flight
redis_transport | kombu.transport.redis:Channel.conn_or_acquire | method | (self, client) | the client of the ack pipeline
redis_transport | kombu.transport.redis:Transport.register_with_event_loop | method | (self, connection, loop) | overridden: the ack timer, the idle wake-up
redis_transport | kombu.transport.redis:Transport.cycle | instance attribute | | replaced by eventbus's poller
redis_transport | kombu.transport.virtual:Transport._callbacks | attribute | | the consumer's callback, wrapped
redis_transport | kombu.transport.virtual:Transport._deliver | method | (self, message, queue) | delivers what the script took
redis_transport | kombu.connection:resolve_aliases | attribute | | the banner and Flower show redis://, not a class path
redis_idle_wake | kombu.transport.redis:MultiChannelPoller._register | method | (self, channel, client, type) | the wake connection, watched by the event loop as BRPOP's is
redis_idle_wake | kombu.transport.redis:MultiChannelPoller._client_registered | method | (self, channel, client, cmd) | whether the wake connection is watched (and connected)
redis_idle_wake | kombu.transport.redis:MultiChannelPoller.on_readable | method | (self, fileno) | overridden: a wake connection is read whatever the prefetch
redis_idle_wake | kombu.transport.redis:Channel._poll_error | method | (self, type, options) | overridden: an error event of the wake connection reads it
redis_idle_wake | kombu.transport.redis:Channel._on_connection_disconnect | method | (self, connection) | overridden: a lost connection is set up again (tracking, subscription)
redis_idle_wake | kombu.transport.redis:Channel._create_client | method | (self, asynchronous) | the wake connection's client, on the channel's own pool
redis_idle_wake | redis.connection:AbstractConnection._sock | instance attribute | | whether a connection is connected, and to which socket: a new one is set up again (redis-py says neither publicly)
redis_transport | kombu.transport.redis:SentinelChannel | attribute | | the second base of eventbus's sentinel channel (sentinel_transport)
redis_transport | kombu.transport.redis:SentinelChannel._get_pool | method | (self, asynchronous) | inherited: the pool that asks the sentinels where the master is
redis_transport | kombu.transport.redis:SentinelChannel.from_transport_options | attribute | | master_name, sentinel_kwargs...: joined with eventbus_poll_interval
redis_transport | kombu.transport.redis:SentinelTransport.default_port | attribute | | a sentinel's port when a URL has none
worker_loop | kombu.asynchronous.hub:Hub._ready | instance attribute | | the callbacks queued for the next turn
worker_loop | kombu.asynchronous.hub:Hub.call_soon | method | (self, callback, args) | what queues a late ack
task_events | celery.events.dispatcher:EventDispatcher.__init__ | method | (..., buffer_group, buffer_limit, on_send_buffered) | on_send_buffered and buffer_limit, set after construction
task_events | celery.events.dispatcher:EventDispatcher.flush | method | (self, errors, groups) | sends the buffer on eventbus's timer
coalesced_acks | kombu.asynchronous.hub:Hub.poller | attribute | | its poll wrapped: held acks go out before the loop would wait
coalesced_acks | kombu.asynchronous.hub:Hub.on_close | instance attribute | | sends the held acks, and holds no more, when the loop closes
coalesced_acks | amqp.channel:Channel.basic_ack | method | (self, delivery_tag, multiple, argsig) | wrapped on the task consumer's channel: held until the turn's end
coalesced_acks | amqp.channel:Channel.basic_reject | method | (self, delivery_tag, requeue, argsig) | wrapped: the held acks go first
sent_events | celery.app.amqp:AMQP._event_dispatcher | attribute | | Celery's dispatcher of sent events: hostname, pid, clock, mutex
sent_events | celery.app.amqp:AMQP._create_task_sender | method | uses event_dispatcher | apply_async's event_dispatcher option
sent_events | celery.events.dispatcher:EventDispatcher._publish | method | (self, event, producer, routing_key, retry, retry_policy, utcoffset) | publishes the kept events as one message
bound_queues | kombu.messaging:Producer._channel | instance attribute | | the producer's channel (or its promise) without resolving it
bound_queues | kombu.utils.functional:ChannelPromise | attribute | | a channel not resolved yet
batched_confirms | amqp.channel:Channel._confirm_selected | instance attribute | | whether the channel is in confirm mode
batched_confirms | amqp.channel:Channel._basic_publish | method | (self, msg, exchange, routing_key, mandatory, immediate, timeout, confirm_timeout, argsig) | a publish without py-amqp's per-message wait
batched_confirms | amqp.channel:Channel.events | instance attribute | | hears basic_ack and basic_nack
batched_confirms | amqp.connection:Connection.drain_events | method | (self, timeout) | replaced on the instance in a block: its polls read nothing
coalesced_writes | amqp.transport:TCPTransport._setup_transport | method | uses _write | the socket's sendall, as the instance's _write: replaced in a block, keeps the writes
coalesced_writes | amqp.transport:_AbstractTransport.write | method | uses _write | writes through _write, read at every call
coalesced_writes | amqp.method_framing:frame_writer | method | uses write | writes each message through the transport's write
coalesced_writes | amqp.connection:Connection.drain_events | method | (self, timeout) | replaced on the instance in a block: a read that waits sends the kept writes first
publish_confirms | amqp.channel:Channel.confirm_select | method | (self, nowait) | puts the channel in confirm mode
publish_confirms | amqp.channel:Channel.basic_publish_confirm | method | (self, args, kwargs) | py-amqp's per-message confirmed publish
replicated_publish | kombu.transport.redis:Channel.conn_or_acquire | method | (self, client) | the client whose connection sent the publish: WAIT goes there
message_screen | celery.worker.consumer.consumer:Consumer.on_decode_error | method | (self, message, exc) | replaced: a handler queue's message is dead-lettered
message_screen | celery.worker.consumer.consumer:Consumer.on_unknown_message | method | (self, body, message) | replaced, as above
message_screen | celery.worker.consumer.consumer:Consumer.on_unknown_task | method | (self, body, message, exc) | replaced, as above
message_screen | celery.worker.consumer.consumer:Consumer.on_invalid_task | method | (self, body, message, exc) | replaced, as above
message_screen | celery.worker.consumer.consumer:Consumer.create_task_handler | method | (self, promise) | wrapped: the screen sees a message before Celery reads it
message_screen | celery.worker.consumer.consumer:Consumer.update_strategies | method | (self) | wrapped: handler tasks' strategies checked
message_screen | celery.worker.consumer.consumer:Consumer.strategies | instance attribute | | the strategies wrapped
message_screen | kombu.message:Message.accept | instance attribute | | a handler queue's message decodes as JSON only
compression_guard | kombu.transport.pyamqp:Channel.Message | attribute | | the message class gets the guard as a base
compression_guard | kombu.transport.virtual.base:Channel.Message | attribute | | the same, for Redis and memory
compression_guard | kombu.message:Message.__init__ | method | (self, body, delivery_tag, content_type, content_encoding, delivery_info, properties, headers, postencode, accept, channel, kwargs) | looked at before kombu decompresses (kombu skips a message with errors)
deep_headers_guard | amqp.serialization:GenericContent._load_properties | method | (self, class_id, buf, offset) | wrapped: a RecursionError becomes a stand-in
dead_letter_before_ack | celery.worker.request:Request.on_failure | method | (self, exc_info, send_failed_event, return_ok) | overridden: the acks Celery asks for are held
dead_letter_before_ack | celery.worker.request:Request.on_timeout | method | (self, soft, timeout) | overridden, as above
dead_letter_before_ack | celery.worker.request:Request.acknowledge | method | (self) | overridden: held while a failure is reported
dead_letter_before_ack | celery.worker.request:Request.reject | method | (self, requeue) | overridden, as above
dead_letter_before_ack | celery.worker.request:Request.connection_errors | attribute | | a retry that could not be sent is re-queued
consume_handler_queues | celery.app.amqp:Queues._consume_from | attribute | | None: the worker was started without -Q
payload_allowance | celery.app.amqp:AMQP.argsrepr_maxsize | attribute | | bytes of argsrepr Celery writes at most
payload_allowance | celery.app.amqp:AMQP.kwargsrepr_maxsize | attribute | | bytes of kwargsrepr
django_app | celery._state:_get_active_apps | method | () | every app Celery created
django_app | celery.app.base:Celery._config_source | instance attribute | | what config_from_object was given
multiprocess_metrics | prometheus_client.values:ValueClass | attribute | | swapped for the multiprocess value class
multiprocess_metrics | prometheus_client.values:get_value_class | method | () | the value class for the environment now
multiprocess_metrics | prometheus_client.values:MutexValue._multiprocess | attribute | | whether the value class is the multiprocess one
multiprocess_metrics | prometheus_client.values:MultiProcessValue | method | uses close_all_files | its class's close_all_files, when swapped back
worker_stop | celery.worker.state:should_terminate | attribute | | 0: the worker's loop stops at its next turn
started_jobs | celery.worker.consumer.consumer:Consumer.on_close | method | uses flush | flushes the pool as the consumer closes (a stop, or a lost connection)
started_jobs | celery.worker.consumer.consumer:Consumer.on_connection_error_after_connected | method | uses connection | clears consumer.connection before on_close: a lost connection keeps Celery's flush
started_jobs | celery.concurrency.prefork:TaskPool.on_start | method | uses flush | sets the pool's flush (the AsynPool's, wrapped on the instance)
started_jobs | celery.concurrency.asynpool:AsynPool.flush | method | (self) | drops every job not accepted from _cache
started_jobs | celery.concurrency.asynpool:AsynPool._cache | instance attribute | | the pool's job table: started jobs put back
started_jobs | celery.concurrency.asynpool:_pool.ApplyResult._accepted | instance attribute | | the parent read the job's start
started_jobs | celery.concurrency.asynpool:_pool.ApplyResult._write_to | attribute | | the pool process the job's write began to
"""


def _parse(table: str) -> tuple[Reach, ...]:
    reaches = []
    for line in filter(None, (line.strip() for line in table.splitlines())):
        feature, target, kind, signature, use = (part.strip() for part in line.split("|"))
        params: tuple[str, ...] | None = None
        exact, mentions = True, None
        if signature.startswith("uses "):
            mentions = signature.removeprefix("uses ")
        elif signature:
            names = [n.strip() for n in signature.strip("()").split(",") if n.strip()]
            exact = names[:1] != ["..."]
            params = tuple(n for n in names if n != "...")
        assert kind in ("method", "attribute", "instance attribute"), line
        reaches.append(Reach(feature, target, kind, use, params, exact, mentions))  # type: ignore[arg-type]
    return tuple(reaches)


REACHES: tuple[Reach, ...] = _parse(_TABLE)


def reaches_of(feature: str) -> tuple[Reach, ...]:
    """The names ``feature`` uses."""
    return tuple(reach for reach in REACHES if reach.feature == feature)
