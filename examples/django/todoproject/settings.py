"""Settings of the todo example: SQLite, a Celery broker from the environment, eventbus.

Everything a deployment changes comes from the environment (defaults for a
laptop with Redis on 127.0.0.1).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "eventbus.contrib.django",  # the bus, the outbox table, `manage.py eventbus`
    "todos",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "todoproject.urls"
WSGI_APPLICATION = "todoproject.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TODOS_DB", str(BASE_DIR / "db.sqlite3")),
        # The web process, the worker and the relay write to the same file.
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# -- Celery: every CELERY_* setting is a Celery setting (todoproject/celery.py) ---
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery")
# eventbus's own settings take the same prefix (see celeryconfig.py for them all).
CELERY_EVENTBUS_DEFAULT_QUEUE = os.environ.get("EVENTBUS_QUEUE", "todos")
CELERY_EVENTBUS_DEAD_LETTER_QUEUE = os.environ.get("EVENTBUS_DLQ", "todos.dlq")
CELERY_EVENTBUS_MAX_RETRIES = 3
# The outbox relay as a periodic task (`celery -A todoproject beat`), instead of
# (or next to) `manage.py eventbus outbox relay --loop`.
CELERY_BEAT_SCHEDULE = {
    "eventbus-relay-outbox": {
        "task": "eventbus.django.relay_outbox",
        "schedule": 1.0,
        "options": {"expires": 10},
    },
}

# -- eventbus ------------------------------------------------------------------
# Optional here: without it eventbus finds the one Celery app that reads Django's
# settings. Handlers: each installed app's `events` and `handlers` modules.
EVENTBUS_CELERY_APP = "todoproject.celery:app"
