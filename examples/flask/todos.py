"""The todos feature: its event, a handler subscribed at import time, and the route."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, request
from pydantic import ValidationError

from eventbus import Envelope, Event
from examples.flask.extensions import bus

blueprint = Blueprint("todos", __name__)


class TodoCreated(Event):
    # This repository's handlers/ package already uses "todo.created".
    event_type = "example.todo.created"
    event_version = 1

    title: str


@bus.subscribe(TodoCreated, max_retries=3)
def record_activity(envelope: Envelope[TodoCreated]) -> None:
    """Append the new todo to the activity log named in the app's config.

    Runs in a Celery worker, inside the Flask app context: ``current_app``
    is the app the worker was started from.
    """
    log = Path(current_app.config["ACTIVITY_LOG"])
    log.parent.mkdir(parents=True, exist_ok=True)
    line = {
        "app": current_app.name,
        "event_id": str(envelope.event_id),
        "todo_id": envelope.aggregate_id,
        "title": envelope.data.title,
    }
    with log.open("a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


@blueprint.post("/todos")
def create_todo() -> tuple[dict[str, Any], int]:
    payload = request.get_json(silent=True) or {}
    try:
        event = TodoCreated(title=payload.get("title"))
    except ValidationError as exc:  # nothing is published
        return {"errors": exc.errors(include_url=False, include_context=False)}, 422
    todo_id = uuid.uuid4().hex
    envelope = bus.publish(event, aggregate_id=todo_id, aggregate_type="Todo")
    return {"id": todo_id, "event_id": str(envelope.event_id)}, 201


@blueprint.get("/activity")
def activity() -> dict[str, Any]:
    log = Path(current_app.config["ACTIVITY_LOG"])
    lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return {"activity": [json.loads(line) for line in lines]}
