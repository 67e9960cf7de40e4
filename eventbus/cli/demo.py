"""``eventbus demo``: the demo's example app on an in-process worker, narrated.

With no broker configured it runs on Celery's embedded ``memory://``
transport, so it works on a machine with nothing installed; with
``EVENTBUS_BROKER_URL`` set it runs the same story on Redis or RabbitMQ.
The app is the package's own (:mod:`eventbus.cli.demo_app`): no user's app is
needed or touched, and nothing outside the installed package is imported.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from celery import signals

from eventbus.celery.internals.worker_state import ask_worker_loops_to_stop, forget_stop_request
from eventbus.cli.context import fail_fast
from eventbus.cli.demo_app import (
    DEMO_QUEUE,
    HANDLER_PREFIX,
    DemoApp,
    TodoCreated,
    UserRegistered,
    create_demo_app,
)
from eventbus.domain.envelope import create_event
from eventbus.errors import StateStoreError
from eventbus.redaction import redact_url

Echo = Callable[[str], None]

STEP_TIMEOUT = 30.0  #: seconds a demo step may wait for the worker


@dataclass
class Run:
    handler: str
    event_id: str
    attempt: int
    started: float
    outcome: str = "running"
    detail: str = ""


@dataclass
class Observer:
    """Collects what the in-process worker did, from Celery's task signals."""

    echo: Echo
    handler_names: set[str]
    runs: list[Run] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def connect(self) -> None:
        signals.task_prerun.connect(self._prerun, weak=False, dispatch_uid="eventbus-demo-pre")
        signals.task_success.connect(self._success, weak=False, dispatch_uid="eventbus-demo-ok")
        signals.task_retry.connect(self._retry, weak=False, dispatch_uid="eventbus-demo-retry")
        signals.task_failure.connect(self._failure, weak=False, dispatch_uid="eventbus-demo-fail")

    def disconnect(self) -> None:
        signals.task_prerun.disconnect(dispatch_uid="eventbus-demo-pre")
        signals.task_success.disconnect(dispatch_uid="eventbus-demo-ok")
        signals.task_retry.disconnect(dispatch_uid="eventbus-demo-retry")
        signals.task_failure.disconnect(dispatch_uid="eventbus-demo-fail")

    def _current(self, task: Any) -> Run | None:
        task_name = getattr(task, "name", None)
        with self.lock:
            for run in reversed(self.runs):
                if run.handler == task_name and run.outcome == "running":
                    return run
        return None

    def _prerun(self, sender: Any = None, task: Any = None, args: Any = None, **_: Any) -> None:
        if getattr(task, "name", None) not in self.handler_names:
            return
        envelope = args[0] if args else {}
        event_id = str(envelope.get("event_id", "?")) if isinstance(envelope, dict) else "?"
        with self.lock:
            self.runs.append(Run(task.name, event_id, task.request.retries + 1, time.monotonic()))

    def _success(self, sender: Any = None, **_: Any) -> None:
        run = self._current(sender)
        if run:
            run.outcome = "ok"
            self.echo(f"   ✓ {_short(run.handler):<28} attempt {run.attempt}  ok")

    def _retry(self, sender: Any = None, reason: Any = None, **_: Any) -> None:
        run = self._current(sender)
        if run:
            when = getattr(reason, "when", None)
            exc = getattr(reason, "exc", reason)
            run.outcome, run.detail = "retry", f"{type(exc).__name__}: {exc}"
            self.echo(
                f"   ↻ {_short(run.handler):<28} attempt {run.attempt}  {run.detail}"
                f" → retry in {when}s"
            )

    def _failure(self, sender: Any = None, exception: Any = None, **_: Any) -> None:
        run = self._current(sender)
        if run:
            run.outcome, run.detail = "failed", f"{type(exception).__name__}: {exception}"
            self.echo(
                f"   ✗ {_short(run.handler):<28} attempt {run.attempt}  {run.detail}"
                " → dead-lettered"
            )

    def count(self, outcome: str, handler: str | None = None) -> int:
        with self.lock:
            return sum(
                1
                for r in self.runs
                if r.outcome == outcome and (handler is None or r.handler == handler)
            )

    def settled(self) -> bool:
        """Every handler run reached its end: succeeded or dead-lettered."""
        last: dict[tuple[str, str], str] = {}
        with self.lock:
            for run in self.runs:
                last[(run.handler, run.event_id)] = run.outcome
        return all(outcome in ("ok", "failed") for outcome in last.values())

    def attempts_of(self, handler: str, event_id: str) -> list[Run]:
        with self.lock:
            return [r for r in self.runs if r.handler == handler and r.event_id == event_id]


