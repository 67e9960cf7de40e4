"""The replay task: what an operator triggers from Flower, run by a real worker."""

from __future__ import annotations

import pytest
from celery import signals

from eventbus import PermanentHandlerError

from .conftest import Env
from .helpers import OrderPlaced, Recorder, wait_for


def dead_letter_two(env: Env, recorder: Recorder, fixed: dict[str, bool]) -> str:
    name = env.name("flaky")

    def fail(call: object) -> Exception | None:
        return None if fixed["on"] else PermanentHandlerError("bug")

    env.bus.subscribe(OrderPlaced, name=name, handler=recorder.handler(name, fail=fail))
    env.start_worker(pool="threads", concurrency=2)
    for n in range(2):
        env.bus.publish(OrderPlaced(order_id=f"r-{n}", quantity=1))
    wait_for(lambda: len(env.bus.dead_letters) == 2, message="two dead letters")
    return name


def test_the_replay_task_replays_by_id_on_a_worker(env: Env) -> None:
    # Given two dead letters and the fix deployed
    recorder, fixed = Recorder(), {"on": False}
    name = dead_letter_two(env, recorder, fixed)
    first = env.bus.dead_letters.list()[0]
    fixed["on"] = True
    # When the operator sends the replay task with one id (as Flower's async-apply does)
    env.app.send_task("eventbus.replay_dead_letters", kwargs={"ids": [first.id]}, queue=env.queue)
    # Then that record's event is handled and only the other record stays
    wait_for(lambda: recorder.count(name) >= 3, message="the replayed run")
    wait_for(lambda: len(env.bus.dead_letters) == 1, message="one record left")
    assert env.bus.dead_letters.list()[0].id != first.id


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({}, "nothing selected"),
        ({"ids": ["no-such-id"]}, "no dead letter with id 'no-such-id'"),
        ({"ids": "abc"}, "non-empty list"),
        ({"ids": ["x"], "all": True}, "not both"),
        ({"idz": ["x"]}, "unexpected keyword argument 'idz'"),
    ],
)
def test_the_replay_task_fails_clearly_and_replays_nothing(
    env: Env, kwargs: dict[str, object], reason: str
) -> None:
    # Given two dead letters (the fix is deployed, so a wrong replay would show)
    fixed = {"on": False}
    dead_letter_two(env, Recorder(), fixed)
    fixed["on"] = True
    failures: list[BaseException] = []

    def on_failure(
        sender: object = None, exception: BaseException | None = None, **_: object
    ) -> None:
        if getattr(sender, "name", None) == "eventbus.replay_dead_letters" and exception:
            failures.append(exception)

    signals.task_failure.connect(on_failure, weak=False)
    try:
        # When the operator sends the task with bad arguments
        env.app.send_task("eventbus.replay_dead_letters", kwargs=kwargs, queue=env.queue)
        # Then the worker reports a task failure that says why, and replays nothing
        wait_for(lambda: failures, message="the replay task's failure")
    finally:
        signals.task_failure.disconnect(on_failure)
    assert reason in str(failures[0])
    assert len(env.bus.dead_letters) == 2
