"""Start a Celery worker without the ``celery`` command line (for bench_rss).

The ``celery`` command imports every installed ``celery.commands`` entry point
(in this venv eventbus's own ``celery eventbus`` command, and flower's), so a
"raw" worker started with ``celery -A ... worker`` has eventbus and pydantic
loaded anyway. This launcher builds the worker as ``celery worker`` does,
``app.Worker(...).start()``, without loading those plugins, for a clean
baseline. It takes the same flags as ``celery worker`` that the benchmarks use::

    python -m bench.direct_worker APP --pool=prefork --concurrency=2 -Q q -n name@host \
        -l WARNING --without-gossip --without-mingle --without-heartbeat
"""

from __future__ import annotations

import argparse
import sys

from celery.app.utils import find_app
from celery.concurrency import get_implementation


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
