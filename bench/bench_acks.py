"""A/B of the coalesced acks of a RabbitMQ worker (``eventbus/celery/internals/acks.py``).

Per repetition, the same drain as ``bench_drain.py`` (N events x 5 no-op
handlers pre-filled, a fresh eventbus worker, clock from the first handler run
to the last) twice, interleaved: "coalesced" (eventbus's default) and "per
message" (``eventbus_coalesced_acks = False``: Celery's one ``basic.ack`` per
message). Besides handler runs per second, it reads the CPU time spent while
the queue drained, per handler run: of the worker's main process (which
receives, acks and dispatches) and of the RabbitMQ node (``beam.smp``, when
this user can read it). CPU per run is steadier than a rate on a shared
machine: it counts the work, not the waiting. Medians of the reps; ratios are
ratios of medians with the paired min-max in brackets.
"""

from __future__ import annotations

import gc
import re
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import apps
from bench.common import (
    BROKER_URLS,
    POOLS,
    ExecutionCounter,
    Janitor,
    Worker,
    broker_available,
    fmt_num,
    fmt_paired,
    install_signal_handlers,
    median,
    new_run_id,
    paired,
    parser,
    print_header,
    rotate,
    table,
    write_json,
)
from bench.contenders import Contenders

SIDES = {"coalesced": "1", "per message": "0"}
#: What the worker logs as its consumer stops (eventbus.celery.internals.acks).
ACKS_LINE = re.compile(r"(\d+) acks went out in (\d+) basic.ack frames")


def beam_process() -> psutil.Process | None:
    """The local RabbitMQ node's process, if this user can read its CPU times."""
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "beam.smp":
            try:
                proc.cpu_times()
            except psutil.Error:
                return None
            return proc
    return None


def cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return float("nan")
    times = proc.cpu_times()
    return float(times.user + times.system)


def drain_once(
    c: Contenders, counter: ExecutionCounter, side: str, pool: str, n: int, tag: str
) -> dict[str, float]:
    key = counter.key(pool, side.replace(" ", "-"), tag)
    events = apps.make_events(n, key)
    apps.PUBLISHERS["eventbus"](c.bench, events, apps.wire_payloads(events))
    target = n * apps.FANOUT
    env = {**c.env, "BENCH_COALESCED_ACKS": SIDES[side]}
    worker = Worker(
        "bench.apps:app",
        queues=[c.queue("eventbus")],
        pool=pool,
        concurrency=POOLS[pool],
        name=f"{c.run}-{pool}-{SIDES[side]}-{tag}",
        env=env,
        loglevel="INFO",  # for the worker's count of acks and frames, logged as it stops
    )
    beam = beam_process()
    gc.collect()
    with worker:
        main = psutil.Process(worker.proc.pid)
        counter.wait(key, 1, 60, poll=0.002)
        cpu0, beam0 = cpu_seconds(main), cpu_seconds(beam)
        end = counter.wait(key, target, 60 + target / 50, poll=0.002, clock=time.time)
        cpu1, beam1 = cpu_seconds(main), cpu_seconds(beam)
        worker.terminate()
        assert worker.proc is not None
        worker.proc.wait(30)
        said = ACKS_LINE.findall(worker.log_tail(200))
    acks, frames = (int(said[-1][0]), int(said[-1][1])) if said else (0, 0)
    first = counter.first(key)
    assert first is not None
    runs = target - 1
    return {
        "rate": target / (end - first),
        "main_ms": (cpu1 - cpu0) * 1000 / runs,
        "beam_ms": (beam1 - beam0) * 1000 / runs,
        "acks_per_frame": acks / frames if frames else 1.0,
    }


def main() -> int:
    p = parser((__doc__ or "").splitlines()[0], events=400, reps=5)
    p.add_argument("--pool", choices=("prefork", "threads", "both"), default="both")
    args = p.parse_args()
    install_signal_handlers()
    print_header("acks A/B: coalesced vs per message, RabbitMQ drain")
    url = BROKER_URLS["rabbitmq"]
    problem = broker_available(url)
    if problem:
        print(f"rabbitmq: skipped ({problem})")
        return 0
    pools = ["prefork", "threads"] if args.pool == "both" else [args.pool]
    run = new_run_id("acks")
    janitor = Janitor("rabbitmq", url)
    counter = ExecutionCounter(run)
    c = Contenders.build("rabbitmq", url, run, with_dramatiq=False)
    c.track(janitor)
    results: list[dict[str, Any]] = []
    rows = []
    try:
        drain_once(c, counter, "coalesced", pools[0], 10, "warm")
        for pool in pools:
            got: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
            for rep in range(args.reps):
                for side in rotate(list(SIDES), rep):
                    got[side].append(drain_once(c, counter, side, pool, args.events, f"r{rep}"))
                print(
                    f"{pool} rep {rep + 1}/{args.reps}: "
                    + ", ".join(
                        f"{side} {fmt_num(got[side][-1]['rate'])}/s "
                        f"main {got[side][-1]['main_ms']:.3f} ms "
                        f"beam {got[side][-1]['beam_ms']:.3f} ms "
                        f"{got[side][-1]['acks_per_frame']:.2f} acks/frame"
                        for side in SIDES
                    ),
                    flush=True,
                )
            a, b = got["coalesced"], got["per message"]
            row: list[object] = [f"{pool} c={POOLS[pool]}"]
            for measure in ("rate", "main_ms", "beam_ms"):
                xs, ys = [r[measure] for r in a], [r[measure] for r in b]
                row += [
                    f"{median(xs):.3f}" if measure != "rate" else fmt_num(median(xs)),
                    f"{median(ys):.3f}" if measure != "rate" else fmt_num(median(ys)),
                    fmt_paired(paired(xs, ys)),
                ]
                results.append(
                    {
                        "bench": "acks",
                        "setting": f"{pool} c={POOLS[pool]}",
                        "measure": measure,
                        "coalesced": xs,
                        "per_message": ys,
                    }
                )
            rows.append(row)
    finally:
        c.close()
        counter.cleanup()
        janitor.cleanup()
    print()
    print(
        f"drain of {args.events} events x {apps.FANOUT} handlers, median of {args.reps} "
        "interleaved reps; A/B = ratio of medians [paired min-max]; CPU per handler run"
    )
    print(
        table(
            [
                "worker",
                "runs/s coalesced",
                "runs/s per message",
                "A/B",
                "main ms coalesced",
                "main ms per message",
                "A/B",
                "beam ms coalesced",
                "beam ms per message",
                "A/B",
            ],
            rows,
        )
    )
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
