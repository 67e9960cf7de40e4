"""The broker's cost per event: Redis commands and CPU, RabbitMQ bytes and CPU, per handled event.

For each broker a server of the run's own (:mod:`bench.servers`: a
``redis-server`` without persistence, a RabbitMQ node without plugins), so that
its counters hold our traffic only. Contenders, interleaved (the order rotates
every repetition), each doing the same fan-out of an event to 5 no-op handlers:

* raw: 5 ``apply_async`` per event, a worker on kombu's own transport with
  Celery's own task events (``BENCH_STOCK_TRANSPORT``);
* eventbus: ``bus.publish(event)``, a worker as eventbus deploys it (on Redis
  eventbus's transport, celeryconfig's default);
* celery-pubsub: ``publish(topic, payload)`` (a group of 5), raw's worker setup;
* eventbus-noconfirm (RabbitMQ only): eventbus with
  ``eventbus_publish_confirms = False``, to show what the confirms cost.

Raw's and celery-pubsub's publisher is an app with a connection pool of its
own (:func:`bench.apps.build`): not channels eventbus put in confirm mode.

One run of a contender: its worker starts (``celery -A bench.apps:app worker``,
only its queue), answers a ping, handles a warm-up; then

1. idle: ``--idle-seconds`` with nothing to do (the worker's idle polling, its
   periodic restore of unacked messages, the server's own cron);
2. publish: the worker paused (SIGSTOP of its process group), N events
   published (the publisher side alone);
3. handle: the worker resumed, until the Redis counter of executions (on
   another server: the shared Redis, db 15) reaches N x 5, then
   ``--settle`` seconds more for the last acks and task events.

The server's counters are read at the edges of each phase. Redis: ``INFO cpu``
(``used_cpu_sys + used_cpu_user``), ``INFO stats`` (read events, bytes) and
``INFO commandstats`` (calls per command; the INFO calls that read them are
left out). RabbitMQ: the CPU time of the node's ``beam.smp`` (its threads'
``/proc/<pid>/task/*/schedstat``, in nanoseconds), its disk writes
(``/proc/<pid>/io``), and through one ``rabbitmqctl eval`` per reading, the
bytes and socket reads/writes of every connection (``rabbit_networking``, as
``list_connections recv_oct send_oct recv_cnt send_cnt``) and the node's
message counters (``rabbit_global_counters``: received, routed, dropped
unroutable, delivered, acknowledged, confirmed). The ``rabbitmqctl`` call
goes outside the CPU window (stats before the CPU reading at a window's start,
after it at its end): it costs the node more than a handful of events.

Per handled event: (publish + handle) / N, "gross" (all the broker's traffic
and CPU in those phases), and "net": minus the idle rate of the same run
times the handle phase's duration and minus the server-alone rate (measured
once, no client connected) times the publish phase's. Net is the lower bound:
a busy worker does not poll as an idle one does. Medians over the reps (min in
brackets). Target (issue 13): Redis CPU per handled event, eventbus/raw <= 0.7.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import apps
from bench.common import (
    COUNTER_URL,
    POOLS,
    ExecutionCounter,
    Worker,
    brokers,
    fmt_ratio,
    install_signal_handlers,
    new_run_id,
    parser,
    print_header,
    ratio,
    rotate,
    table,
    verdict,
    write_json,
)
from bench.servers import PrivateRabbitMQ, PrivateRedis

CONTENDERS = ["raw", "eventbus", "celery-pubsub"]
#: RabbitMQ only: eventbus with its publisher confirms off, to show what they cost the node.
NO_CONFIRMS = "eventbus-noconfirm"
#: How each contender publishes and which worker serves it.
PUBLISHES_AS = {c: c for c in CONTENDERS} | {NO_CONFIRMS: "eventbus"}
WARMUP_EVENTS = 20
TARGET = 0.7  # eventbus/raw, Redis CPU per handled event

Reading = dict[str, float]


def delta(before: Reading, after: Reading) -> Reading:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after.keys() | before.keys()}


def add(a: Reading, b: Reading, scale: float = 1.0) -> Reading:
    return {k: a.get(k, 0.0) + scale * b.get(k, 0.0) for k in a.keys() | b.keys()}


# -- reading the servers ---------------------------------------------------------


class RedisMeter:
    """Reads a Redis server's CPU, I/O and per-command counters (one INFO)."""

    #: Left out of the counts: our own readings.
    OWN = ("info",)

    def __init__(self, server: PrivateRedis) -> None:
        self.server = server
        self.client = redis.Redis.from_url(server.url)

    def read(self, edge: str = "") -> Reading:
        info = self.client.execute_command("INFO", "cpu", "stats", "commandstats")  # type: ignore[no-untyped-call]
        reading: Reading = {
            "time": time.monotonic(),
            "cpu_us": (info["used_cpu_sys"] + info["used_cpu_user"]) * 1e6,
            "reads": info["total_reads_processed"],
            "bytes_in": info["total_net_input_bytes"],
            "bytes_out": info["total_net_output_bytes"],
        }
        commands = 0
        for key, stats in info.items():
            if not key.startswith("cmdstat_"):
                continue
            name = key.removeprefix("cmdstat_")
            if name in self.OWN:
                continue
            commands += stats["calls"]
            reading[f"cmd.{name}"] = stats["calls"]
            reading[f"usec.{name}"] = stats["usec"]
        reading["commands"] = commands
        return reading

    def close(self) -> None:
        self.client.close()


