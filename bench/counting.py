"""The no-op body of every benchmark handler, task and actor: count one execution.

Imports nothing but redis-py, so the apps that must not load eventbus (raw
Celery with Celery's defaults, dramatiq) count exactly as eventbus's handlers do.
"""

from __future__ import annotations

import os
import threading
import time

import redis

DEFAULT_COUNTER_URL = "redis://127.0.0.1:6379/15"
#: Suffix of the key that holds the wall-clock time of a run's first execution.
FIRST = ":first"

_counter: redis.Redis | None = None
_counter_lock = threading.Lock()


def count(key: str) -> None:
    """INCR ``key``; the first execution also notes when it ran (``key + FIRST``).

    The drain benchmark's clock starts at a run's first handler execution, in
    another process than the one that stops it: wall-clock time, which every
    process on the machine shares. One SET per run, the same for every contender.
    """
    global _counter
    if _counter is None:
        with _counter_lock:
            if _counter is None:
                _counter = redis.Redis.from_url(
                    os.environ.get("BENCH_COUNTER_URL", DEFAULT_COUNTER_URL)
                )
    if _counter.incr(key) == 1:
        _counter.set(key + FIRST, repr(time.time()))
