"""The application factory: ``flask --app examples.flask.app run``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

from flask import Flask

from examples.flask import todos
from examples.flask.extensions import bus


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        ACTIVITY_LOG=os.path.join(tempfile.gettempdir(), "eventbus-flask-example.log"),
        # Celery's settings, lowercase, eventbus_* included (Flask's Celery pattern).
        CELERY={
            "broker_url": "redis://127.0.0.1:6379/0",
            "task_ignore_result": True,
            "eventbus_default_queue": "example.todos",
            "eventbus_dead_letter_queue": "example.todos.dlq",
        },
    )
    # FLASK_CELERY__broker_url=amqp://guest:guest@127.0.0.1:5672// overrides one key.
    app.config.from_prefixed_env()
    if config:
        app.config.from_mapping(config)
    bus.init_app(app)  # todos' handler, subscribed at import, joins this app's bus
    app.register_blueprint(todos.blueprint)
    return app
