"""The app of the fault tests' ``celery worker`` subprocesses, configured from the environment.

``celery -A tests.faults.fault_app worker`` builds its bus from
:class:`FaultConfig` (``EVENTBUS_FAULTS_*`` variables); the test process builds
its publishing bus from the same config with :func:`build_bus`, so both
declare the same queue and agree on handler names and options.

Handlers write their effects to Redis (:class:`Effects`): one hash per handler
counting runs by event id, which is how a test tells a lost event (no run)
from a duplicate effect (two runs).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Literal

import redis
from celery import signals

from eventbus import Envelope, Event, EventBus, current_delivery
from eventbus.guarantees.idempotency import RedisIdempotencyStore
from tests.support import make_app

PLAIN = "faults.plain"  #: not idempotent: a redelivery repeats its effect
IDEM = "faults.idem"  #: idempotent; its effect is a plain write before the done mark
ATOMIC = "faults.atomic"  #: idempotent; its effect commits with the done mark
ORDERED = "faults.ordered"  #: ordered: appends each aggregate's sequence to a list
TIMED = "faults.timed"  #: overruns its hard time limit: killed mid-run, dead-lettered as time_limit
FAILING = "faults.failing"  #: always fails: retried, then dead-lettered as retries_exhausted
OTHER = "faults.other"  #: on a queue of its own: runs while another handler's dead letter waits
RECOVERING = "faults.recovering"  #: fails its first FAILING_RETRIES attempts, then succeeds

#: Which handlers a worker runs: the kill test's three, one counting handler, the
#: ordered one, the dead-letter tests' three (:data:`TIMED`, :data:`FAILING`, :data:`OTHER`),
#: or the cluster's: the kill test's three, :data:`RECOVERING` and :data:`FAILING`.
HandlerSet = Literal["kill", "count", "ordered", "dlq", "cluster"]

#: Redis visibility timeout of the fault tests, seconds: how long a dead
#: worker's unacked messages wait before another worker gets them.
VISIBILITY_TIMEOUT = 8
#: The Redis transport of a fault test's workers and publisher, by the name
#: ``EVENTBUS_FAULTS_TRANSPORT`` gives (default ``eventbus``): eventbus's, whose
#: consumers take and record a message in one step, or kombu's own (``BRPOP``,
#: then the record in a second round trip), to show the loss it has.
REDIS_TRANSPORTS: dict[str, str | None] = {
    "eventbus": "eventbus.celery.internals.redis_transport:Transport",
    "kombu": None,
}
#: Seconds a gated run of :data:`PLAIN` waits for the test to open its gate
#: before it fails (and retries): a test that never opens it fails clearly.
GATE_TIMEOUT = 60
#: Handler retries must wait less than the visibility timeout (EventBus checks).
RETRY_OPTIONS: dict[str, Any] = {"max_retries": 5, "retry_backoff": 1, "retry_backoff_max": 4}
#: Seconds :data:`TIMED` runs before its worker kills it (Celery's hard time limit).
TIME_LIMIT = 2
#: Retries of :data:`FAILING` before it is dead-lettered (3 attempts in all).
FAILING_RETRIES = 2


class Probe(Event):
    """One numbered event; the fault tests count what became of each."""

    event_type = "faults.probe"

    n: int


class Doomed(Event):
    """One numbered event for :data:`TIMED`, which never finishes it."""

    event_type = "faults.doomed"

    n: int


class Flaky(Event):
    """One numbered event for :data:`FAILING`, which always fails it."""

    event_type = "faults.flaky"

    n: int


class Step(Event):
    """One step of an aggregate; the ordered handler records the sequence it ran."""

    event_type = "faults.step"

    n: int


@dataclass(frozen=True)
class FaultConfig:
    """Everything a fault test's worker needs to know, passed as environment variables."""

    broker_url: str  #: one URL, or several separated by ``;`` (Celery's failover)
    queue: str
    dead_letter_queue: str
    state_url: str  #: idempotency claims and ordering positions
    state_prefix: str
    effects_url: str  #: the handlers' effects; the same Redis as the state (atomic())
    effects_prefix: str
    handlers: HandlerSet
    gated: bool = False  #: each run of :data:`PLAIN` waits at :meth:`Effects.pass_gate`
    worker: str = "publisher"  #: who runs the handlers: effects are counted per worker
    transport: str = "eventbus"  #: on Redis, a key of :data:`REDIS_TRANSPORTS`
    queue_type: str = "classic"  #: on RabbitMQ, ``eventbus_queue_type``: classic or quorum
    #: Redis Sentinel (a ``sentinel://`` broker URL): the master's name.
    master_name: str = ""
    #: ``eventbus_redis_wait_replicas``: replicas each publish (and dead letter) waits for.
    wait_replicas: int = 0

    def environ(self) -> dict[str, str]:
        return {f"EVENTBUS_FAULTS_{k.upper()}": str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_environ(cls, environ: dict[str, str]) -> FaultConfig:
        values: dict[str, Any] = {
            name: environ[f"EVENTBUS_FAULTS_{name.upper()}"] for name in cls.__dataclass_fields__
        }
        values["gated"] = values["gated"] == "True"
        values["wait_replicas"] = int(values["wait_replicas"])
        return cls(**values)

    @property
    def on_redis(self) -> bool:
        return self.broker_url.startswith(("redis", "sentinel"))

    @property
    def on_sentinel(self) -> bool:
        return self.broker_url.startswith("sentinel")

    @property
    def queues(self) -> list[str]:
        """The queues a worker consumes: the test's queue, and :data:`OTHER`'s if it runs."""
        return [self.queue, self.other_queue] if self.handlers == "dlq" else [self.queue]

    @property
    def other_queue(self) -> str:
        return f"{self.queue}.other"


class Effects:
    """What the handlers did, in Redis.

    ``<prefix>runs:<handler>`` counts each handler's runs by event id,
    ``<prefix>received:<handler>`` the messages of each handler a worker's
    consumer received, by event id (whether a lost event ever reached a
    worker), ``<prefix>workers`` counts runs of :data:`PLAIN` by worker, and
    ``<prefix>seq:<aggregate>`` lists the sequences :data:`ORDERED` ran.

    The gate (:meth:`pass_gate`, :meth:`open_gate`) holds gated runs mid-run
    until the test opens it: ``<prefix>gate:held`` counts the runs waiting at
    it, ``<prefix>gate:passed`` the runs it let through.
    """

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        # Its socket waits longer than a blocked BRPOPLPUSH (redis-py does not adjust it).
        self.gate_client = redis.Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=GATE_TIMEOUT + 10
        )
        self.prefix = prefix

    def runs_key(self, handler: str) -> str:
        return f"{self.prefix}runs:{handler}"

    def received_key(self, handler: str) -> str:
        return f"{self.prefix}received:{handler}"

    def sequence_key(self, aggregate: str) -> str:
        return f"{self.prefix}seq:{aggregate}"

    def record(self, handler: str, event_id: str, worker: str | None = None) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hincrby(self.runs_key(handler), event_id, 1)
            if worker is not None:
                pipe.hincrby(f"{self.prefix}workers", worker, 1)
            pipe.execute()

    def pass_gate(self) -> None:
        """Wait, blocked in Redis, until the test opens the gate; at most :data:`GATE_TIMEOUT`.

        ``BRPOPLPUSH`` from the gate list to itself returns its token and puts
        it back: every run waiting is let through by one push, and every later
        run passes at once.
        """
        self.client.incr(f"{self.prefix}gate:held")
        try:
            token = self.gate_client.brpoplpush(
                f"{self.prefix}gate", f"{self.prefix}gate", GATE_TIMEOUT
            )
        finally:
            self.client.decr(f"{self.prefix}gate:held")
        if token is None:
            raise RuntimeError(f"the test did not open the gate within {GATE_TIMEOUT}s")
        self.client.incr(f"{self.prefix}gate:passed")

    def block(self) -> None:
        """Wait, blocked in Redis, for what never comes: until the run is killed.

        Fails after :data:`GATE_TIMEOUT` seconds (a run its time limit did not stop).
        """
        self.gate_client.brpop(f"{self.prefix}never", GATE_TIMEOUT)
        raise RuntimeError(f"not stopped by its time limit within {GATE_TIMEOUT}s")

    def break_dead_letters(self, broken: bool = True) -> None:
        """Make every dead-letter write of the workers fail (see :func:`refuse_dead_letters`)."""
        if broken:
            self.client.set(f"{self.prefix}dlq:broken", "1")
        else:
            self.client.delete(f"{self.prefix}dlq:broken")

    def dead_letters_broken(self) -> bool:
        return bool(self.client.exists(f"{self.prefix}dlq:broken"))

    def hold_dead_letters(self) -> None:
        """Hold the workers' next dead-letter writes until :meth:`release_dead_letters`.

        A write waits, blocked in Redis (at most :data:`GATE_TIMEOUT`), before it
        reaches the broker: a test can break the broker while a write is in flight.
        """
        self.client.set(f"{self.prefix}dlq:hold", "1")

    def dead_letters_held(self) -> bool:
        return bool(self.client.exists(f"{self.prefix}dlq:hold"))

    def wait_to_write(self) -> None:
        """Wait until the test releases the dead-letter writes (a held write)."""
        self.client.incr(f"{self.prefix}dlq:held")
        token = self.gate_client.brpoplpush(
            f"{self.prefix}dlq:gate", f"{self.prefix}dlq:gate", GATE_TIMEOUT
        )
        if token is None:
            raise RuntimeError(f"the test did not release dead-letter writes in {GATE_TIMEOUT}s")

    def held_writes(self) -> int:
        """Dead-letter writes that waited (or wait) for :meth:`release_dead_letters`."""
        return int(self.client.get(f"{self.prefix}dlq:held") or 0)

    def release_dead_letters(self) -> None:
        """Let held dead-letter writes (and every later one) through."""
        self.client.lpush(f"{self.prefix}dlq:gate", "open")
        self.client.delete(f"{self.prefix}dlq:hold")

    def refused_writes(self) -> int:
        """Dead-letter writes refused while :meth:`break_dead_letters` was on."""
        return int(self.client.get(f"{self.prefix}dlq:refused") or 0)

    def refuse_write(self) -> None:
        """Count a refused write; take a second doing it, as a write to a broker that is gone."""
        self.client.incr(f"{self.prefix}dlq:refused")
        self.gate_client.brpop(f"{self.prefix}never", 1)

    def open_gate(self) -> None:
        self.client.lpush(f"{self.prefix}gate", "open")

    def held(self) -> int:
        """Runs waiting at the gate now."""
        return int(self.client.get(f"{self.prefix}gate:held") or 0)

    def passed(self) -> int:
        """Runs the gate let through."""
        return int(self.client.get(f"{self.prefix}gate:passed") or 0)

    def runs(self, handler: str) -> dict[str, int]:
        """Runs of ``handler`` by event id."""
        raw = self.client.hgetall(self.runs_key(handler))
        return {_text(k): int(v) for k, v in raw.items()}

    def received(self, handler: str) -> set[str]:
        """Event ids of the messages of ``handler`` that a worker received."""
        return {_text(k) for k in self.client.hkeys(self.received_key(handler))}

    def handled(self, handler: str) -> int:
        """How many events ``handler`` ran at least once."""
        return int(self.client.hlen(self.runs_key(handler)))

    def by_worker(self) -> dict[str, int]:
        raw = self.client.hgetall(f"{self.prefix}workers")
        return {_text(k): int(v) for k, v in raw.items()}

    def sequences(self, aggregate: str) -> list[int]:
        return [int(v) for v in self.client.lrange(self.sequence_key(aggregate), 0, -1)]

    def close(self) -> None:
        self.client.close()
        self.gate_client.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def build_bus(config: FaultConfig, effects: Effects, **overrides: Any) -> EventBus:
    """The bus of a fault test (publisher or worker), with the handlers ``config`` names.

    The handlers write to ``effects``.
    """
    transport_options: dict[str, Any] = {}
    transport: str | None = None
    if config.on_redis:
        # (Sentinel: the worker picks eventbus's transport for it, or kombu's when asked.)
        transport = None if config.on_sentinel else REDIS_TRANSPORTS[config.transport]
        transport_options = {
            "visibility_timeout": VISIBILITY_TIMEOUT,
            # Look for a dead worker's messages every second, not every 100 s.
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
            # A worker killed while it holds the restore mutex blocks every
            # restore until the mutex expires (kombu's default: 300 s).
            "unacked_mutex_expire": 5,
        }
        if config.master_name:
            transport_options["master_name"] = config.master_name
    wanted = "kombu" if transport is None else "eventbus"
    if config.on_sentinel:
        wanted = config.transport
    app = make_app(
        config.broker_url,
        eventbus_redis_url=config.state_url,
        eventbus_redis_prefix=config.state_prefix,
        eventbus_redis_wait_replicas=config.wait_replicas,
        broker_transport=transport,
        # (kombu's: broker_transport unset would get eventbus's, chosen from the URL)
        eventbus_redis_transport=wanted,
        # Flower's task-sent events are not what these tests count: leave
        # the publisher's and the brokers' time to the task messages.
        task_send_sent_event=False,
        **({} if config.queue_type == "classic" else {"eventbus_queue_type": config.queue_type}),
        **overrides,
    )
    # Added to make_app's own options: their connection name keeps kombu from
    # pooling this app's connections with another test's (process-wide, by
    # URL and options), which a broker restart in that test left broken.
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, **transport_options}
    bus = EventBus(app, default_queue=config.queue, dead_letter_queue=config.dead_letter_queue)
    worker, gated = config.worker, config.gated

    if config.handlers in ("kill", "count", "cluster"):

        def plain(envelope: Envelope[Probe]) -> None:
            effects.record(PLAIN, str(envelope.event_id), worker)
            if gated:
                effects.pass_gate()  # the rest of the run, as long as the test wants

        bus.subscribe(Probe, handler=plain, name=PLAIN, **RETRY_OPTIONS)

    if config.handlers in ("kill", "cluster"):

        def idem(envelope: Envelope[Probe]) -> None:
            effects.record(IDEM, str(envelope.event_id))

        def atomic(envelope: Envelope[Probe]) -> None:
            store = bus.idempotency
            assert isinstance(store, RedisIdempotencyStore)
            with store.atomic() as tx:
                tx.hincrby(effects.runs_key(ATOMIC), str(envelope.event_id), 1)

        bus.subscribe(Probe, handler=idem, name=IDEM, idempotent=True, **RETRY_OPTIONS)
        bus.subscribe(Probe, handler=atomic, name=ATOMIC, idempotent=True, **RETRY_OPTIONS)

    if config.handlers == "ordered":

        def ordered(envelope: Envelope[Step]) -> None:
            assert envelope.aggregate_id is not None and envelope.sequence is not None
            effects.client.rpush(effects.sequence_key(envelope.aggregate_id), envelope.sequence)

        bus.subscribe(Step, handler=ordered, name=ORDERED, ordered=True, **RETRY_OPTIONS)

    if config.handlers == "dlq":

        def timed(envelope: Envelope[Doomed]) -> None:
            effects.record(TIMED, str(envelope.event_id), worker)
            effects.block()

        def failing(envelope: Envelope[Flaky]) -> None:
            effects.record(FAILING, str(envelope.event_id), worker)
            raise RuntimeError(f"{FAILING} always fails")

        def other(envelope: Envelope[Probe]) -> None:
            effects.record(OTHER, str(envelope.event_id), worker)

        once = {**RETRY_OPTIONS, "max_retries": 0}
        bus.subscribe(Doomed, handler=timed, name=TIMED, time_limit=TIME_LIMIT, **once)
        retried = {**RETRY_OPTIONS, "max_retries": FAILING_RETRIES}
        bus.subscribe(Flaky, handler=failing, name=FAILING, **retried)
        bus.subscribe(Probe, handler=other, name=OTHER, queue=config.other_queue, **once)

    if config.handlers == "cluster":

        def recovering(envelope: Envelope[Flaky]) -> None:
            effects.record(RECOVERING, str(envelope.event_id), worker)
            delivery = current_delivery()
            assert delivery is not None
            if delivery.attempt <= FAILING_RETRIES:
                raise RuntimeError(f"{RECOVERING} fails attempt {delivery.attempt}")

        def always_failing(envelope: Envelope[Flaky]) -> None:
            effects.record(FAILING, str(envelope.event_id), worker)
            raise RuntimeError(f"{FAILING} always fails")

        retried = {**RETRY_OPTIONS, "max_retries": FAILING_RETRIES}
        bus.subscribe(Flaky, handler=recovering, name=RECOVERING, **retried)
        bus.subscribe(Flaky, handler=always_failing, name=FAILING, **retried)

    return bus


