"""The console on a large dead-letter queue: page times, server side, and the console's memory.

    python bench/bench_console.py [--records 100000] [--broker redis|rabbitmq]

1. fill:    N records (bench.dlq_app's: three failure groups, a realistic
            envelope and traceback) written to a DLQ of the run's own as
            ``eventbus.dead_letter`` task messages, batched (as bench_dlq.py).
2. measure: in a fresh subprocess that imports only the console and the app
            (so its RSS is what ``eventbus console`` costs):
            - baseline: one read of the whole queue, ``store.records()``
              counted (each record decoded in full): what ``eventbus dlq
              stats`` costs;
            - rows: one read of the whole queue into rows,
              ``store.summaries()`` (lean where a record's plain shape
              allows: eventbus/celery/deadletter/summaries.py), the floor of
              the console's snapshot;
            - the groups page, cold (the first after start: it waits for the
              read of the queue into the console's snapshot up to 1.5 s,
              then shows what was read so far, marked partial: the figure
              says which, and how many records it showed), the time of that
              first read (it goes on in the background), and the groups page
              warm (from the whole snapshot);
            - the records page: the first page, a page at the end (cursor at
              record N-50), a text-filtered page (matches 1 in 3), warm;
            all through Flask's test client (routing, auth, templates: the
            server side of a request, no network), median of 5;
            - peak RSS of the subprocess (psutil) after the snapshot.
3. replay (``--replay N``): a group of N records (one of the three failure
            groups of 3N records) replayed by ``eventbus dlq replay --group``
            (a subprocess: its wall time, interpreter start included, and that
            start alone, ``eventbus --help``), then, on a refill, by the
            console (POST /groups/replay, its background job's own time):
            records/s and the ratio console/CLI. No worker: the replayed
            messages pile up in the handler queue, emptied between the runs.
4. cleanup: the DLQ and the handler queue (Redis db 13 by default, as bench_dlq.py).

Targets (issue 15): records page < 300 ms, groups page < 2 s, memory < 150 MB,
a group replay from the console >= 0.8x the CLI's rate.
The groups page must read the whole queue once per snapshot (``max_age``,
5 s by default): the cold figure is that read (the first groups page after
the console starts waits for it), shown beside the baseline it replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

URLS = {"redis": "redis://127.0.0.1:6379/13", "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//"}
FILL_CHUNK = 1000


def fill(url: str, dlq: str, handler_queue: str, n: int, broker: str) -> float:
    from bench import dlq_app

    built = dlq_app.build(url, dlq, handler_queue)
    store = built.bus.dead_letter_store
    base = dlq_app.base_time()
    start = time.perf_counter()
    with built.app.producer_or_acquire() as producer:
        store.queue.bind(producer.channel).declare()  # type: ignore[attr-defined]
        for first in range(0, n, FILL_CHUNK):
            batch = (
                producer.batch(max_size=FILL_CHUNK)
                if broker == "redis"
                else contextlib.nullcontext()
            )
            with batch:
                for i in range(first, min(first + FILL_CHUNK, n)):
                    record = dlq_app.make_record(i, handler_queue, base)
                    headers, properties, body, _ = store.task_message(record)  # type: ignore[attr-defined]
                    headers["eventbus-dead-letter"] = record.id
                    producer.publish(
                        body,
                        exchange="",
                        routing_key=dlq,
                        serializer="json",
                        delivery_mode=2,
                        headers=headers,
                        **properties,
                    )
    seconds = time.perf_counter() - start
    built.app.close()
    return seconds


def measure(url: str, dlq: str, handler_queue: str) -> dict[str, float]:
    """Runs in the subprocess: the figures, as a dict."""
    import psutil

    from bench import dlq_app
    from eventbus.console import Credentials, create_app
    from eventbus.console.snapshot import cursor_of

    built = dlq_app.build(url, dlq, handler_queue)
    store = built.bus.dead_letter_store
    process = psutil.Process()
    rss_start = process.memory_info().rss

    start = time.perf_counter()
    count = sum(1 for _ in store.records())
    baseline = time.perf_counter() - start
    start = time.perf_counter()
    rows = sum(1 for _ in store.summaries())
    rows_read = time.perf_counter() - start
    assert rows == count, (rows, count)

    app = create_app(
        built.bus, credentials=Credentials(user="bench", password="bench"), max_age=3600
    )
    client = app.test_client()
    auth = {"Authorization": "Basic YmVuY2g6YmVuY2g="}  # bench:bench

    def timed(path: str, runs: int = 5) -> tuple[float, str]:
        times, text = [], ""
        for _ in range(runs):
            t0 = time.perf_counter()
            response = client.get(path, headers=auth)
            times.append(time.perf_counter() - t0)
            assert response.status_code == 200, (path, response.status_code)
            text = response.text
        return statistics.median(times), text

    cache = app.extensions["eventbus_console"].cache
    cold, text = timed("/groups", runs=1)
    shown = re.search(r"only the (\d+) record\(s\) read so far", " ".join(text.split()))
    partial = shown is not None
    while cache.get().partial:  # (each waits for the read up to its first_wait)
        pass
    snapshot = cache.get()
    assert len(snapshot) == count, (len(snapshot), count)
    warm, _ = timed("/groups")
    first, _ = timed("/records")
    cursor = cursor_of(len(snapshot) - 51, snapshot.rows[-51])
    last, text = timed(f"/records?cursor={cursor}")
    assert text.count('href="/records/') == 50, "the last page shows the last 50"
    filtered, _ = timed("/records?text=did+not+answer")
    rss = process.memory_info().rss
    # A background refresh holds the old snapshot while it reads the new one
    cache.refresh()
    while cache.refreshing:
        time.sleep(0.05)
    rss_refreshed = process.memory_info().rss
    built.app.close()
    return {
        "records": count,
        "baseline_read_s": baseline,
        "rows_read_s": rows_read,
        "groups_cold_s": cold,
        "groups_cold_partial": partial,
        "groups_cold_rows": int(shown.group(1)) if shown else count,
        "first_read_s": snapshot.took,
        "groups_warm_s": warm,
        "records_first_s": first,
        "records_last_s": last,
        "records_text_s": filtered,
        "rss_mb": rss / 2**20,
        "rss_refreshed_mb": rss_refreshed / 2**20,
        "rss_start_mb": rss_start / 2**20,
    }


def replay_rates(url: str, dlq: str, handler_queue: str, n: int, broker: str) -> None:
    """The CLI's and the console's replay of one N-record group: records/s, and the ratio."""
    from kombu import Connection

    from bench import dlq_app
    from eventbus.console import Credentials, create_app

    group = (dlq_app.HANDLER, "ConnectionError", "retries_exhausted")

    def empty_handler_queue() -> None:
        with Connection(url) as conn, contextlib.suppress(Exception):
            conn.default_channel.queue_purge(handler_queue)

    env = {
        **os.environ,
        "BENCH_BROKER_URL": url,
        "BENCH_DLQ": dlq,
        "BENCH_DLQ_HANDLER_QUEUE": handler_queue,
    }
    cli = [sys.executable, "-m", "eventbus.cli", "-A", "bench.dlq_app"]
    repo = Path(__file__).resolve().parent.parent
    t0 = time.perf_counter()
    subprocess.run([*cli, "--help"], env=env, cwd=repo, check=True, capture_output=True)
    startup = time.perf_counter() - t0

    fill(url, dlq, handler_queue, 3 * n, broker)
    t0 = time.perf_counter()
    subprocess.run(
        [*cli, "dlq", "replay", "--group", f"{group[0]}:{group[1]}"],
        env=env,
        cwd=repo,
        check=True,
        capture_output=True,
    )
    cli_seconds = time.perf_counter() - t0
    empty_handler_queue()

    built = dlq_app.build(url, dlq, handler_queue)
    built.bus.dead_letter_store.purge()
    fill(url, dlq, handler_queue, 3 * n, broker)
    app = create_app(built.bus, credentials=Credentials(user="bench", password="bench"))
    app.config["WTF_CSRF_ENABLED"] = False  # (the bench posts no form it read)
    client = app.test_client()
    auth = {"Authorization": "Basic YmVuY2g6YmVuY2g="}
    response = client.post(
        "/groups/replay",
        data={"handler": group[0], "exception_type": group[1], "reason": group[2]},
        headers=auth,
    )
    job_id = response.headers["Location"].rsplit("/", 1)[-1]
    job = app.extensions["eventbus_console"].jobs.get(job_id)
    while not job.done:
        time.sleep(0.05)
    assert job.replayed == n and not job.error, (job.replayed, job.error)
    empty_handler_queue()
    built.app.close()
    cli_rate, console_rate = n / cli_seconds, n / job.seconds
    print(f"replay of a {n}-record group on {broker}:")
    print(
        f"  eventbus dlq replay --group   {cli_seconds:6.2f} s  {cli_rate:8.0f} records/s"
        f"   (interpreter and app start alone: {startup:.2f} s;"
        f" without it: {n / max(cli_seconds - startup, 1e-9):.0f} records/s)"
    )
    print(
        f"  console (group replay job)    {job.seconds:6.2f} s  {console_rate:8.0f} records/s"
        f"   x{console_rate / cli_rate:.2f} the CLI's rate"
        f" (x{job.seconds and (cli_seconds - startup) / job.seconds:.2f} without its start)"
        "   target >= 0.8x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--broker", choices=sorted(URLS), default="redis")
    parser.add_argument("--replay", type=int, default=0, metavar="N", help="also: replay rates")
    parser.add_argument("--measure", nargs=3, metavar=("URL", "DLQ", "HANDLER_QUEUE"))
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    url = os.environ.get("BENCH_BROKER_URL") or URLS[args.broker]
    run = uuid.uuid4().hex[:8]
    dlq, handler_queue = f"bench.{run}.console.dlq", f"bench.{run}.console.handler"
    try:
        seconds = fill(url, dlq, handler_queue, args.records, args.broker)
        print(f"fill: {args.records} records in {seconds:.1f} s", flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--measure", url, dlq, handler_queue],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        f = json.loads(out.strip().splitlines()[-1])
        if args.replay:
            from bench import dlq_app

            built = dlq_app.build(url, dlq, handler_queue)
            built.bus.dead_letter_store.purge()
            built.app.close()
            replay_rates(url, dlq, handler_queue, args.replay, args.broker)
    finally:
        from kombu import Connection

        for name in (dlq, handler_queue):
            with Connection(url) as conn, contextlib.suppress(Exception):
                conn.default_channel.queue_delete(name)
        if url.startswith("redis"):
            # kombu's Redis queue_delete leaves a list it did not bind in this
            # process: each run left its 100,000 records (~370 MB) in Redis.
            import redis

            client = redis.Redis.from_url(url)
            for name in (dlq, handler_queue):
                client.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
            client.close()
    print(f"console on {args.broker}, {f['records']:.0f} records (server side, median of 5):")
    base = f["baseline_read_s"]
    rows = [
        ("baseline: one read of the queue (store.records())", f"{base:8.2f} s", ""),
        (
            "one read of the queue into rows (store.summaries())",
            f"{f['rows_read_s']:8.2f} s",
            f"x{f['rows_read_s'] / base:.2f} the baseline",
        ),
        (
            "groups page, cold (the first after start)",
            f"{f['groups_cold_s']:8.2f} s",
            "< 2 s; "
            + (
                f"PARTIAL: {f['groups_cold_rows']:.0f} of {f['records']:.0f} records read"
                if f["groups_cold_partial"]
                else "complete"
            ),
        ),
        (
            "the first read into the snapshot (background)",
            f"{f['first_read_s']:8.2f} s",
            f"x{f['first_read_s'] / base:.2f} the baseline",
        ),
        ("groups page, warm (from the snapshot)", f"{f['groups_warm_s'] * 1000:8.1f} ms", "< 2 s"),
        ("records page, first", f"{f['records_first_s'] * 1000:8.1f} ms", "< 300 ms"),
        ("records page, last (cursor at N-50)", f"{f['records_last_s'] * 1000:8.1f} ms", ""),
        ("records page, text filter (1 in 3 match)", f"{f['records_text_s'] * 1000:8.1f} ms", ""),
        (
            "RSS of the console process after the snapshot",
            f"{f['rss_mb']:8.1f} MB",
            f"< 150 MB (at start {f['rss_start_mb']:.1f} MB)",
        ),
        (
            "RSS after a background refresh (two snapshots)",
            f"{f['rss_refreshed_mb']:8.1f} MB",
            "< 150 MB",
        ),
    ]
    for label, value, note in rows:
        print(f"  {label:<50} {value:>12}   {note}")


if __name__ == "__main__":
    main()
