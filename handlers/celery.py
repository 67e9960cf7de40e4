"""The example app: a Celery app configured from ``celeryconfig`` and its event bus.

Run a worker for it with ``celery -A handlers worker -l INFO``.
"""

from celery import Celery

from eventbus import EventBus

app = Celery("eventbus-example")
app.config_from_object("celeryconfig")
bus = EventBus(app)
