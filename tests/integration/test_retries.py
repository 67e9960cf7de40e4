"""Retries: Celery's autoretry with exponential backoff, as configured per handler."""

from __future__ import annotations

from .conftest import Env
from .helpers import Call, OrderPlaced, Recorder, assert_stays, wait_for


class GatewayDown(ConnectionError):
    """A transient failure: retrying may help."""


def test_transient_failure_is_retried_with_growing_backoff(env: Env) -> None:
    # Given a handler that fails on its first two attempts of each event,
    # with 2 retries and a backoff of 1 s doubling without jitter
    recorder = Recorder()
    name = env.name("flaky")

    def fail_twice(call: Call) -> BaseException | None:
        attempt = sum(1 for c in recorder.calls(name) if c.event_id == call.event_id)
        return GatewayDown(f"timeout on attempt {attempt}") if attempt <= 2 else None

    env.bus.subscribe(
        OrderPlaced,
        handler=recorder.handler(name, fail=fail_twice),
        name=name,
        max_retries=2,
        retry_backoff=1,
        retry_jitter=False,
    )
    env.start_worker()

    # When one event is published
    envelope = env.bus.publish(OrderPlaced(order_id="o-1", quantity=1))

    # Then the handler is attempted three times, the third one succeeding
    wait_for(
        lambda: recorder.count(name) >= 3,
        timeout=15,
        message=lambda: f"{recorder.count(name)}/3 attempts",
    )
    calls = recorder.calls(name)
    assert [c.event_id for c in calls] == [str(envelope.event_id)] * 3
    # And the waits between attempts grow: ~1 s, then ~2 s
    first_gap = calls[1].at - calls[0].at
    second_gap = calls[2].at - calls[1].at
    assert first_gap >= 0.9, f"first retry after {first_gap:.2f}s, expected ~1s"
    assert second_gap > first_gap, f"gaps {first_gap:.2f}s then {second_gap:.2f}s do not grow"
    assert second_gap >= 1.8, f"second retry after {second_gap:.2f}s, expected ~2s"
    # And no further attempt happens and nothing is dead-lettered
    assert_stays(
        lambda: recorder.count(name) == 3,
        duration=0.5,
        message=lambda: f"{recorder.count(name)} attempts",
    )
    assert len(env.bus.dead_letters) == 0
    assert env.queue_length() == 0
