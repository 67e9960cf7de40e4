"""``POST /todos/``: create a todo and publish ``TodoCreated``, after the commit or via the outbox.

Both views write the todo and schedule its event in one ``transaction.atomic()``:

* ``/todos/``: ``publish_on_commit``; the event goes to the broker when the
  transaction commits (if the broker is down at that moment, it is lost).
* ``/todos/outbox/``: ``publish_via_outbox``; the event is a row committed with
  the todo, published by the relay (``manage.py eventbus outbox relay``).

Invalid data is refused before anything is written or sent: the event is
validated when it is built, inside the transaction, which then rolls back.
"""

import json
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from eventbus.contrib.django import publish_on_commit, publish_via_outbox
from todos.events import TodoCreated
from todos.models import Todo


def _create(request: HttpRequest, publish: Callable[..., Any]) -> JsonResponse:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"error": "the body must be JSON"}, status=400)
    try:
        with transaction.atomic():
            todo = Todo.objects.create(title=str(body.get("title", "")))
            envelope = publish(
                TodoCreated(todo_id=todo.pk, title=todo.title),
                aggregate_id=todo.pk,
                aggregate_type="Todo",
            )
    except ValueError as exc:  # the event's validation error: the todo rolled back
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse({"id": todo.pk, "event_id": str(envelope.event_id)}, status=201)


@csrf_exempt  # a JSON API for the example; keep CSRF on for browser forms
@require_POST
def create_todo(request: HttpRequest) -> JsonResponse:
    return _create(request, publish_on_commit)


@csrf_exempt
@require_POST
def create_todo_via_outbox(request: HttpRequest) -> JsonResponse:
    return _create(request, publish_via_outbox)


@require_GET
def show_todo(request: HttpRequest, todo_id: int) -> JsonResponse:
    todo = get_object_or_404(Todo, pk=todo_id)
    notifications = list(todo.notifications.values_list("message", flat=True))
    return JsonResponse({"id": todo.pk, "title": todo.title, "notifications": notifications})
