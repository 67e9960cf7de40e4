from django.db import models


class Todo(models.Model):
    title = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.title


class Notification(models.Model):
    """One notification sent by the ``notify_team`` handler: a row per run."""

    todo = models.ForeignKey(Todo, on_delete=models.CASCADE, related_name="notifications")
    event_id = models.CharField(max_length=36)
    message = models.CharField(max_length=300)
    sent_at = models.DateTimeField(auto_now_add=True)