#: One reading of a RabbitMQ node: its connections' bytes and socket reads/writes,
#: and its message counters, as ``k=v;`` pairs (parsed by :meth:`RabbitMeter.read`).
RABBIT_EVAL = """
C = rabbit_networking:connection_info_all([recv_oct, send_oct, recv_cnt, send_cnt]),
S = fun(K) -> lists:sum([V || I <- C, V <- [proplists:get_value(K, I, 0)], is_integer(V)]) end,
G = rabbit_global_counters:overview(),
P = maps:get([{protocol, amqp091}], G, #{}),
Q = maps:get([{protocol, amqp091}, {queue_type, rabbit_classic_queue}], G, #{}),
L = [{connections, length(C)}, {channels, length(rabbit_channel:list())}
     | [{K, S(K)} || K <- [recv_oct, send_oct, recv_cnt, send_cnt]]]
    ++ maps:to_list(P) ++ maps:to_list(Q),
lists:flatten([io_lib:format("~p=~p;", [K, V]) || {K, V} <- L]).
"""
#: Counters of the eval (node-wide, monotonic), under shorter names.
RABBIT_COUNTERS = {
    "recv_oct": "bytes_in",
    "send_oct": "bytes_out",
    "recv_cnt": "socket_reads",
    "send_cnt": "socket_writes",
    "messages_received_total": "msg_received",
    "messages_received_confirm_total": "msg_received_confirm",
    "messages_routed_total": "msg_routed",
    "messages_unroutable_dropped_total": "msg_dropped_unroutable",
    "messages_delivered_total": "msg_delivered",
    "messages_acknowledged_total": "msg_acked",
    "messages_confirmed_total": "msg_confirmed",
    "messages_redelivered_total": "msg_redelivered",
}
#: Gauges (not deltas): kept from the reading at a window's end.
RABBIT_GAUGES = ("connections", "channels")


