"""Outbox relay throughput vs direct ``bus.publish``: same bus, same broker, same run.

Per broker (Redis, RabbitMQ) and outbox database (SQLite on a temporary file,
PostgreSQL on a table of the run's own), contenders interleaved every
repetition (the order rotates):

* direct: ``bus.publish(envelope)`` for N envelopes built before the clock
          starts. Events/s.
* relay:  N rows written to the outbox before the clock starts (committed),
          then ``OutboxRelay(outbox, bus, batch_size=100).drain()``: per batch
          one transaction that locks 100 pending rows (``FOR UPDATE SKIP
          LOCKED`` / ``BEGIN IMMEDIATE``), decodes every payload, publishes
          them with ``bus.publish`` inside one ``bus.batch()`` (Redis:
          pipelined; RabbitMQ: one confirm wait), marks the batch with one
          UPDATE and commits; what is left is counted once, at the end. Rows/s.

One subscribed handler (one task message per event), no worker: the queue
is purged after every run, published rows deleted. Target: relay/direct >=
0.8. A run during which the broker went away (a shared machine) is discarded
and run again once the broker answers. The SQLite file is removed and the
PostgreSQL table dropped at the end (also on Ctrl-C / SIGTERM); the broker's
queues are deleted.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    BROKER_URLS,
    Janitor,
    best,
    broker_available,
    brokers,
    fmt_num,
    fmt_ratio,
    install_signal_handlers,
    median,
    new_run_id,
    parser,
    print_header,
    ratio,
    rotate,
    table,
    verdict,
    write_json,
)
from bench.settings import make_app
from eventbus import Envelope, Event, EventBus, EventRegistry, PublishError, create_event
from eventbus.outbox import Outbox, OutboxRelay

POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgresql")
CONTENDERS = ["direct", "relay"]
BATCH_SIZE = 100  #: rows per relay batch (one transaction)
TARGET = 0.8  #: relay/direct, from the issue
WARMUP_EVENTS = 50
RUN_ATTEMPTS = 3  #: runs discarded in a row (broker gone) before giving up

EVENTS = EventRegistry()


class OrderPlaced(Event, registry=EVENTS):
    event_type = "bench.order_placed"

    title: str
    notes: str


def envelopes(n: int, key: str) -> list[Envelope[Any]]:
    return [
        create_event(
            OrderPlaced,
            {"title": f"order {i}", "notes": "x" * 80},
            aggregate_id=f"{key}-{i % 100}",
            aggregate_type="Order",
            event_registry=EVENTS,
        )
        for i in range(n)
    ]


def wait_for_broker(url: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while broker_available(url) is not None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the broker at {url} did not come back in {timeout:.0f}s")
        time.sleep(1)  # poll


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


def open_outbox(backend: str, workdir: Path, run: str) -> Outbox:
    if backend == "sqlite":
        outbox = Outbox(f"sqlite:///{workdir / 'outbox.db'}")
    else:
        outbox = Outbox(POSTGRES_URL, table_name=f"eventbus_outbox_{run.replace('-', '_')}")
    outbox.create_schema()
    return outbox


class BrokerGone(Exception):
    """The broker went away during a run (the machine is shared): the run is discarded."""


def run_direct(bus: EventBus, n: int, key: str) -> float:
    batch = envelopes(n, key)
    gc.collect()
    start = time.perf_counter()
    try:
        for envelope in batch:
            bus.publish(envelope)
    except PublishError as exc:
        raise BrokerGone(str(exc)) from exc
    return n / (time.perf_counter() - start)


def run_relay(bus: EventBus, outbox: Outbox, n: int, key: str) -> float:
    batch = envelopes(n, key)
    with outbox.engine.begin() as conn:
        for i in range(0, n, 500):
            outbox.add(batch[i : i + 500], connection=conn)
    relay = OutboxRelay(outbox, bus, batch_size=BATCH_SIZE)
    gc.collect()
    start = time.perf_counter()
    result = relay.drain()
    elapsed = time.perf_counter() - start
    if result.error is not None:
        raise BrokerGone(result.error)
    if (result.published, result.failed, result.pending_left) != (n, 0, 0):
        raise RuntimeError(f"the relay did not publish every row: {result}")
    outbox.delete_published(older_than=timedelta(0))
    return n / elapsed


def bench_broker(
    broker: str, backends: list[str], n: int, reps: int, workdir: Path
) -> list[dict[str, Any]]:
    url = BROKER_URLS[broker]
    run = new_run_id("outbox")
    janitor = Janitor(broker, url)
    queue, dlq = f"bench.{run}.outbox", f"bench.{run}.dlq"
    janitor.track(queue, dlq)
    app = make_app(f"bench-{run}", url)
    bus = EventBus(app, default_queue=queue, dead_letter_queue=dlq, event_registry=EVENTS)
    bus.subscribe(OrderPlaced, handler=lambda envelope: None, name=f"bench.{run}.handler")
    results: list[dict[str, Any]] = []
    outboxes: dict[str, Outbox] = {}
    try:
        for backend in backends:
            outboxes[backend] = open_outbox(backend, workdir, run)

        def once(contender: str, backend: str, events: int, key: str) -> float:
            for _ in range(RUN_ATTEMPTS):
                try:
                    if contender == "direct":
                        rate = run_direct(bus, events, key)
                    else:
                        rate = run_relay(bus, outboxes[backend], events, key)
                except BrokerGone as exc:
                    print(f"  {contender}: the broker went away, run discarded: {exc}", flush=True)
                    wait_for_broker(url)
                    with outboxes[backend].engine.begin() as conn:
                        conn.execute(outboxes[backend].table.delete())
                    janitor.purge([queue])
                    continue
                janitor.purge([queue])
                return rate
            raise RuntimeError(f"the broker went away in {RUN_ATTEMPTS} runs in a row")

        for backend in backends:
            print(f"{broker} / {backend}: running ...", flush=True)
            rates: dict[str, list[float]] = {c: [] for c in CONTENDERS}
            for contender in CONTENDERS:  # connections, declarations, first-call costs
                once(contender, backend, WARMUP_EVENTS, "warmup")
            for rep in range(reps):
                for contender in rotate(CONTENDERS, rep):
                    rates[contender].append(once(contender, backend, n, f"r{rep}"))
            for contender in CONTENDERS:
                results.append(
                    {
                        "bench": "outbox",
                        "broker": broker,
                        "setting": backend,
                        "contender": contender,
                        "unit": "events/s",
                        "best": best(rates[contender]),
                        "median": median(rates[contender]),
                        "runs": rates[contender],
                    }
                )
    finally:
        for outbox in outboxes.values():
            if outbox.engine.dialect.name == "postgresql":
                outbox.drop_schema()
            outbox.close()
        app.pool.force_close_all()
        app.close()
        janitor.cleanup()
    return results


def main() -> int:
    p = parser(__doc__.splitlines()[0], events=2000, reps=3)
    p.add_argument("--backend", choices=(*BACKENDS, "both"), default="both")
    args = p.parse_args()
    install_signal_handlers()
    print_header(
        f"outbox: {args.events} events, 1 handler, relay batches of {BATCH_SIZE}, "
        f"{args.reps} interleaved reps"
    )
    backends = []
    for backend in BACKENDS if args.backend == "both" else [args.backend]:
        why = backend_available(backend)
        if why:
            print(f"{backend}: SKIPPED, database unavailable ({why})", flush=True)
        else:
            backends.append(backend)
    results: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-outbox-"))
    try:
        for broker in brokers(args.broker):
            why = broker_available(BROKER_URLS[broker])
            if why:
                print(f"{broker}: SKIPPED, broker unavailable ({why})", flush=True)
                continue
            results += bench_broker(broker, backends, args.events, args.reps, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for broker in brokers(args.broker):
        for backend in backends:
            by = {
                r["contender"]: r
                for r in results
                if r["broker"] == broker and r["setting"] == backend and "contender" in r
            }
            if not by:
                continue
            r = ratio(by["relay"]["best"], by["direct"]["best"])
            rows.append(
                [
                    broker,
                    backend,
                    f"{fmt_num(by['direct']['best'])} (med {fmt_num(by['direct']['median'])})",
                    f"{fmt_num(by['relay']['best'])} (med {fmt_num(by['relay']['median'])})",
                    fmt_ratio(r),
                    fmt_ratio(ratio(by["relay"]["median"], by["direct"]["median"])),
                    f">= {TARGET} {verdict(r, TARGET)}",
                ]
            )
            results.append(
                {
                    "bench": "outbox",
                    "broker": broker,
                    "setting": backend,
                    "ratio": "relay/direct",
                    "value": r,
                    "target": f">= {TARGET}",
                    "ok": verdict(r, TARGET),
                }
            )
    print()
    print(f"outbox relay vs direct publish, events/s, best of {args.reps} (median)")
    print(
        table(
            [
                "broker",
                "outbox db",
                "direct bus.publish",
                "relay (batches of 100)",
                "relay/direct (best)",
                "(median)",
                "target",
            ],
            rows,
        ),
        flush=True,
    )
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