def _short(name: str) -> str:
    return name.removeprefix(HANDLER_PREFIX)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"demo: gave up waiting {timeout:.0f}s for {what}")
        time.sleep(0.02)  # poll


def redact(url: str) -> str:
    """The broker URL without its password (userinfo or query), for printing."""
    return redact_url(url)


def run_demo(broker_url: str | None = None, echo: Echo = print, queue: str = DEMO_QUEUE) -> int:
    """Run the whole story; returns a process exit code."""
    url = broker_url or os.environ.get("EVENTBUS_BROKER_URL") or "memory://"
    from eventbus.guarantees.state import redis_url_from_config

    demo = create_demo_app(url, queue)
    app, bus = demo.app, fail_fast(demo.bus)  # an operator's command: fail fast
    if redis_url_from_config(app.conf) is None:
        # Publisher and worker are this one process: the idempotent and
        # ordered example handlers can keep their state in memory.
        app.conf.eventbus_redis_url = "memory://"
    _check_state(bus)
    embedded = url.startswith("memory://")
    echo(
        f"eventbus demo — broker {redact(url)}"
        + (
            " (embedded; set EVENTBUS_BROKER_URL=redis://… or amqp://… for a real one)"
            if embedded
            else ""
        )
    )
    _purge_leftovers(app, bus.queues)
    names = {sub.name for sub in bus.subscriptions()}
    observer = Observer(echo, names)
    # The narration says what the worker log would; keep the log itself quiet.
    logging.getLogger("eventbus").setLevel(logging.CRITICAL)
    observer.connect()
    worker = app.WorkController(
        pool_cls="threads",
        concurrency=4,
        queues=bus.queues,
        loglevel="ERROR",
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    # The pool resolves tasks through Celery's *current* app, which is
    # thread-local: make the demo's app the default for every thread.
    app.set_default()
    thread = threading.Thread(target=worker.start, name="eventbus-demo-worker", daemon=True)
    thread.start()
    echo(
        f"worker: in-process, threads x4, consuming {', '.join(bus.queues)}; "
        f"dead letters go to {bus.dead_letter_queue}\n"
    )
    try:
        return _story(demo, bus, observer, echo)
    finally:
        observer.disconnect()
        # Ask the worker's own loop to stop: closing its AMQP channels from
        # this thread would race the loop that reads them.
        if ask_worker_loops_to_stop():
            thread.join(timeout=15)
            forget_stop_request()


def _check_state(bus: Any) -> None:
    """Stop at once if the handlers' state store cannot be used: they could never run."""
    try:
        bus.state.check()
    except StateStoreError as exc:
        raise StateStoreError(
            f"{exc}; the demo's idempotent and ordered handlers need it: set "
            "EVENTBUS_REDIS_URL to a Redis that answers, or unset it (on RabbitMQ or the "
            "embedded broker the demo then keeps that state in its own process)"
        ) from None


def _purge_leftovers(app: Any, queues: list[str]) -> None:
    """Drop what an interrupted earlier demo left: the demo's own queues, recreated on use."""
    with app.connection_for_write() as conn:
        # Connects as the app's transport options say (the CLI: fail fast).
        conn.default_channel  # noqa: B018
        for name in queues:
            with contextlib.suppress(*conn.channel_errors):  # not declared yet: nothing to drop
                conn.channel().queue_delete(name)


def _story(demo: DemoApp, bus: Any, observer: Observer, echo: Echo) -> int:
    notify, index = f"{HANDLER_PREFIX}notify_assignee", f"{HANDLER_PREFIX}index_for_search"
    done_before = observer.count("ok")

    echo("1. Fan-out: one event, one task per subscribed handler")
    user = UserRegistered(user_id="u-1", email="ada@example.com", name="Ada")
    envelope = bus.publish(user, aggregate_id="u-1", aggregate_type="User")
    subs = bus.subscriptions(UserRegistered)
    echo(
        f"   published {UserRegistered.event_type} {envelope.event_id} → {len(subs)} handler tasks"
    )
    wait_until(lambda: observer.count("ok") >= done_before + len(subs), "user handlers")

    echo("\n2. Retries: notify_assignee's gateway times out twice; Celery autoretry backs off")
    todo_id = str(uuid.uuid4())[:8]
    milk = create_event(
        TodoCreated.event_type,
        {"title": "Buy milk", "priority": "high", "assignee": "ada"},
        aggregate_id=todo_id,
        aggregate_type="Todo",
    )
    bus.publish(milk)
    echo(
        f"   published {TodoCreated.event_type} {milk.event_id} → "
        f"{len(bus.subscriptions(TodoCreated))} handler tasks"
    )
    wait_until(
        lambda: any(r.outcome == "ok" for r in observer.attempts_of(notify, str(milk.event_id))),
        "notify_assignee to succeed after its retries",
    )
    wait_until(lambda: observer.count("ok", index) >= 1, "indexing")
    attempts = observer.attempts_of(notify, str(milk.event_id))
    gaps = [b.started - a.started for a, b in itertools.pairwise(attempts)]
    echo(
        f"   notify_assignee: {len(attempts)} attempts, observed backoff delays "
        + ", ".join(f"{g:.1f}s" for g in gaps)
    )

    echo("\n3. Dead letter: index_for_search refuses a marked title (a permanent error)")
    # The queue's depth: cheap to poll (len() reads every record: a browse on RabbitMQ).
    before = bus.dead_letter_store.count()
    poison = bus.publish(
        TodoCreated(title="Fix the #poison pill"),
        aggregate_id=str(uuid.uuid4())[:8],
        aggregate_type="Todo",
    )
    wait_until(lambda: bus.dead_letter_store.count() > before, "the dead letter")
    record = next(
        r for r in bus.dead_letters.list(handler=index) if r.event_id == str(poison.event_id)
    )
    echo(
        f"   dead letter {record.id}: handler={record.handler} reason={record.reason} "
        f"attempts={record.attempts}"
    )
    echo(f"   {record.exception_type}: {record.exception_message}")

    echo("\n4. Replay: deploy the fix, replay the dead letter to the one handler that failed")
    demo.search_index.accept_marked = True
    ok_before = observer.count("ok", index)
    replayed = bus.dead_letters.replay(record.id)
    wait_until(
        lambda: observer.count("ok", index) > ok_before,
        "the replayed event",
    )
    echo(
        f"   replayed {replayed.event_id} (same event id), replays="
        f"{replayed.metadata.get('eventbus_replays')}; record removed: "
        f"{all(r.id != record.id for r in bus.dead_letters)}"
    )

    wait_until(observer.settled, "the remaining handler runs and retries")

    echo("\n5. Bad input never leaves the process")
    try:
        create_event(TodoCreated.event_type, {"title": "", "priority": "urgent"})
    except Exception as exc:  # the demo shows the error a caller gets
        echo(f"   {type(exc).__name__}: {exc}")

    echo(
        f"\nDone: published {sum(bus.published.values())} events, "
        f"{observer.count('ok')} handler runs ok, {observer.count('retry')} retries, "
        f"{observer.count('failed')} dead-lettered, 1 replayed."
    )
    return 0
