"""The outbox on SQLite (a file per test) and PostgreSQL (tables per test, dropped after).

PostgreSQL is the local server (``EVENTBUS_TEST_POSTGRES_URL``); when it does
not answer its tests skip on a laptop and fail when ``CI`` is set.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from eventbus import Envelope, InMemoryEventBus, PublishError
from eventbus.bus.base import Subscription
from eventbus.outbox import Outbox
from eventbus.store import SQLEventStore
from tests.outbox.events import EVENTS, OrderPlaced, OrderShipped
from tests.store.conftest import require_postgres


@pytest.fixture(params=("sqlite", "postgresql"))
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine(backend: str, tmp_path: Path) -> Iterator[sa.Engine]:
    if backend == "postgresql":
        yield require_postgres()  # shared; disposed by the store tests' session fixture
        return
    # As Outbox("sqlite:///...") and SQLEventStore.open() would open it.
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}", connect_args={"timeout": 15.0})
    yield engine
    engine.dispose()


@pytest.fixture
def outbox(engine: sa.Engine, backend: str) -> Iterator[Outbox]:
    """An empty outbox table of this test's own."""
    box = Outbox(engine, table_name=f"eventbus_outbox_t{uuid.uuid4().hex[:10]}")
    box.create_schema()
    try:
        yield box
    finally:
        if backend == "postgresql":
            box.drop_schema()


@pytest.fixture
def store(engine: sa.Engine, backend: str) -> Iterator[SQLEventStore]:
    """An event store in the outbox's database."""
    events = SQLEventStore(
        engine, table_name=f"eventbus_events_t{uuid.uuid4().hex[:10]}", event_registry=EVENTS
    )
    events.create_schema()
    try:
        yield events
    finally:
        if backend == "postgresql":
            events.drop_schema()


class RecordingBus(InMemoryEventBus):
    """An in-memory bus whose broker can be "down": publish then raises PublishError.

    ``fail_after``: publishes that still succeed before it goes down. With
    ``batching`` (the default) ``batch()`` behaves as a broker's does (a Redis
    pipeline): the block's messages are held and delivered when it ends, and
    it raises PublishError, delivering none, when a publish in it failed, the
    broker is down or ``flush_fails`` is set. :attr:`batches`: the size of
    every batch delivered. Without ``batching`` it is the in-memory bus's no-op.
    """

    def __init__(self, *, max_payload_bytes: int | None = None, batching: bool = True) -> None:
        super().__init__(event_registry=EVENTS, raise_errors=True)
        self.received: list[Envelope[Any]] = []
        self.down = False
        self.fail_after: int | None = None
        self.batching = batching
        self.flush_fails = False
        self.batches: list[int] = []
        self._payload_limit = max_payload_bytes
        self._received_lock = threading.Lock()
        self._open = threading.local()  # the thread's open batch: [messages, failed]

        @self.subscribe(OrderPlaced, OrderShipped, name="outbox_test.record")
        def record(envelope: Envelope[Any]) -> None:
            with self._received_lock:
                self.received.append(envelope)

    @property
    def max_payload_bytes(self) -> int:
        limit = self._payload_limit
        return super().max_payload_bytes if limit is None else limit

    @contextmanager
    def batch(self) -> Iterator[None]:
        if not self.batching or getattr(self._open, "batch", None) is not None:
            yield
            return
        messages: list[tuple[Envelope[Any], Sequence[Subscription]]] = []
        state: list[Any] = [messages, False]
        self._open.batch = state
        try:
            yield  # an exception in the block discards its messages
        finally:
            self._open.batch = None
        if state[1] or self.down or self.flush_fails:
            raise PublishError(
                f"a batch of {len(messages)} event(s) was not sent: Connection refused"
            )
        for envelope, subscriptions in messages:
            super()._dispatch(envelope, subscriptions)
        with self._received_lock:
            self.batches.append(len(messages))

    def _dispatch(self, envelope: Envelope[Any], subscriptions: Sequence[Subscription]) -> None:
        if self.fail_after is not None:
            if self.fail_after <= 0:
                self.down = True
            self.fail_after -= 1
        state = getattr(self._open, "batch", None)
        if self.down:
            if state is not None:
                state[1] = True
            raise PublishError(f"could not publish {envelope.event_id}: Connection refused")
        if state is not None:
            self._wire(envelope)  # refused before it is held, as EventBus does (size limit)
            state[0].append((envelope, subscriptions))
            return
        super()._dispatch(envelope, subscriptions)

    def counts(self) -> Counter[str]:
        """How many times each event_id was handled."""
        with self._received_lock:
            return Counter(str(e.event_id) for e in self.received)


@pytest.fixture
def bus() -> RecordingBus:
    return RecordingBus()


def rows(box: Outbox) -> list[dict[str, Any]]:
    """Every row of the outbox, in id order."""
    with box.engine.connect() as conn:
        return [
            dict(r._mapping) for r in conn.execute(sa.select(box.table).order_by(box.table.c.id))
        ]
