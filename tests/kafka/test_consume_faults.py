"""The Kafka consumer under faults: killed mid-stream, and a Celery broker that refuses publishes.

Real processes: ``eventbus kafka consume`` as a subprocess (killed with
SIGKILL, stopped with SIGTERM), real ``celery worker`` subprocesses running
the fault tests' three handlers of :mod:`tests.faults.fault_app` (plain,
idempotent with a separate write, idempotent with ``atomic()``), which count
their effects by event id in Redis. Each test records its figure lines.

The refusal test runs on both Celery brokers (each refuses in its own way).
The Kafka-side faults run on one each, to keep CI short (the CI budget of these
tests is about a minute): the consumer's SIGKILL on RabbitMQ, where a batch
killed mid-dispatch has messages out and unconfirmed; the Kafka broker's
restart on Redis. Both pass on the other (their figures are in the README).
"""

from __future__ import annotations

import gc
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from eventbus import Envelope, Event, create_event
from eventbus.domain.events import EventRegistry
from eventbus.kafka.consumer_metrics import ConsumerMetrics
from tests.brokers import PrivateRedis
from tests.faults.fault_app import ATOMIC, IDEM, PLAIN, Probe
from tests.integration.conftest import FIGURES, Env
from tests.kafka.broker import TansuBroker, unique_topic
from tests.kafka.consume_support import (
    Cluster,
    Raw,
    committed,
    consuming,
    create_topic,
    delete_topics,
    envelope_record,
    produce,
    read_topic,
)
from tests.kafka.faults import DurableTansu, Refusal, kafka_fault_env, wait_handled
from tests.support import require_broker, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.faults]

EVENTS = 2000
PARTITIONS = 3
HANDLERS = {"plain": PLAIN, "idem": IDEM, "atomic": ATOMIC}

Figure = Callable[[str], str]


@pytest.fixture(autouse=True, scope="module")
def _no_garbage_left() -> Iterator[None]:
    """Collect this module's cyclic garbage before the next module runs.

    A librdkafka client left to the cyclic GC and freed in a forked child
    hangs it (its destroy waits for the parent's threads): a later test that
    forks (tests/kafka/test_publish.py) must not inherit any.
    """
    yield
    gc.collect()


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def celery_broker(request: pytest.FixtureRequest) -> str:
    return require_broker(request.param)


@pytest.fixture
def figure() -> Figure:
    """Record a figure line: printed now, listed again at the end of the run."""

    def record(line: str) -> str:
        print(line)
        FIGURES.append(line)
        return line

    return record


class Streaming:
    """Produces records in a thread, 100 at a time (each batch acknowledged), as a stream."""

    def __init__(self, broker: Cluster, topic: str, records: list[Raw]) -> None:
        self.broker, self.topic, self.records = broker, topic, records
        self.produced = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def _run(self) -> None:
        try:
            for start in range(0, len(self.records), 100):
                produce(self.broker, self.topic, self.records[start : start + 100])
                self.produced = min(len(self.records), start + 100)
        except BaseException as exc:  # re-raised by join()
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float = 60) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"producing took over {timeout}s"
        if self.error is not None:
            raise AssertionError(f"producing failed: {self.error!r}") from self.error


def _runs(runs: dict[str, list[int]]) -> int:
    return sum(len(v) for v in runs.values())


def _total(offsets: dict[int, int]) -> int:
    return sum(max(0, offset) for offset in offsets.values())


