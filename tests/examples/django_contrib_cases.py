"""eventbus.contrib.django in a Django configured here; prints what each case observed, as JSON.

Run by ``test_django_contrib.py`` in a process of its own (Django's settings
are process-wide). ``python django_contrib_cases.py TMPDIR``. The cases run in
order: the bus Django builds when no Celery app reads its settings, the
publish helpers on an in-memory bus, the ORM relay, then how the Celery app
is found (detected, ambiguous, named by EVENTBUS_CELERY_APP).
"""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

import django
from django.conf import settings

TMP = Path(sys.argv[1])
settings.configure(
    INSTALLED_APPS=["eventbus.contrib.django"],
    DATABASES={
        alias: {"ENGINE": "django.db.backends.sqlite3", "NAME": str(TMP / f"{alias}.sqlite3")}
        for alias in ("default", "other")
    },
    USE_TZ=True,
    CELERY_BROKER_URL="memory://",
    CELERY_EVENTBUS_MAX_RETRIES=2,
    CELERY_EVENTBUS_DEFAULT_QUEUE="cases",
)
django.setup()

from celery import Celery  # noqa: E402
from celery.app.utils import find_app  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import transaction  # noqa: E402
from django.test import override_settings  # noqa: E402

import eventbus.contrib.django.conf as conf  # noqa: E402
from eventbus import (  # noqa: E402
    Envelope,
    Event,
    EventBus,
    EventRegistry,
    InMemoryEventBus,
    create_event,
)
from eventbus.contrib.django import (  # noqa: E402
    OutboxMessage,
    get_bus,
    outbox_status,
    publish_on_commit,
    publish_via_outbox,
    relay_outbox,
)


class CaseEvent(Event):
    event_type = "cases.happened"
    name: str


#: A registry of its own (a bus given an empty one falls back to the process's).
OTHER_REGISTRY = EventRegistry()


class OtherEvent(Event, registry=OTHER_REGISTRY):
    event_type = "cases.other"


def error(call: Any) -> str | None:
    try:
        call()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def found(**django_settings: Any) -> Any:
    """The bus get_bus() finds now, with these settings."""
    conf._bus = None  # forget the one found before
    with override_settings(**django_settings):
        return get_bus()


def built() -> dict[str, Any]:
    bus = get_bus()
    app = bus.app
    return {
        "main": app.main,
        "broker_url": app.conf.broker_url,
        "max_retries": app.conf.eventbus_max_retries,
        "default_queue": bus.default_queue,
        "relay_task": "eventbus.django.relay_outbox" in app.tasks,
        # `celery -A eventbus.contrib.django worker` runs this very app
        "celery_finds_it": find_app("eventbus.contrib.django") is app,
        "lazy_bus": __import__("eventbus.contrib.django", fromlist=["bus"]).bus is bus,
    }


def publishing() -> dict[str, Any]:
    bus = InMemoryEventBus()
    seen: list[str] = []
    bus.subscribe(CaseEvent, name="cases.record")(lambda env: seen.append(env.data.name))
    out: dict[str, Any] = {}

    with transaction.atomic():
        envelope = publish_on_commit(CaseEvent(name="a"), bus=bus, aggregate_id=7)
        out["before_commit"] = list(seen)
    out["after_commit"] = list(seen)
    out["envelope"] = [envelope.aggregate_id, envelope.data.name]

    def rolled_back() -> None:
        with transaction.atomic():
            publish_on_commit(CaseEvent(name="b"), bus=bus)
            raise RuntimeError("rollback")

    error(rolled_back)
    out["after_rollback"] = list(seen)

    with transaction.atomic(using="other"):
        publish_on_commit(CaseEvent(name="c"), bus=bus, using="other")
        out["other_before_commit"] = list(seen)
    with transaction.atomic():
        publish_on_commit(CaseEvent(name="d"), bus=bus, using="other")  # "other" autocommits
        out["autocommit_publishes_at_once"] = list(seen)

    # invalid: refused before the commit, nothing scheduled
    unknown = InMemoryEventBus(event_registry=OTHER_REGISTRY)
    named = create_event("cases.happened", {"name": "x"})
    out["unknown_type"] = error(lambda: publish_on_commit(named, bus=unknown))
    out["fields_on_envelope"] = error(lambda: publish_on_commit(named, bus=bus, aggregate_id=1))
    out["too_large"] = error(lambda: publish_on_commit(CaseEvent(name="x" * 300_000), bus=bus))
    out["a_dict"] = error(lambda: publish_on_commit({"name": "x"}, bus=bus))  # type: ignore[arg-type]

    # a publish failing after the commit: raised (default) or only logged (robust)
    failing = InMemoryEventBus(raise_errors=True)

    def explode(envelope: Envelope[CaseEvent]) -> None:
        raise ConnectionError("broker gone")

    failing.subscribe(CaseEvent, name="cases.explode", max_retries=0)(explode)

    def commit_failing(robust: bool) -> None:
        with transaction.atomic():
            publish_on_commit(CaseEvent(name="e"), bus=failing, robust=robust)

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("eventbus.contrib.django.publish").addHandler(handler)
    out["not_robust"] = error(lambda: commit_failing(False))
    out["robust"] = error(lambda: commit_failing(True))
    out["logged"] = [record[:50] for record in records]
    out["logged_envelope"] = all('"name":"e"' in record.replace(" ", "") for record in records)
    return out