def refuse_dead_letters(bus: EventBus, effects: Effects) -> None:
    """Dead-letter writes of this process fail while the test says so (``break_dead_letters``).

    Each refused write takes a second, as one to a broker that went away does.
    While the test holds them (``hold_dead_letters``), writes wait before they
    reach the broker.
    """
    from eventbus.errors import DeadLetterError

    store = bus.dead_letter_store
    for name in ("append", "append_once"):
        real = getattr(store, name, None)
        if real is None:
            continue

        def refusing(record: Any, _real: Any = real, **options: Any) -> None:
            if effects.dead_letters_held():
                effects.wait_to_write()
            if effects.dead_letters_broken():
                effects.refuse_write()
                raise DeadLetterError("the dead-letter queue is unreachable (refused by the test)")
            _real(record, **options)

        setattr(store, name, refusing)


def count_receipts(bus: EventBus, effects: Effects) -> None:
    """Count each handler message the worker's consumer receives, by event id.

    Celery sends ``task_received`` in the worker's main process once the
    broker handed the message over (on Redis: once it is in the unacked
    hash), before any pool process runs it.
    """

    def on_received(sender: object = None, request: Any = None, **_: Any) -> None:
        name = getattr(request, "task_name", None)
        if not isinstance(name, str) or not bus.has_handler(name):
            return
        args = request.args
        envelope = args[0] if args else None
        if isinstance(envelope, dict) and "event_id" in envelope:
            effects.client.hincrby(effects.received_key(name), str(envelope["event_id"]), 1)

    signals.task_received.connect(on_received, weak=False)


if os.environ.get("EVENTBUS_FAULTS_BROKER_URL"):
    _config = FaultConfig.from_environ(dict(os.environ))
    _effects = Effects(_config.effects_url, _config.effects_prefix)
    bus = build_bus(
        _config,
        _effects,
        worker_hijack_root_logger=True,  # the worker's log is the test's evidence
    )
    app = bus.app
    count_receipts(bus, _effects)
    if _config.handlers == "dlq":
        refuse_dead_letters(bus, _effects)
