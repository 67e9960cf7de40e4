"""Example handlers: what the compose stack's worker, the tests and the README run.

``celery -A handlers worker`` (and ``eventbus -A handlers ...``) finds the app
in :mod:`handlers.celery`; importing this package registers every handler on
its bus. It is not installed (the wheel holds the ``eventbus`` package alone):
it is found from the working directory. ``eventbus demo`` runs its own
example app, :mod:`eventbus.cli.demo_app`.
"""

from handlers import todo, user
from handlers.celery import app, bus

__all__ = ["app", "bus", "todo", "user"]
