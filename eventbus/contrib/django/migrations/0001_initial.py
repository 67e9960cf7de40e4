"""The outbox table, ``eventbus_outbox`` (the columns of :mod:`eventbus.outbox`)."""

import django.utils.timezone  # type: ignore[import-untyped]
from django.db import migrations, models  # type: ignore[import-untyped]


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="OutboxMessage",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("event_id", models.CharField(max_length=36, unique=True)),
                ("event_type", models.CharField(max_length=255)),
                ("aggregate_type", models.CharField(blank=True, max_length=255, null=True)),
                ("aggregate_id", models.CharField(blank=True, max_length=255, null=True)),
                ("payload", models.TextField()),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("published_at", models.DateTimeField(blank=True, null=True)),
                ("failed_at", models.DateTimeField(blank=True, null=True)),
                ("attempts", models.IntegerField(default=0)),
                ("last_error", models.TextField(blank=True, null=True)),
            ],
            options={
                "verbose_name": "outbox message",
                "db_table": "eventbus_outbox",
                "ordering": ("id",),
                "indexes": [
                    models.Index(
                        fields=["published_at", "failed_at", "id"], name="eventbus_outbox_pending"
                    )
                ],
            },
        ),
    ]
