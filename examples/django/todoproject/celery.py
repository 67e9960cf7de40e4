"""The project's Celery app, configured from Django's settings (``CELERY_*``).

``celery -A todoproject worker`` runs the handlers: Celery's Django fixup sets
Django up, and eventbus's app config puts the bus on this app and imports
``todos/handlers.py``.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "todoproject.settings")

app = Celery("todoproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
