"""The chaos soak's short version (issue 13, item 6): both brokers at once, two minutes.

:mod:`tests.faults.soak` runs the real stack on Redis (a private server,
AOF fsynced on every write) and on the run's three-node RabbitMQ cluster
(quorum queues) at the same time, a fault every 10-20 s on each, drawn from
a seed (``EVENTBUS_SOAK_SEED``, default a random one, printed). Every event
whose ``publish`` returned must be handled by every handler or dead-lettered
with a reason (``lost=0``); duplicates are counted. A failure prints its seed
and the fault schedule: ``python -m tests.faults.soak --seed S`` replays it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest

from tests.faults.cluster import PrivateRabbitMQCluster
from tests.faults.soak import run_soaks
from tests.support import require_broker

pytestmark = [pytest.mark.soak, pytest.mark.faults, pytest.mark.redis, pytest.mark.rabbitmq]

#: Seconds of the soak (publishing and faults) and its gap between faults, seconds.
SECONDS = float(os.environ.get("EVENTBUS_SOAK_SECONDS", 120))
GAP = (10.0, 20.0)


@pytest.mark.timeout(420)  # two minutes of faults, a drain, a node booting again
def test_chaos_soak_loses_no_acknowledged_event(
    rabbitmq_cluster: PrivateRabbitMQCluster, figure: Callable[[str], str]
) -> None:
    require_broker("redis")  # the shared Redis keeps the ledger, the state and the effects
    seed = int(os.environ.get("EVENTBUS_SOAK_SEED") or random.randrange(1_000_000))
    results = run_soaks(
        ["redis", "rabbitmq"],
        seconds=SECONDS,
        seed=seed,
        gap=GAP,
        cluster=rabbitmq_cluster,
        drain_timeout=120,
    )
    for result in results:
        figure(result.line())
    lost = {result.broker: result.lost[:5] for result in results if result.lost}
    assert not lost, f"publish returned, neither handled nor dead-lettered (seed={seed}): {lost}"
    assert all(result.faults and result.published for result in results), results
    crashes = {r.broker: r.extra["publisher_crashes"] for r in results}
    assert not any(crashes.values()), f"publishers died on their own (seed={seed}): {crashes}"
    # The atomic handler's effect commits with its done mark: it repeats nothing.
    assert all(result.duplicates["atomic"] == 0 for result in results), results
