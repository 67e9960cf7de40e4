"""What became of published events, counted by event id from the handlers' effects.

Shared by the fault tests: :func:`outcome` tells, per handler, the events it
never ran (``lost``) and the runs beyond the first (``duplicate_effects``);
:func:`wait_until_settled` waits until the broker holds nothing more to run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from eventbus import Envelope, create_event
from tests.faults.conftest import FaultEnv
from tests.faults.fault_app import Probe
from tests.support import wait_for

#: Seconds the broker must hold none of the queue's messages before events
#: still not handled count as lost (nothing is left to deliver them).
DRAINED_FOR = 2.0


@dataclass(frozen=True)
class Outcome:
    """What one handler did with the published events."""

    handler: str
    published: int
    handled: int
    lost: list[str]  #: event ids the handler never ran
    never_received: list[str]  #: of those, the ones no worker's consumer ever received
    duplicate_effects: int

    def figures(self) -> str:
        return (
            f"published={self.published} handled={self.handled} lost={len(self.lost)} "
            f"duplicate_effects={self.duplicate_effects}"
        )


def probes(count: int) -> list[Envelope[Any]]:
    return [create_event(Probe, {"n": n}) for n in range(count)]


def outcome(env: FaultEnv, handler: str, event_ids: list[str]) -> Outcome:
    runs = env.effects.runs(handler)
    unknown = set(runs) - set(event_ids)
    assert not unknown, f"{handler} ran events nobody published: {sorted(unknown)[:5]}"
    lost = [event_id for event_id in event_ids if event_id not in runs]
    received = env.effects.received(handler) if lost else set()
    return Outcome(
        handler=handler,
        published=len(event_ids),
        handled=len(event_ids) - len(lost),
        lost=lost,
        never_received=[event_id for event_id in lost if event_id not in received],
        duplicate_effects=sum(count - 1 for count in runs.values()),
    )


def wait_until_settled(
    env: FaultEnv, handlers: list[str], event_ids: list[str], timeout: float
) -> None:
    """Wait until the broker holds none of the queue's messages and every handler is done.

    Returns early, with events still not handled, once the broker has held
    nothing for :data:`DRAINED_FOR` seconds: nothing can run them any more.
    """
    wanted = len(set(event_ids))
    drained_since: list[float] = []

    def settled() -> bool:
        if env.remaining():
            drained_since.clear()
            return False
        if not drained_since:
            drained_since.append(time.monotonic())
        done = all(env.effects.handled(handler) >= wanted for handler in handlers)
        return done or time.monotonic() - drained_since[0] >= DRAINED_FOR

    def progress() -> str:
        counts = {handler: env.effects.handled(handler) for handler in handlers}
        return (
            f"every handler to run {wanted} events, or the queue to drain; ran: {counts}, "
            f"messages left on the broker: {env.remaining()}"
        )

    wait_for(settled, timeout=timeout, interval=0.2, message=progress)
