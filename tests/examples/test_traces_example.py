"""examples/traces/run.py, as the README tells to run it: its trees are the trace it promises.

Runs the example as a subprocess on Redis and on RabbitMQ (its own queues,
deleted at its end).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import require_broker

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "broker",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ],
)
def test_the_traces_example_prints_one_trace_and_a_linked_replay(broker: str) -> None:
    url = require_broker(broker)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("EVENTBUS_", "CELERY_"))}
    result = subprocess.run(
        [sys.executable, "-m", "examples.traces.run"],
        cwd=ROOT,
        env={**environ, "EVENTBUS_BROKER_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Span ids vary, and so may the order of sibling runs: compare each
    # parent's children as a sorted list
    lines = [
        re.sub(r" \[[0-9a-f]{16}\]|->[0-9a-f]{16}", "", line) for line in result.stdout.splitlines()
    ]
    trees = [line for line in lines if line.strip() and not line.startswith(("POST", "trace "))]
    assert trees[:2] == [
        "└── POST /users/<user_id>",
        "    └── publish example.user_registered fan_out=3",
    ]
    runs = [line.lstrip("│├└─ ") for line in trees[2:8]]
    assert sorted(runs) == [
        "dead_letter users.open_account attempt=2 dead_letter.reason=retries_exhausted",
        "handle users.index_user attempt=1 outcome=retry",
        "handle users.index_user attempt=2 outcome=success",
        "handle users.open_account attempt=1 outcome=retry",
        "handle users.open_account attempt=2 outcome=dead_lettered",
        "handle users.send_welcome attempt=1 outcome=success",
    ]
    dead_lettered = runs.index("handle users.open_account attempt=2 outcome=dead_lettered")
    assert runs[dead_lettered + 1].startswith("dead_letter ")  # its child
    assert trees[8:] == [
        "└── replay example.user_registered dead_letter.reason=retries_exhausted"
        " link(replayed_from)",
        "    └── handle users.open_account attempt=1 outcome=success",
    ]
