"""Drive examples/django in a process of its own: requests and management commands; print JSON.

``python django_client.py STEPS``, STEPS a JSON list of::

    ["POST", "/todos/", {"title": "Buy milk"}]    -> {"status": 201, "body": {...}}
    ["GET", "/todos/1/"]                           -> {"status": 200, "body": {...}}
    ["MANAGE", "eventbus", "outbox", "relay"]      -> {"status": 0, "stdout": ..., "stderr": ...}
    ["TASK", "eventbus.django.relay_outbox"]       -> {"task_id": ...} (sent to its queue)

prints ``{"results": [...], "published": {event type: count}}`` on its last line.
Requests go through Django's test Client as in a server (no test transaction:
each view's ``transaction.atomic()`` really commits, and its on-commit hooks
run; a view that raises is a 500). Commands run as ``manage.py`` runs them.
Django is set up here, not in the pytest process, so no other test sees it;
one process runs many steps, as Django's start-up is most of a step's time.
"""

from __future__ import annotations

import io
import json
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "todoproject.settings")

import django

django.setup()

from django.core.management import ManagementUtility  # noqa: E402
from django.test import Client  # noqa: E402

from eventbus.contrib.django import get_bus  # noqa: E402


def request(client: Client, method: str, path: str, body: object = None) -> dict[str, Any]:
    if method == "POST":
        response = client.post(path, data=json.dumps(body or {}), content_type="application/json")
    else:
        response = client.get(path)
    is_json = response.get("Content-Type", "").startswith("application/json")
    content = response.json() if is_json else response.content.decode(errors="replace")[:200]
    return {"status": response.status_code, "body": content}


def manage(*argv: str) -> dict[str, Any]:
    out, err = io.StringIO(), io.StringIO()
    status = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            ManagementUtility(["manage.py", *argv]).execute()
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}


def send(name: str) -> dict[str, Any]:
    return {"task_id": get_bus().app.tasks[name].delay().id}


def main(steps: list[list[Any]]) -> None:
    client = Client(raise_request_exception=False)  # a failing view is a 500, as in a server
    run = {"MANAGE": manage, "TASK": send}
    results = [
        run[kind](*args) if kind in run else request(client, kind, *args) for kind, *args in steps
    ]
    print(json.dumps({"results": results, "published": dict(get_bus().published)}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