@pytest.mark.rabbitmq
def test_sigkill_of_the_consumer_mid_stream_loses_no_event(
    kafka_broker: TansuBroker, tmp_path: Path, figure: Figure
) -> None:
    celery_broker = require_broker("rabbitmq")  # (see the module docstring)
    topic, group = unique_topic("kill"), unique_topic("group")
    create_topic(kafka_broker, topic, PARTITIONS)
    with kafka_fault_env(celery_broker, kafka_broker, tmp_path) as env:
        try:
            # Given a prefork worker running three handlers of Probe, and a
            # consumer feeding it from a 3-partition topic
            envelopes = [
                create_event(Probe, {"n": n}, aggregate_id=f"a{n % 50}") for n in range(EVENTS)
            ]
            event_ids = [str(e.event_id) for e in envelopes]
            env.start_worker(concurrency=2)
            first = env.start_consumer(topic=topic, group=group)

            # When 2,000 events stream in (half of them waiting already, the rest
            # 100 at a time), and the consumer is SIGKILLed once it committed a
            # third of them, busy with the backlog (a batch in hand, or
            # dispatched and not yet committed)
            records = [envelope_record(e) for e in envelopes]
            produce(kafka_broker, topic, records[: EVENTS // 2])
            producer = Streaming(kafka_broker, topic, records[EVENTS // 2 :])
            producer.start()
            wait_for(
                lambda: _total(committed(kafka_broker, group, topic, PARTITIONS)) >= EVENTS // 3,
                timeout=60,
                interval=0.05,
                message=lambda: f"a third committed ({producer.produced} produced)\n{env.logs()}",
            )
            first.kill()
            produced_at_kill = EVENTS // 2 + producer.produced
            handled_at_kill = env.effects.handled(PLAIN)
            committed_at_kill = _total(committed(kafka_broker, group, topic, PARTITIONS))

            # and started again
            started = time.monotonic()
            second = env.start_consumer(topic=topic, group=group)
            producer.join()

            # Then every handler runs every event
            wait_handled(env, list(HANDLERS.values()), EVENTS, timeout=90)
            caught_up = time.monotonic() - started
            # and a SIGTERM stops the consumer gracefully, everything committed
            wait_for(
                lambda: _total(committed(kafka_broker, group, topic, PARTITIONS)) == EVENTS,
                timeout=15,
                interval=0.2,
                message=lambda: f"all committed: {committed(kafka_broker, group, topic, 3)}",
            )
            assert second.terminate() == 0, env.logs()
            log = second.log_path.read_text()
            # The restarted consumer dispatched exactly what was not committed
            redispatched = EVENTS - committed_at_kill
            assert f"stopped: dispatched {redispatched}," in log, log
        finally:
            delete_topics(kafka_broker, topic)
        for label, handler in HANDLERS.items():
            runs = env.effects.runs(handler)
            lost = [event_id for event_id in event_ids if event_id not in runs]
            duplicates = sum(count - 1 for count in runs.values())
            figure(
                f"kafka-kill[{env.kind}] {label}: produced={EVENTS} handled={len(runs)} "
                f"lost={len(lost)} duplicate_effects={duplicates} (killed at {produced_at_kill} "
                f"produced, {handled_at_kill} handled, {committed_at_kill} committed; the "
                f"restart dispatched "
                f"{redispatched} and caught up in {caught_up:.1f}s)"
            )
            assert not lost, f"{label}: lost {len(lost)}: {lost[:5]}"
            if label == "atomic":
                assert duplicates == 0
        assert env.bus.dead_letter_store.count() == 0


REGISTRY = EventRegistry()


@REGISTRY.register
class Tick(Event):
    """One numbered event of the refusal test."""

    event_type = "kafka.tick"

    n: int


@pytest.fixture
def refusing(celery_broker: str) -> Iterator[tuple[Env, Refusal]]:
    """The test's app and bus, on a Celery broker the test can make refuse publishes.

    Redis: a private redis-server (its memory limit is the refusal); RabbitMQ:
    the shared node (a policy on the test's own queue is).
    """
    with ExitStack() as stack:
        if celery_broker.startswith("redis"):
            private = PrivateRedis(persistent=False)
            private.start()
            stack.callback(private.close)
            env = Env(private.url, stack, "refuse")
            refusal = Refusal("redis", redis_url=private.url)
        else:
            env = Env(celery_broker, stack, "refuse")
            refusal = Refusal("rabbitmq", queue=env.queue)
            stack.callback(refusal.accept)  # (no policy left behind on the shared node)
        env.bus.event_registry = REGISTRY
        yield env, refusal


def test_a_celery_broker_refusing_publishes_holds_the_offsets(
    refusing: tuple[Env, Refusal], kafka_broker: TansuBroker, figure: Figure
) -> None:
    # Given a handler of Tick, its worker, and a consumer that dispatched and
    # committed the first 20 records of a 2-partition topic
    env, refusal = refusing
    handled: set[int] = set()
    lock = threading.Lock()

    def handle(envelope: Envelope[Tick]) -> None:
        with lock:
            handled.add(envelope.data.n)

    env.bus.subscribe(Tick, handler=handle, name=env.name("tick"))
    # and an ordered one: the consumer numbers each aggregate's events at dispatch,
    # and a batch dispatched again must keep its numbers (a gap would hold it)
    in_order: dict[str, list[int]] = defaultdict(list)

    def record_order(envelope: Envelope[Tick]) -> None:
        with lock:
            in_order[str(envelope.aggregate_id)].append(envelope.data.n)

    env.bus.subscribe(Tick, handler=record_order, name=env.name("ordered"), ordered=True)
    env.start_worker()  # (solo: no pool threads left in the test process, which forks later)
    topic, group = unique_topic("refuse"), unique_topic("group")
    create_topic(kafka_broker, topic, 2)
    ticks = [
        create_event(Tick, {"n": n}, aggregate_id=f"t{n % 4}", event_registry=REGISTRY)
        for n in range(50)
    ]

    def total() -> int:
        return _total(committed(kafka_broker, group, topic, 2))

    registry = CollectorRegistry()

    def lag() -> float:
        return sum(
            registry.get_sample_value(
                "eventbus_kafka_consumer_lag", {"group": group, "topic": topic, "partition": p}
            )
            or 0.0
            for p in ("0", "1")
        )

    try:
        with consuming(
            env.bus,
            kafka_broker,
            topics=[topic],
            group=group,
            batch_size=10,
            retry_backoff_max=2,
            metrics=ConsumerMetrics(group, registry),
        ) as consumer:
            produce(kafka_broker, topic, [envelope_record(e) for e in ticks[:20]])
            wait_for(lambda: len(handled) == 20 and total() == 20, timeout=30, interval=0.1)

            # When the Celery broker refuses the handler messages while 30 more come
            refusal.refuse()
            refused_at = time.monotonic()
            produce(kafka_broker, topic, [envelope_record(e) for e in ticks[20:]])
            wait_for(
                lambda: consumer.totals["failed_batches"] >= 2,
                timeout=30,
                interval=0.05,
                message=lambda: f"two failed dispatches: {consumer.totals}",
            )
            # Then no offset is committed past a record that was not dispatched
            committed_while_refused = total()
            assert committed_while_refused == 20
            assert len(handled) == 20
            # and the lag metric counts the 30 records waiting
            wait_for(lambda: lag() == 30, timeout=5, message=lambda: f"lag 30, not {lag()}")

            # and once the broker accepts them again, every record is dispatched,
            # handled and committed
            refusal.accept()
            refused_for = time.monotonic() - refused_at
            wait_for(
                lambda: len(handled) == 50 and total() == 50 and _runs(in_order) == 50,
                timeout=30,
                interval=0.1,
                message=lambda: f"{len(handled)} handled, {total()} committed",
            )
            wait_for(lambda: lag() == 0, timeout=5, message=lambda: f"lag 0, not {lag()}")
    finally:
        delete_topics(kafka_broker, topic)
    assert handled == set(range(50))
    assert in_order == {f"t{a}": list(range(a, 50, 4)) for a in range(4)}
    figure(
        f"kafka-refuse[{env.kind}]: produced=50 handled={len(handled)} "
        f"lost={50 - len(handled)} committed_while_refused={committed_while_refused} "
        f"(20 dispatched before) failed_dispatches={consumer.totals['failed_batches']} "
        f"refused for {refused_for:.1f}s"
    )


@pytest.fixture
def durable_kafka(tmp_path: Path) -> Iterator[DurableTansu]:
    """A Kafka-protocol broker of the test's own whose records survive its restart."""
    pytest.importorskip("moto.server", reason="moto[server] (the test extra) serves its S3")
    broker = DurableTansu(tmp_path).launch()
    try:
        yield broker
    finally:
        broker.close()


@pytest.mark.redis
def test_a_kafka_broker_restart_mid_stream_loses_no_event_it_kept(
    durable_kafka: DurableTansu, tmp_path: Path, figure: Figure
) -> None:
    """Every record the Kafka broker still holds after its restart is handled.

    Tansu 0.6.0 on S3 can lose records it acknowledged just before a SIGKILL
    (seen: 40 of 2,000, none of them on the topic afterwards): those are the
    broker's loss, counted apart (``broker_lost``); the consumer's is ``lost``.
    """
    celery_broker = require_broker("redis")  # (the Kafka side is what fails here)
    topic, group = unique_topic("restart"), unique_topic("group")
    create_topic(durable_kafka, topic, PARTITIONS)
    with kafka_fault_env(celery_broker, durable_kafka, tmp_path) as env:
        # Given a worker running three handlers of Probe, a consumer feeding it,
        # and 2,000 events streaming in (half of them waiting already)
        envelopes = [
            create_event(Probe, {"n": n}, aggregate_id=f"a{n % 50}") for n in range(EVENTS)
        ]
        event_ids = [str(e.event_id) for e in envelopes]
        records = [envelope_record(e) for e in envelopes]
        produce(durable_kafka, topic, records[: EVENTS // 2])
        env.start_worker(concurrency=2)
        consumer = env.start_consumer(topic=topic, group=group)
        producer = Streaming(durable_kafka, topic, records[EVENTS // 2 :])
        producer.start()

        # When the Kafka broker is SIGKILLed once a third was committed, and
        # started again (its storage kept)
        wait_for(
            lambda: _total(committed(durable_kafka, group, topic, PARTITIONS)) >= EVENTS // 3,
            timeout=60,
            interval=0.05,
            message=lambda: f"a third committed\n{env.logs()}\n{durable_kafka.log()}",
        )
        durable_kafka.crash()
        handled_at_crash = env.effects.handled(PLAIN)
        durable_kafka.start()
        started = time.monotonic()
        producer.join(timeout=90)  # (every record acknowledged)
        kept = read_topic(durable_kafka, topic)

        # Then every handler runs every event the broker kept, the consumer still running
        def done() -> bool:
            return all(set(kept) <= set(env.effects.runs(h)) for h in HANDLERS.values())

        wait_for(
            done,
            timeout=60,
            interval=0.1,
            message=lambda: (
                f"the {len(kept)} events the broker kept handled: "
                f"{ {h: env.effects.handled(h) for h in HANDLERS.values()} }\n{env.logs()}"
            ),
        )
        caught_up = time.monotonic() - started
        wait_for(
            lambda: (
                _total(committed(durable_kafka, group, topic, PARTITIONS))
                >= sum(len(places) for places in kept.values())
            ),
            timeout=30,
            interval=0.2,
            message=lambda: f"all committed: {committed(durable_kafka, group, topic, 3)}",
        )
        assert consumer.alive(), env.logs()
        assert consumer.terminate() == 0, env.logs()
        broker_lost = [i for i in event_ids if i not in kept]
        for label, handler in HANDLERS.items():
            runs = env.effects.runs(handler)
            lost = [event_id for event_id in kept if event_id not in runs]
            duplicates = sum(count - 1 for count in runs.values())
            figure(
                f"kafka-restart[{env.kind}] {label}: produced={EVENTS} kept={len(kept)} "
                f"handled={len(runs)} lost={len(lost)} duplicate_effects={duplicates} "
                f"broker_lost={len(broker_lost)} (Kafka broker SIGKILLed at a third "
                f"committed, {handled_at_crash} handled; all handled {caught_up:.1f}s "
                "after its restart)"
            )
            assert not lost, f"{label}: lost {len(lost)}: {lost[:5]}"
            assert set(runs) <= set(event_ids), f"{label} ran events nobody produced"
            if label == "atomic":
                assert duplicates == 0
        assert env.bus.dead_letter_store.count() == 0
