"""Start a Celery worker without the ``celery`` command line (for bench_rss).

The ``celery`` command imports every installed ``celery.commands`` entry point
(in this venv eventbus's own ``celery eventbus`` command, and flower's), so a
"raw" worker started with ``celery -A ... worker`` has eventbus and pydantic
loaded anyway. This launcher builds the worker as ``celery worker`` does,
``app.Worker(...).start()``, without loading those plugins, for a clean
baseline. It takes the same flags as ``celery worker`` that the benchmarks use::

    python -m bench.direct_worker APP --pool=prefork --concurrency=2 -Q q -n name@host \
        -l WARNING --without-gossip --without-mingle --without-heartbeat

With ``BENCH_MODULES_DIR`` set, every process of the worker (the main one at
``worker_shutdown``, each prefork child at ``worker_process_shutdown``) writes
``<dir>/<pid>.json``: its RSS then and the names in ``sys.modules``, in import
order. bench_rss compares those of the raw and eventbus workers to find the
modules only eventbus's worker loads (``bench.import_memory`` weighs them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from celery import signals
from celery.app.utils import find_app
from celery.concurrency import get_implementation


def rss_now() -> int:
    """This process's resident set size, in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def dump_modules(role: str) -> None:
    directory = os.environ.get("BENCH_MODULES_DIR")
    if not directory:
        return
    record = {"pid": os.getpid(), "role": role, "rss": rss_now(), "modules": list(sys.modules)}
    Path(directory, f"{os.getpid()}.json").write_text(json.dumps(record))


def _on_worker_shutdown(**_: Any) -> None:
    dump_modules("main")


def _on_process_shutdown(**_: Any) -> None:
    dump_modules("child")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("app")
    p.add_argument("--pool", default="prefork")
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("-Q", "--queues", default=None)
    p.add_argument("-n", "--hostname", default=None)
    p.add_argument("-l", "--loglevel", default="WARNING")
    p.add_argument("--without-gossip", action="store_true")
    p.add_argument("--without-mingle", action="store_true")
    p.add_argument("--without-heartbeat", action="store_true")
    args = p.parse_args()

    if os.environ.get("BENCH_MODULES_DIR"):
        signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)
        signals.worker_process_shutdown.connect(_on_process_shutdown, weak=False)
    app = find_app(args.app)
    app.set_current()
    worker = app.Worker(
        hostname=args.hostname,
        pool_cls=get_implementation(args.pool),
        concurrency=args.concurrency,
        queues=args.queues.split(",") if args.queues else None,
        loglevel=args.loglevel,
        without_gossip=args.without_gossip,
        without_mingle=args.without_mingle,
        without_heartbeat=args.without_heartbeat,
    )
    worker.start()
    return int(worker.exitcode or 0)


if __name__ == "__main__":
    sys.exit(main())
