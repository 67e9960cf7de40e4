"""examples/flask: a POST publishes, a real worker runs the handler in the app context.

Runs on Redis and on RabbitMQ, with a Celery worker in threads of this
process, queues of the test's own (deleted afterwards), and the app's
``flask eventbus dlq`` commands through Flask's CLI test runner.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import _state as celery_state
from flask import Flask, current_app

from eventbus import Envelope, PermanentHandlerError
from eventbus.contrib.flask import FlaskEventBusState
from examples.flask.app import create_app
from examples.flask.todos import TodoCreated
from tests.support import delete_queues, require_broker, running_worker, wait_for


@pytest.fixture(
    params=[
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def broker_url(request: pytest.FixtureRequest) -> str:
    return require_broker(request.param)


@pytest.fixture
def app(broker_url: str, tmp_path: Path) -> Iterator[Flask]:
    """The example app on the test's broker, with queues and an activity log of its own."""
    uid = uuid.uuid4().hex[:10]
    queue, dead_letter_queue = f"ex.flask.{uid}", f"ex.flask.{uid}.dlq"
    previous_default = celery_state.default_app
    previous_current = getattr(celery_state._tls, "current_app", None)
    app = create_app(
        {
            "TESTING": True,
            "ACTIVITY_LOG": str(tmp_path / "activity.log"),
            "SMTP_HOST": f"smtp-{uid}.invalid",
            "CELERY": {
                "broker_url": broker_url,
                "eventbus_default_queue": queue,
                "eventbus_dead_letter_queue": dead_letter_queue,
                "task_ignore_result": True,
                "broker_connection_retry_on_startup": True,
                "broker_connection_timeout": 3,
                "task_publish_retry_policy": {"max_retries": 2, "interval_step": 0.2},
                "worker_hijack_root_logger": False,
                "worker_send_task_events": False,
                "worker_enable_remote_control": False,  # no pidbox queue left behind
            },
        }
    )
    celery = state(app).celery
    try:
        yield app
    finally:
        celery.close()
        delete_queues(celery, queue, dead_letter_queue)
        celery_state.set_default_app(previous_default)
        celery_state._set_current_app(previous_current)


def state(app: Flask) -> FlaskEventBusState:
    result: FlaskEventBusState = app.extensions["eventbus"]
    return result


def activity(app: Flask) -> list[dict[str, Any]]:
    log = Path(app.config["ACTIVITY_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_a_posted_todo_is_handled_by_a_worker_inside_the_flask_app_context(app: Flask) -> None:
    # Given the example app, and a second handler of this app's that always fails
    bus = state(app).bus
    failing = f"tests.send_mail_{uuid.uuid4().hex[:10]}"  # short: list shows 34 chars

    def send_mail(envelope: Envelope[TodoCreated]) -> None:
        raise PermanentHandlerError(f"{current_app.config['SMTP_HOST']} refused the mail")

    bus.subscribe(TodoCreated, handler=send_mail, name=failing, max_retries=0)

    # When a todo is POSTed
    response = app.test_client().post("/todos", json={"title": "Buy milk"})
    assert response.status_code == 201
    created = response.get_json()

    # and a real worker runs the handlers
    with running_worker(state(app).celery, bus.queues):
        lines = wait_for(lambda: activity(app), message="the activity log line")
        [record] = wait_for(lambda: list(bus.dead_letters), message="send_mail's dead letter")

    # Then the example's handler wrote where this app's config said, as this app
    assert lines == [
        {
            "app": app.name,
            "event_id": created["event_id"],
            "todo_id": created["id"],
            "title": "Buy milk",
        }
    ]
    # and the failing one read its config through current_app too
    assert record.handler == failing
    assert record.exception_message == f"{app.config['SMTP_HOST']} refused the mail"

    # and flask eventbus dlq lists the record, purges it, then has none
    cli = app.test_cli_runner()
    listed = cli.invoke(args=["eventbus", "dlq", "list"])
    assert listed.exit_code == 0, listed.output
    assert record.id in listed.output and failing in listed.output
    purged = cli.invoke(args=["eventbus", "dlq", "purge", "--yes"])
    assert purged.exit_code == 0, purged.output
    empty = cli.invoke(args=["eventbus", "dlq", "list"])
    assert empty.exit_code == 0  # an empty DLQ is an answer, not an error
    assert "no dead letters" in empty.output


def test_an_invalid_todo_is_refused_and_nothing_is_published(app: Flask) -> None:
    response = app.test_client().post("/todos", json={"title": None})

    assert response.status_code == 422
    assert response.get_json()["errors"][0]["loc"] == ["title"]
    assert state(app).bus.published[TodoCreated.event_type] == 0


def test_flask_eventbus_events_lists_the_examples_handler(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["eventbus", "events"])

    assert result.exit_code == 0
    assert "example.todo.created (v1, examples.flask.todos.TodoCreated)" in result.output
    assert "examples.flask.todos.record_activity" in result.output
