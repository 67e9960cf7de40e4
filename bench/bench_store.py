"""Event store: append throughput (batches of 1 and 100) and replay of a 10,000-event aggregate.

Per backend (memory as the floor, SQLite on a temporary file, PostgreSQL on a
table of the run's own), contenders interleaved every repetition:

1. append, batch of 1:   N events, one ``append([e], expected_version=v)``
                         each, round robin over 100 aggregates (every append
                         reads its aggregate's version, takes the lock,
                         inserts, commits). Events/s.
2. append, batch of 100: M events, ``append(batch of 100)`` of one aggregate
                         each, expected version given. Events/s.
3. replay:               one aggregate of R = 10,000 events (written once,
                         outside the clock): ``store.replay(...)`` folding
                         every event (decode through ``from_wire``, pydantic
                         validation included); the same with v1 data upcast
                         to v2 on the way; and ``load_records`` (rows only,
                         no decoding) to show what the database's part is.
                         Seconds, best of the repetitions.

Envelopes are built before the clock starts. The SQLite file is removed and
the PostgreSQL table dropped at the end (also on Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    best,
    fmt_num,
    install_signal_handlers,
    median,
    print_header,
    rotate,
    table,
    write_json,
)
from eventbus import Envelope, Event, EventRegistry, create_event
from eventbus.store import EventStore, InMemoryEventStore, SQLEventStore

POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("memory", "sqlite", "postgresql")
AGGREGATES = 100  #: aggregates the batch-of-1 appends go round

READ = EventRegistry()  #: the code that replays: v2, with an upcaster from v1
OLD = EventRegistry()  #: the code that wrote v1 data


class TodoEdited(Event, registry=READ):
    event_type = "bench.todo_edited"
    event_version = 2

    title: str
    notes: str
    priority: str


class TodoEditedV1(Event, registry=OLD):
    event_type = "bench.todo_edited"

    title: str
    notes: str


@READ.upcaster("bench.todo_edited", from_version=1)
def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "priority": "normal"}


def event(aggregate: str, i: int, *, old: bool = False) -> Envelope[Any]:
    data = {"title": f"todo {i}", "notes": "x" * 80}
    if old:
        return create_event(
            TodoEditedV1, data, aggregate_id=aggregate, aggregate_type="Todo", event_registry=OLD
        )
    return create_event(
        TodoEdited,
        {**data, "priority": "high"},
        aggregate_id=aggregate,
        aggregate_type="Todo",
        event_registry=READ,
    )


def open_store(backend: str, workdir: Path, table_name: str) -> EventStore:
    if backend == "memory":
        return InMemoryEventStore(event_registry=READ)
    if backend == "sqlite":
        store = SQLEventStore.open(f"sqlite:///{workdir / 'events.db'}", event_registry=READ)
    else:
        store = SQLEventStore.open(POSTGRES_URL, table_name=table_name, event_registry=READ)
    store.create_schema()
    return store


def backend_available(backend: str) -> str | None:
    if backend != "postgresql":
        return None
    import sqlalchemy as sa

    engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        engine.dispose()


def append_ones(store: EventStore, events: int, run: str) -> float:
    aggregates = [f"{run}-one-{a}" for a in range(AGGREGATES)]
    batch = [event(aggregates[i % AGGREGATES], i) for i in range(events)]
    versions = dict.fromkeys(aggregates, 0)
    start = time.perf_counter()
    for envelope in batch:
        aggregate = str(envelope.aggregate_id)
        store.append([envelope], expected_version=versions[aggregate])
        versions[aggregate] += 1
    return events / (time.perf_counter() - start)


def append_hundreds(store: EventStore, events: int, run: str) -> float:
    batches = [
        [event(f"{run}-hundred-{b}", i) for i in range(100)] for b in range(max(events // 100, 1))
    ]
    start = time.perf_counter()
    for batch in batches:
        store.append(batch, expected_version=0)
    return len(batches) * 100 / (time.perf_counter() - start)


def fill(store: EventStore, aggregate: str, events: int, *, old: bool) -> None:
    for offset in range(0, events, 100):
        store.append([event(aggregate, offset + i, old=old) for i in range(100)])


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def count(state: int, _envelope: Envelope[Any]) -> int:
    return state + 1


def reads(store: EventStore, run: str) -> dict[str, float]:
    """Seconds to read the big aggregate: replayed, replayed from v1 data, rows only."""
    current, old = f"{run}-replay", f"{run}-replay-v1"
    return {
        "replay": timed(lambda: store.replay(current, count, 0, aggregate_type="Todo")),
        "replay, v1 upcast": timed(lambda: store.replay(old, count, 0, aggregate_type="Todo")),
        "load_records": timed(lambda: store.load_records(current, aggregate_type="Todo")),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=(*BACKENDS, "all"), default="all")
    p.add_argument("--events", type=int, default=2000, help="events appended one by one per run")
    p.add_argument(
        "--batch-events", type=int, default=20000, help="events appended 100 at a time per run"
    )
    p.add_argument("--replay-events", type=int, default=10000, help="events of the replayed one")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args()
    install_signal_handlers()
    print_header("event store: append throughput and replay")

    wanted = list(BACKENDS) if args.backend == "all" else [args.backend]
    backends = []
    for backend in wanted:
        reason = backend_available(backend)
        if reason:
            print(f"skipping {backend}: {reason}", flush=True)
        else:
            backends.append(backend)
    run = f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-store-"))
    stores = {
        b: open_store(b, workdir, f"eventbus_bench_{run.replace('-', '_')}") for b in backends
    }
    ones: dict[str, list[float]] = {b: [] for b in backends}
    hundreds: dict[str, list[float]] = {b: [] for b in backends}
    replays: dict[tuple[str, str], list[float]] = {}
    try:
        for store in stores.values():
            fill(store, f"{run}-replay", args.replay_events, old=False)
            fill(store, f"{run}-replay-v1", args.replay_events, old=True)
        for rep in range(args.reps):
            for backend in rotate(backends, rep):
                store = stores[backend]
                tag = f"{run}-{rep}"
                ones[backend].append(append_ones(store, args.events, tag))
                hundreds[backend].append(append_hundreds(store, args.batch_events, tag))
                for name, seconds in reads(store, run).items():
                    replays.setdefault((backend, name), []).append(seconds)
                print(
                    f"rep {rep + 1}/{args.reps} {backend}: append x1 "
                    f"{fmt_num(ones[backend][-1])}/s, x100 {fmt_num(hundreds[backend][-1])}/s",
                    flush=True,
                )
    finally:
        for backend, store in stores.items():
            if isinstance(store, SQLEventStore) and backend == "postgresql":
                store.drop_schema()
            store.close()
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"cleanup: removed {workdir} and the run's PostgreSQL table", flush=True)

    print()
    rows = [
        [
            b,
            fmt_num(best(ones[b]), "/s"),
            fmt_num(median(ones[b]), "/s"),
            fmt_num(best(hundreds[b]), "/s"),
            fmt_num(median(hundreds[b]), "/s"),
        ]
        for b in backends
    ]
    print(
        table(["backend", "append x1 best", "x1 median", "append x100 best", "x100 median"], rows)
    )
    print()
    replay_rows = []
    for (backend, name), values in replays.items():
        fastest = min(values)
        replay_rows.append(
            [
                backend,
                f"{name} of {args.replay_events:,}",
                f"{fastest:.3f} s",
                f"{median(values):.3f} s",
                fmt_num(args.replay_events / fastest, "/s"),
            ]
        )
    print(table(["backend", "read", "best", "median", "events/s (best)"], replay_rows))
    results: list[dict[str, Any]] = [
        {
            "bench": "store",
            "backend": b,
            "append_x1_per_s": best(ones[b]),
            "append_x100_per_s": best(hundreds[b]),
            **{
                f"{name.replace(', ', '_').replace(' ', '_')}_s": min(values)
                for (backend, name), values in replays.items()
                if backend == b
            },
        }
        for b in backends
    ]
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
