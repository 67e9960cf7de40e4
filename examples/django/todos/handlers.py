"""The todo app's handlers: imported when Django starts (``EVENTBUS_AUTODISCOVER``).

The web process imports them too: publishing needs to know who is subscribed.
Each handler runs as a Celery task named after it (``todos.handlers.notify_team``).
"""

import logging

from eventbus import Envelope
from eventbus.contrib.django import bus
from todos.events import TodoCreated
from todos.models import Notification, Todo

logger = logging.getLogger(__name__)


@bus.subscribe(TodoCreated)
def notify_team(envelope: Envelope[TodoCreated]) -> None:
    """Tell the team about a new todo (here: record the notification)."""
    todo = Todo.objects.get(pk=envelope.data.todo_id)  # committed: published after COMMIT
    Notification.objects.create(
        todo=todo, event_id=str(envelope.event_id), message=f"New todo: {todo.title}"
    )
    logger.info("notified the team of todo %s (event %s)", todo.pk, envelope.event_id)
