"""``eventbus kafka consume``: records of a real Kafka-protocol broker reach real Celery handlers.

Tansu (the run's broker) feeds a :class:`~eventbus.kafka.consumer.KafkaConsumer`
in a thread; a real worker runs the handlers, on Redis and on RabbitMQ.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from eventbus import Envelope, Event, create_event
from eventbus.domain.events import EventRegistry
from tests.integration.conftest import Env
from tests.kafka.broker import TansuBroker, unique_topic
from tests.kafka.consume_support import (
    committed,
    consuming,
    create_topic,
    delete_topics,
    envelope_record,
    produce,
)
from tests.support import require_broker, wait_for

pytestmark = pytest.mark.kafka

REGISTRY = EventRegistry()


@REGISTRY.register
class Moved(Event):
    """A step of an aggregate, numbered per aggregate (n = 1, 2, 3...)."""

    event_type = "kafka.moved"

    n: int


@REGISTRY.register
class Paid(Event):
    """What another service (not eventbus) writes to its own topic as plain JSON."""

    event_type = "kafka.paid"

    amount: int


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    url = require_broker(request.param)
    with ExitStack() as stack:
        env = Env(url, stack, "kafka")
        env.bus.event_registry = REGISTRY
        yield env


class _Seen:
    """What the handlers ran, in this process (the worker runs in a thread of it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, list[Envelope[Any]]] = defaultdict(list)

    def add(self, handler: str, envelope: Envelope[Any]) -> None:
        with self.lock:
            self.runs[handler].append(envelope)

    def count(self, handler: str) -> int:
        with self.lock:
            return len(self.runs[handler])


def test_records_reach_their_handlers_and_bad_ones_become_dead_letters(
    env: Env, kafka_broker: TansuBroker
) -> None:
    # Given handlers of Moved (one plain, one ordered) and of Paid, a worker,
    # a topic of eventbus records (3 partitions) and one of another service's
    seen = _Seen()
    env.bus.subscribe(Moved, handler=lambda e: seen.add("plain", e), name=env.name("plain"))
    env.bus.subscribe(
        Moved, handler=lambda e: seen.add("ordered", e), name=env.name("ordered"), ordered=True
    )
    env.bus.subscribe(Paid, handler=lambda e: seen.add("paid", e), name=env.name("paid"))
    env.start_worker()  # (solo: no pool threads left in the test process, which forks later)
    events, payments = unique_topic("events"), unique_topic("payments")
    create_topic(kafka_broker, events, 3)
    create_topic(kafka_broker, payments, 1)
    try:
        # When 60 events of 4 aggregates, then three bad records, are produced
        # as eventbus records, and 5 payments (and one invalid) as plain JSON
        moves = [
            create_event(Moved, {"n": n}, aggregate_id=f"agg-{a}", event_registry=REGISTRY)
            for n in range(1, 16)
            for a in range(4)
        ]
        unknown = create_event(Moved, {"n": 0}, aggregate_id="agg-x", event_registry=REGISTRY)
        unknown_wire = {**unknown.to_wire(), "event_type": "kafka.nobody"}
        future_wire = {**unknown.to_wire(), "version": 99}
        good = produce(kafka_broker, events, [envelope_record(e) for e in moves])
        bad = produce(
            kafka_broker,
            events,
            [
                (b"agg-x", b"{not json", None),
                (b"agg-x", _json(unknown_wire), [("eventbus-event-type", b"kafka.nobody")]),
                (b"agg-x", _json(future_wire), [("eventbus-event-type", b"kafka.moved")]),
            ],
        )
        paid = produce(
            kafka_broker,
            payments,
            [(b"acct-1", _json({"amount": i}), None) for i in range(5)]
            + [(b"acct-1", _json({"amount": "lots"}), None)],
        )
        group = unique_topic("group")
        with consuming(
            env.bus,
            kafka_broker,
            topics=[events, payments],
            group=group,
            topic_types={payments: Paid.event_type},
        ) as consumer:
            # Then every event is handled once by each of its handlers
            wait_for(
                lambda: (
                    seen.count("plain") >= 60
                    and seen.count("ordered") >= 60
                    and seen.count("paid") >= 5
                ),
                timeout=30,
                message=lambda: f"runs: { {k: len(v) for k, v in seen.runs.items()} }",
            )
            # and the consumer went past the bad records: everything committed
            ends = _ends({events: good + bad, payments: paid})
            wait_for(
                lambda: _committed(kafka_broker, group, events, payments) == ends,
                timeout=15,
                message=lambda: (
                    f"committed {_committed(kafka_broker, group, events, payments)}, wanted {ends}"
                ),
            )
        assert consumer.totals["dispatched"] == 65
        assert consumer.totals["dead_lettered"] == 4
        assert sorted(e.event_id for e in seen.runs["plain"]) == sorted(e.event_id for e in moves)
        # in each aggregate's order for the ordered handler
        order: dict[str, list[int]] = defaultdict(list)
        for envelope in seen.runs["ordered"]:
            order[str(envelope.aggregate_id)].append(envelope.data.n)
        assert order == {f"agg-{a}": list(range(1, 16)) for a in range(4)}
        # and the payments as Paid events of the record's key
        assert sorted(e.data.amount for e in seen.runs["paid"]) == [0, 1, 2, 3, 4]
        assert {e.aggregate_id for e in seen.runs["paid"]} == {"acct-1"}

        # And each bad record is a dead letter naming its topic, partition and offset
        letters = {(r.source or {}).get("offset"): r for r in env.bus.dead_letter_store.records()}
        wanted = {offset: (events, partition) for partition, offset in bad}
        wanted[paid[-1][1]] = (payments, paid[-1][0])
        assert len(letters) == 4, [r.summary() for r in letters.values()]
        for record in letters.values():
            assert record.source is not None and record.reason == "undecodable"
            where = (record.source["kafka_topic"], record.source["partition"])
            assert wanted[record.source["offset"]] == where
            assert record.handler is None and record.raw_body
        types = sorted(r.exception_type for r in letters.values())
        assert types == [
            "eventbus.errors.EnvelopeDecodeError",
            "eventbus.errors.EventValidationError",
            "eventbus.errors.EventVersionError",
            "eventbus.errors.UnknownEventType",
        ], [r.summary() for r in letters.values()]
    finally:
        delete_topics(kafka_broker, events, payments)


