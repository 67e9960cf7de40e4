"""The todo example project: Django, Celery and eventbus."""

# As in Celery's "First steps with Django": the Celery app loads with Django,
# so eventbus's app config finds it (and `celery -A todoproject` does too).
from todoproject.celery import app as celery_app

__all__ = ["celery_app"]