class RabbitMeter:
    """Reads a RabbitMQ node's CPU (``beam.smp``) and counters (``rabbitmqctl eval``)."""

    def __init__(self, server: PrivateRabbitMQ) -> None:
        self.server = server
        self.beam = psutil.Process(server.pid)

    def cpu_us(self) -> float:
        # /proc/<pid>/stat counts in clock ticks (10 ms here): the threads'
        # schedstat counts nanoseconds on a CPU (beam's threads live as long as it).
        try:
            return sum(
                int(path.read_text().split()[0]) / 1000
                for path in Path(f"/proc/{self.beam.pid}/task").glob("*/schedstat")
            )
        except (OSError, ValueError, IndexError):
            times = self.beam.cpu_times()
            return float(times.user + times.system) * 1e6

    def counters(self) -> Reading:
        out = self.server.ctl("eval", " ".join(RABBIT_EVAL.split())).strip().strip('"')
        reading: Reading = {}
        for pair in filter(None, out.split(";")):
            key, _, value = pair.partition("=")
            name = RABBIT_COUNTERS.get(key, key if key in RABBIT_GAUGES else "")
            if name and value.lstrip("-").isdigit():
                reading[name] = float(value)
        return reading

    def disk_written(self) -> float:
        """Bytes the node wrote to storage (``/proc/<pid>/io`` write_bytes)."""
        try:
            return float(self.beam.io_counters().write_bytes)
        except (psutil.Error, AttributeError):
            return 0.0

    def read(self, edge: str = "") -> Reading:
        # rabbitmqctl costs the node more CPU than a handful of events: it runs
        # outside the window (before the CPU reading at its start, after at its end).
        if edge == "start":
            reading = self.counters()
            return {
                **reading,
                "time": time.monotonic(),
                "cpu_us": self.cpu_us(),
                "disk_written": self.disk_written(),
            }
        cpu, disk, now = self.cpu_us(), self.disk_written(), time.monotonic()
        return {**self.counters(), "time": now, "cpu_us": cpu, "disk_written": disk}

    def close(self) -> None:
        pass


Meter = RedisMeter | RabbitMeter


def window(meter: Meter, action: Callable[[], Any]) -> Reading:
    """The counters' deltas over ``action()`` ("time": its seconds; gauges at the end)."""
    before = meter.read("start")
    action()
    after = meter.read("end")
    out = delta(before, after)
    for gauge in RABBIT_GAUGES:
        if gauge in after:
            out[gauge] = after[gauge]
            out[f"{gauge}_before"] = before[gauge]
    return out


# -- one run ---------------------------------------------------------------------


def run_contender(
    *,
    meter: Meter,
    bench: apps.BenchApp,
    counter: ExecutionCounter,
    contender: str,
    pool: str,
    n: int,
    idle_seconds: float,
    settle: float,
    run: str,
    rep: int,
    env: dict[str, str],
) -> dict[str, Any]:
    kind = PUBLISHES_AS[contender]
    queue = bench.queues[apps.QUEUE_OF[kind]]
    worker_env = env if kind == "eventbus" else {**env, "BENCH_STOCK_TRANSPORT": "1"}
    worker = Worker(
        "bench.apps:app",
        queues=[queue],
        pool=pool,
        concurrency=POOLS[pool],
        name=f"{run}-{contender}-{rep}",
        env=worker_env,
    )
    if rep == 0:
        print(f"  {contender}: $ {' '.join(worker.argv[1:])}", flush=True)
    publish = apps.PUBLISHERS[kind]
    target = n * apps.FANOUT
    with worker:
        worker.wait_ready(bench.app)
        warm = apps.make_events(WARMUP_EVENTS, counter.key(contender, rep, "warmup"))
        publish(bench, warm, apps.wire_payloads(warm))
        counter.wait(warm[0].key, WARMUP_EVENTS * apps.FANOUT, 60)
        time.sleep(settle)

        idle = window(meter, lambda: time.sleep(idle_seconds))

        key = counter.key(contender, rep)
        events = apps.make_events(n, key)
        payloads = apps.wire_payloads(events)
        gc.collect()
        worker.pause()
        try:
            published = window(meter, lambda: publish(bench, events, payloads))
        except BaseException:
            worker.resume()
            raise

        def handle() -> None:
            worker.resume()
            counter.wait(key, target, 60 + target / 50)
            time.sleep(settle)

        handled = window(meter, handle)
        extra = counter.get(key) - target
    if extra:
        print(f"  {contender} rep {rep}: {extra} duplicate execution(s)", flush=True)
    for phase in (idle, published, handled):
        if phase.get("connections", 0) != phase.get("connections_before", 0):
            print(
                f"  {contender} rep {rep}: connections changed during a window "
                f"({phase['connections_before']:.0f} -> {phase['connections']:.0f}): "
                "the byte counts of a closed one are lost",
                flush=True,
            )
    return {"idle": idle, "publish": published, "handle": handled, "events": n}