def _json(value: object) -> bytes:
    import json

    return json.dumps(value).encode()


def _ends(produced: dict[str, list[tuple[int, int]]]) -> dict[tuple[str, int], int]:
    """The committed offsets that mean "all read": each partition's last offset + 1."""
    ends: dict[tuple[str, int], int] = {}
    for topic, places in produced.items():
        for partition, offset in places:
            ends[(topic, partition)] = max(ends.get((topic, partition), 0), offset + 1)
    return ends


def _committed(
    broker: TansuBroker, group: str, events: str, payments: str
) -> dict[tuple[str, int], int]:
    found = {(events, p): o for p, o in committed(broker, group, events, 3).items() if o >= 0}
    found.update({(payments, p): o for p, o in committed(broker, group, payments, 1).items()})
    return found


def test_a_stopped_consumer_leaves_no_kafka_client_for_the_garbage_collector(
    kafka_broker: TansuBroker,
) -> None:
    # A librdkafka client freed by the cyclic GC in a forked child (a prefork
    # worker, a pre-forking web server) hangs it: its destroy waits for the
    # parent's threads. Given a consumer that dead-lettered a bad record, and
    # whose first dispatch failed with an error kept in a reference cycle (as
    # redis-py's are), which keeps the frames of its traceback alive
    import gc
    from contextlib import contextmanager

    from eventbus.bus.memory import InMemoryEventBus
    from eventbus.errors import PublishError

    class RefusingOnce(InMemoryEventBus):
        refused = False

        @contextmanager
        def batch(self) -> Iterator[None]:
            if not self.refused:
                self.refused = True
                try:
                    raise PublishError("refused once (by the test)")
                except PublishError as exc:
                    kept = exc  # a cycle: the error, its traceback, this frame
                    raise kept from None
            yield

    confluent_kafka = pytest.importorskip("confluent_kafka")
    bus = RefusingOnce(event_registry=REGISTRY)
    seen: list[Envelope[Any]] = []
    bus.subscribe(Moved, handler=seen.append, name="kafka.gc.plain")
    topic = unique_topic("gc")
    create_topic(kafka_broker, topic, 1)
    try:
        good = create_event(Moved, {"n": 1}, event_registry=REGISTRY)
        produce(kafka_broker, topic, [(None, b"{not json", None), envelope_record(good)])
        gc.collect()
        gc.disable()  # (what is left now is left to the cyclic GC)
        kinds = (confluent_kafka.Consumer, confluent_kafka.Producer)
        # (Clients other tests of this process hold, alive on purpose, are not this one's.)
        before = {id(o) for o in gc.get_objects() if isinstance(o, kinds)}
        try:
            with consuming(
                bus, kafka_broker, topics=[topic], group=unique_topic("g"), retry_backoff_max=0.1
            ) as consumer:
                wait_for(lambda: seen, timeout=20)
            assert consumer.totals["failed_batches"] == 1
            # When it stopped, then no Kafka client of it is left alive
            alive = [o for o in gc.get_objects() if isinstance(o, kinds) and id(o) not in before]
        finally:
            gc.enable()
        assert alive == [], "a Kafka client only the cyclic garbage collector would free"
    finally:
        delete_topics(kafka_broker, topic)
