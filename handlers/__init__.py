"""Example handlers: what ``eventbus demo`` and the compose stack's worker run.

``celery -A handlers worker`` finds the app in :mod:`handlers.celery`;
importing this package registers every handler on its bus.
"""

from handlers import todo, user
from handlers.celery import app, bus

__all__ = ["app", "bus", "todo", "user"]