def per_event(run: dict[str, Any], server_alone: Reading) -> tuple[Reading, Reading]:
    """(gross, net) per handled event: publish + handle phases, net minus idle costs."""
    n = run["events"]
    gross = add(run["publish"], run["handle"])
    idle_rate = {k: v / run["idle"]["time"] for k, v in run["idle"].items()}
    alone_rate = {k: v / server_alone["time"] for k, v in server_alone.items()}
    net = add(gross, idle_rate, -run["handle"]["time"])
    net = add(net, alone_rate, -run["publish"]["time"])
    return (
        {k: v / n for k, v in gross.items() if k not in RABBIT_GAUGES},
        {k: v / n for k, v in net.items() if k not in RABBIT_GAUGES},
    )


# -- one broker ------------------------------------------------------------------


def bench_broker(
    broker: str, pool: str, n: int, reps: int, idle_seconds: float, settle: float
) -> dict[str, Any] | None:
    try:
        server: PrivateRedis | PrivateRabbitMQ = (
            PrivateRedis() if broker == "redis" else PrivateRabbitMQ()
        )
    except FileNotFoundError as exc:
        print(f"{broker}: SKIPPED ({exc})", flush=True)
        return None
    run = new_run_id("cost")
    counter = ExecutionCounter(run)
    meter: Meter | None = None
    try:
        started = time.monotonic()
        server.start()
        print(
            f"{broker}: private server on 127.0.0.1:{server.port}, pid {server.pid} "
            f"(up in {time.monotonic() - started:.1f}s)",
            flush=True,
        )
        meter = RedisMeter(server) if isinstance(server, PrivateRedis) else RabbitMeter(server)
        # Eventbus publishes as deployed (eventbus's transport on Redis); raw and
        # celery-pubsub through kombu's own (publishing is kombu's code in both).
        stock = apps.build(server.url, run, stock_transport=True)
        benches = {"raw": stock, "eventbus": apps.build(server.url, run), "celery-pubsub": stock}
        if broker == "rabbitmq":
            benches[NO_CONFIRMS] = no_confirms = apps.build(server.url, run)
            conf = no_confirms.app.conf
            conf.eventbus_publish_confirms = False
            # Its own connection pool (see apps.build): channels of its own, not
            # those the other eventbus app put in confirm mode.
            conf.broker_transport_options = {
                **conf.broker_transport_options,
                "client_properties": {"connection_name": f"bench-{run}-noconfirm"},
            }
        env = {"BENCH_BROKER_URL": server.url, "BENCH_RUN": run, "BENCH_COUNTER_URL": COUNTER_URL}
        m = meter
        server_alone = window(m, lambda: time.sleep(idle_seconds))
        runs: dict[str, list[dict[str, Any]]] = {c: [] for c in benches}
        for rep in range(reps):
            for contender in rotate(list(benches), rep):
                result = run_contender(
                    meter=m,
                    bench=benches[contender],
                    counter=counter,
                    contender=contender,
                    pool=pool,
                    n=n,
                    idle_seconds=idle_seconds,
                    settle=settle,
                    run=run,
                    rep=rep,
                    env=env,
                )
                runs[contender].append(result)
                gross, _ = per_event(result, server_alone)
                print(
                    f"  rep {rep} {contender:18}: {gross['cpu_us']:7.1f} us CPU/event, "
                    + (
                        f"{gross['commands']:5.1f} commands/event"
                        if broker == "redis"
                        else f"{gross['bytes_in'] + gross['bytes_out']:7.0f} bytes/event"
                    )
                    + f" (publish {result['publish']['time']:.2f}s, "
                    f"handle {result['handle']['time']:.2f}s)",
                    flush=True,
                )
        return {
            "broker": broker,
            "setting": f"{pool} c={POOLS[pool]}",
            "server_alone": server_alone,
            "runs": runs,
        }
    finally:
        if meter is not None:
            meter.close()
        counter.cleanup()
        server.close()