def outbox() -> dict[str, Any]:
    bus = InMemoryEventBus()
    seen: list[str] = []
    bus.subscribe(CaseEvent, name="cases.outbox")(lambda env: seen.append(env.data.name))
    out: dict[str, Any] = {}

    def rolled_back() -> None:
        with transaction.atomic():
            publish_via_outbox(CaseEvent(name="gone"), bus=bus)
            raise RuntimeError("rollback")

    error(rolled_back)
    out["rows_after_rollback"] = OutboxMessage.objects.count()
    with transaction.atomic():
        first = publish_via_outbox(CaseEvent(name="one"), bus=bus, aggregate_id=1)
        publish_via_outbox(CaseEvent(name="two"), bus=bus, aggregate_type="Case", aggregate_id=2)
    publish_via_outbox(CaseEvent(name="three"), bus=bus, using="other")  # autocommit
    row = OutboxMessage.objects.get(event_id=str(first.event_id))
    out["row"] = [row.event_type, row.aggregate_id, row.aggregate_type, row.attempts]
    out["invalid"] = error(lambda: publish_via_outbox(CaseEvent(name="x" * 300_000), bus=bus))
    out["status_before"] = outbox_status().as_dict()["pending"]
    out["relayed"] = relay_outbox(bus=bus, batch_size=1).as_dict()
    out["seen"] = list(seen)
    out["status_after"] = {
        key: value
        for key, value in outbox_status().as_dict().items()
        if key in ("pending", "failed", "published")
    }
    out["other"] = relay_outbox(bus=bus, using="other").as_dict()
    out["seen_after_other"] = list(seen)
    out["max_batches"] = error(lambda: relay_outbox(bus=bus, max_batches=0))
    return out


def finding() -> dict[str, Any]:
    out: dict[str, Any] = {}
    # the Celery app of Celery's Django guide, configured from Django's settings
    app = Celery("proj", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    detected = found()
    out["detected"] = detected.app is app
    out["detected_conf"] = detected.app.conf.eventbus_max_retries
    # two of them: which one?
    other = Celery("other", set_as_current=False)
    other.config_from_object("django.conf:settings", namespace="CELERY")
    out["ambiguous"] = error(found)
    # named: an app, or a bus, in a module
    module = types.ModuleType("cases_project")
    module.app = other  # type: ignore[attr-defined]
    module.bus = EventBus(Celery("named", set_as_current=False))  # type: ignore[attr-defined]
    module.memory = InMemoryEventBus()  # type: ignore[attr-defined]
    sys.modules["cases_project"] = module
    out["named_app"] = found(EVENTBUS_CELERY_APP="cases_project:app").app is other
    out["named_module"] = found(EVENTBUS_CELERY_APP="cases_project").app is other
    out["named_bus"] = found(EVENTBUS_CELERY_APP="cases_project:bus") is module.bus  # type: ignore[attr-defined]
    for key, spec in (
        ("memory_bus", "cases_project:memory"),
        ("not_an_app", "json:dumps"),
        ("missing_attr", "cases_project:nope"),
        ("unimportable", "no_such_module_here:app"),
    ):
        out[key] = error(lambda spec=spec: found(EVENTBUS_CELERY_APP=spec))
    return out


if __name__ == "__main__":
    for alias in ("default", "other"):
        call_command("migrate", database=alias, verbosity=0)
    results = {"built": built(), "publishing": publishing(), "outbox": outbox()}
    results["finding"] = finding()
    print(json.dumps(results))
