"""Publish a message whose headers nest deeper than py-amqp decodes, from a process of its own.

py-amqp encodes (and decodes) header tables recursively: the publisher raises
its recursion limit and runs in a thread with a large stack, which the test
process must not do.
"""

from __future__ import annotations

import subprocess
import sys

_PUBLISHER = """
import sys, threading
from kombu import Connection

def publish():
    deep = 0
    for _ in range(int(sys.argv[4])):
        deep = [deep]
    url, queue, body = sys.argv[1], sys.argv[2], sys.argv[3].encode()
    with Connection(url) as conn:
        conn.Producer().publish(
            body, exchange=queue, routing_key=queue, retry=True,
            content_type="application/json", content_encoding="utf-8",
            headers={"task": "x", "id": "deep", "deep": deep},
        )

sys.setrecursionlimit(100_000)
threading.stack_size(256 * 1024 * 1024)
thread = threading.Thread(target=publish)
thread.start()
thread.join()
"""


def publish_deep_headers(url: str, queue: str, body: str, depth: int = 5000) -> None:
    """Publish ``body`` to ``queue`` (its exchange, by its name) with headers ``depth`` deep."""
    subprocess.run(
        [sys.executable, "-c", _PUBLISHER, url, queue, body, str(depth)], check=True, timeout=60
    )