# -- figures ---------------------------------------------------------------------


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarize(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per contender: medians and minimums of the per-event figures, idle rates."""
    out: dict[str, dict[str, Any]] = {}
    for contender, runs in result["runs"].items():
        pairs = [per_event(run, result["server_alone"]) for run in runs]
        keys = set().union(*(g.keys() for g, _ in pairs)) - {"time"}
        idle = [{k: v / r["idle"]["time"] for k, v in r["idle"].items()} for r in runs]
        publish = [{k: v / r["events"] for k, v in r["publish"].items()} for r in runs]
        out[contender] = {
            "gross": {k: med([g.get(k, 0.0) for g, _ in pairs]) for k in keys},
            "gross_min": {k: min(g.get(k, 0.0) for g, _ in pairs) for k in keys},
            "net": {k: med([nt.get(k, 0.0) for _, nt in pairs]) for k in keys},
            "net_min": {k: min(nt.get(k, 0.0) for _, nt in pairs) for k in keys},
            "publish": {k: med([p.get(k, 0.0) for p in publish]) for k in keys},
            "idle_rate": {k: med([i.get(k, 0.0) for i in idle]) for k in keys},
        }
    return out


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def redis_report(result: dict[str, Any], summary: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    rows = []
    for c in CONTENDERS:
        s = summary[c]
        g, nt, p = s["gross"], s["net"], s["publish"]
        rows.append(
            [
                c,
                f"{fmt(g['cpu_us'])} ({fmt(s['gross_min']['cpu_us'])})",
                f"{fmt(nt['cpu_us'])} ({fmt(s['net_min']['cpu_us'])})",
                f"{fmt(p['cpu_us'])}",
                f"{fmt(g['commands'])} / {fmt(nt['commands'])}",
                f"{fmt(p['commands'])}",
                f"{fmt(g['reads'])}",
                f"{fmt(g['bytes_in'], 0)} / {fmt(g['bytes_out'], 0)}",
            ]
        )
    lines.append(
        "Redis, per handled event (1 event = 5 handler messages), median of the reps (min):"
    )
    lines.append(
        table(
            [
                "contender",
                "CPU us gross",
                "CPU us net of idle",
                "of which publish",
                "commands gross / net",
                "of which publish",
                "reads (~round trips)",
                "bytes in / out",
            ],
            rows,
        )
    )
    eb, raw, ps = summary["eventbus"], summary["raw"], summary["celery-pubsub"]
    ratio_rows = []
    for label, key in (("gross", "gross"), ("net of idle", "net"), ("gross, min", "gross_min")):
        r_raw = ratio(eb[key]["cpu_us"], raw[key]["cpu_us"])
        r_ps = ratio(eb[key]["cpu_us"], ps[key]["cpu_us"])
        ratio_rows.append(
            [
                f"CPU {label}",
                f"{fmt_ratio(r_raw)} {verdict(r_raw, TARGET, at_most=True)}",
                fmt_ratio(r_ps),
            ]
        )
    ratio_rows.append(
        [
            "commands gross",
            fmt_ratio(ratio(eb["gross"]["commands"], raw["gross"]["commands"])),
            fmt_ratio(ratio(eb["gross"]["commands"], ps["gross"]["commands"])),
        ]
    )
    lines.append("")
    lines.append(
        table(["ratio", f"eventbus/raw (<= {TARGET})", "eventbus/celery-pubsub"], ratio_rows)
    )

    # Which commands: calls per event, publish + handle.
    names = sorted(
        {
            k.removeprefix("cmd.")
            for s in summary.values()
            for k in s["gross"]
            if k.startswith("cmd.")
        },
        key=lambda name: -max(summary[c]["gross"].get(f"cmd.{name}", 0.0) for c in CONTENDERS),
    )
    cmd_rows = []
    for name in names:
        cells = []
        for c in CONTENDERS:
            total = summary[c]["gross"].get(f"cmd.{name}", 0.0)
            pub = summary[c]["publish"].get(f"cmd.{name}", 0.0)
            cells.append(
                "-"
                if abs(total) < 0.005
                else f"{fmt(total, 2)} ({fmt(pub, 2)} + {fmt(total - pub, 2)})"
            )
        if any(cell != "-" for cell in cells):
            usec = [summary[c]["gross"].get(f"usec.{name}", 0.0) for c in CONTENDERS]
            cmd_rows.append([name, *cells, " / ".join(fmt(u, 1) for u in usec)])
    lines.append("")
    lines.append(
        "Redis commands per handled event, gross: total (publish + handle); last column: "
        "commandstats usec per event (raw / eventbus / celery-pubsub; a script's usec include "
        "the commands it calls, which are counted too)"
    )
    lines.append(table(["command", *CONTENDERS, "usec/event"], cmd_rows))

    idle_rows = []
    alone = result["server_alone"]
    idle_rows.append(
        [
            "server alone",
            "0 connections",
            fmt(alone["commands"] / alone["time"]),
            fmt(alone["cpu_us"] / alone["time"], 0),
            "-",
        ]
    )
    for c in CONTENDERS:
        rate = summary[c]["idle_rate"]
        top = sorted(
            (
                (k.removeprefix("cmd."), v)
                for k, v in rate.items()
                if k.startswith("cmd.") and v > 0.05
            ),
            key=lambda kv: -kv[1],
        )
        idle_rows.append(
            [
                c,
                "worker + publisher",
                fmt(rate["commands"]),
                fmt(rate["cpu_us"], 0),
                ", ".join(f"{name} {v:.1f}" for name, v in top[:4]) or "-",
            ]
        )
    lines.append("")
    lines.append("Idle (nothing to do), per second, median of the reps:")
    lines.append(table(["who", "clients", "commands/s", "CPU us/s", "top commands/s"], idle_rows))
    return lines


def rabbit_report(result: dict[str, Any], summary: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    rows = []
    for c in summary:
        s = summary[c]
        g, nt, p = s["gross"], s["net"], s["publish"]
        rows.append(
            [
                c,
                f"{fmt(g['cpu_us'], 0)} ({fmt(s['gross_min']['cpu_us'], 0)})",
                f"{fmt(nt['cpu_us'], 0)} ({fmt(s['net_min']['cpu_us'], 0)})",
                f"{fmt(p['cpu_us'], 0)}",
                f"{fmt(g['bytes_in'], 0)} / {fmt(g['bytes_out'], 0)}",
                f"{fmt(g['socket_reads'])} / {fmt(g['socket_writes'])}",
                f"{fmt(g['msg_received'])} ({fmt(g['msg_received_confirm'])})",
                f"{fmt(g['msg_routed'])} / {fmt(g['msg_dropped_unroutable'])}",
                f"{fmt(g['msg_delivered'])} / {fmt(g['msg_acked'])}",
                fmt(g["disk_written"], 0),
            ]
        )
    lines.append(
        "RabbitMQ, per handled event (1 event = 5 handler messages), median of the reps (min):"
    )
    lines.append(
        table(
            [
                "contender",
                "node CPU us gross",
                "net of idle",
                "of which publish",
                "bytes in / out",
                "socket reads / writes",
                "msgs received (confirmed)",
                "routed / dropped",
                "delivered / acked",
                "disk bytes written",
            ],
            rows,
        )
    )
    eb, raw, ps = summary["eventbus"], summary["raw"], summary["celery-pubsub"]
    ratio_rows = []
    for label, key, metric in (
        ("CPU gross", "gross", "cpu_us"),
        ("CPU net of idle", "net", "cpu_us"),
        ("bytes in", "gross", "bytes_in"),
        ("socket reads", "gross", "socket_reads"),
        ("messages received", "gross", "msg_received"),
        ("disk bytes written", "gross", "disk_written"),
    ):
        row = [
            label,
            fmt_ratio(ratio(eb[key][metric], raw[key][metric])),
            fmt_ratio(ratio(eb[key][metric], ps[key][metric])),
        ]
        if NO_CONFIRMS in summary:
            row.append(fmt_ratio(ratio(summary[NO_CONFIRMS][key][metric], raw[key][metric])))
        ratio_rows.append(row)
    headers = ["ratio", "eventbus/raw", "eventbus/celery-pubsub"]
    if NO_CONFIRMS in summary:
        headers.append(f"{NO_CONFIRMS}/raw")
    lines.append("")
    lines.append(table(headers, ratio_rows))
    alone = result["server_alone"]
    idle_rows = [["server alone", fmt(alone["cpu_us"] / alone["time"], 0), "-", "-"]]
    for c in summary:
        rate = summary[c]["idle_rate"]
        idle_rows.append(
            [
                c,
                fmt(rate["cpu_us"], 0),
                fmt(rate["bytes_in"] + rate["bytes_out"], 0),
                fmt(rate["socket_reads"]),
            ]
        )
    lines.append("")
    lines.append("Idle (nothing to do), per second, median of the reps:")
    lines.append(table(["who", "CPU us/s", "bytes/s", "socket reads/s"], idle_rows))
    return lines


def json_rows(result: dict[str, Any], summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    broker, setting = result["broker"], result["setting"]
    rows: list[dict[str, Any]] = []
    for c in summary:
        s = summary[c]
        rows.append(
            {
                "bench": "cost",
                "broker": broker,
                "setting": setting,
                "contender": c,
                "unit": "broker CPU us per handled event",
                "best": s["gross_min"]["cpu_us"],
                "median": s["gross"]["cpu_us"],
                "gross": s["gross"],
                "net": s["net"],
                "publish": s["publish"],
                "idle_rate": s["idle_rate"],
            }
        )
    value = ratio(summary["eventbus"]["gross"]["cpu_us"], summary["raw"]["gross"]["cpu_us"])
    rows.append(
        {
            "bench": "cost",
            "broker": broker,
            "setting": setting,
            "ratio": "eventbus/raw CPU",
            "value": value,
            "target": f"<= {TARGET}" if broker == "redis" else "reported",
            "ok": verdict(value, TARGET, at_most=True) if broker == "redis" else "-",
        }
    )
    return rows


def main() -> int:
    p = parser(__doc__.splitlines()[0], events=500, reps=3)
    p.add_argument(
        "--pool",
        choices=("prefork", "threads"),
        default="prefork",
        help="the workers' pool: prefork --concurrency=2 (default), threads --concurrency=4",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=5.0,
        help="length of the idle window of every run (default 5)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds the handle phase goes on after the last execution (acks, events; default 1)",
    )
    args = p.parse_args()
    install_signal_handlers()
    print_header(
        f"broker cost: {args.events} events x 5 no-op handlers, {args.reps} interleaved reps, "
        f"pool {args.pool}, private servers"
    )
    results: list[dict[str, Any]] = []
    reports: list[str] = []
    for broker in brokers(args.broker):
        result = bench_broker(
            broker, args.pool, args.events, args.reps, args.idle_seconds, args.settle
        )
        if result is None:
            continue
        summary = summarize(result)
        report = redis_report if broker == "redis" else rabbit_report
        reports += ["", f"== {broker}, {result['setting']}", *report(result, summary)]
        results += json_rows(result, summary)
    print("\n".join(reports), flush=True)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
