"""The event store backends: memory, SQLite (a file per test), PostgreSQL (a table per test).

PostgreSQL is the local server (``EVENTBUS_TEST_POSTGRES_URL``); when it
does not answer its tests skip on a laptop and fail when ``CI`` is set. Each
test gets a table of its own (``eventbus_events_t<random>``), dropped after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from eventbus.store import EventStore, InMemoryEventStore
from eventbus.store.sql import SQLEventStore
from tests.store.events import CURRENT

POSTGRES_URL = os.environ.get(
    "EVENTBUS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("memory", "sqlite", "postgresql")

_postgres: dict[str, object] = {}


def require_postgres() -> sa.Engine:
    """The shared PostgreSQL engine; skip if unreachable, fail instead when CI is set."""
    if "engine" not in _postgres:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        try:
            with engine.connect():
                pass
            _postgres["engine"] = engine
        except Exception as exc:
            engine.dispose()
            _postgres["engine"] = None
            where = engine.url.render_as_string()
            _postgres["reason"] = f"PostgreSQL at {where} unreachable: {exc}"
    reason = _postgres.get("reason")
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the PostgreSQL server must be up)")
        pytest.skip(str(reason))
    return _postgres["engine"]  # type: ignore[return-value]


@pytest.fixture(scope="session", autouse=True)
def _dispose_postgres() -> Iterator[None]:
    yield
    engine = _postgres.get("engine")
    if engine is not None:
        engine.dispose()  # type: ignore[attr-defined]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, tmp_path: Path) -> Iterator[EventStore]:
    """A new, empty store on ``backend``, reading with today's event classes."""
    if backend == "memory":
        yield InMemoryEventStore(event_registry=CURRENT)
        return
    sql = (
        SQLEventStore.open(f"sqlite:///{tmp_path / 'events.db'}", event_registry=CURRENT)
        if backend == "sqlite"
        else SQLEventStore(
            require_postgres(),
            table_name=f"eventbus_events_t{uuid.uuid4().hex[:10]}",
            event_registry=CURRENT,
        )
    )
    sql.create_schema()
    try:
        yield sql
    finally:
        if backend == "postgresql":
            sql.drop_schema()
        sql.close()
