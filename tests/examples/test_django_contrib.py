"""eventbus.contrib.django without a broker: the bus it finds, publishing on commit, the relay.

The cases run in ``django_contrib_cases.py``, in a process of its own (Django's
settings are process-wide): an in-memory bus and SQLite, two database aliases.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).with_name("django_contrib_cases.py")
PG_RELAYS = Path(__file__).with_name("django_pg_relays.py")
#: The local PostgreSQL server, as the event store's tests name it.
POSTGRES_URL = os.environ.get(
    "EVENTBUS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

pytestmark = pytest.mark.timeout(60)


def run_script(*args: str) -> dict[str, Any]:
    """Run a case script in a process of its own; the JSON on its last line."""
    # Celery reads CELERY_BROKER_URL before its settings: the scripts set theirs.
    env = {key: value for key, value in os.environ.items() if key != "CELERY_BROKER_URL"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    observations: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return observations


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_script(str(CASES), str(tmp_path_factory.mktemp("django")))


def test_without_a_celery_app_of_yours_the_bus_is_built_from_the_celery_settings(
    observed: dict[str, Any],
) -> None:
    built = observed["built"]
    # CELERY_BROKER_URL, CELERY_EVENTBUS_* became the app's settings
    assert (built["broker_url"], built["max_retries"], built["default_queue"]) == (
        "memory://",
        2,
        "cases",
    )
    assert built["main"] == "django"
    # with the ORM relay's task, run by `celery -A eventbus.contrib.django worker`
    assert built["relay_task"] and built["celery_finds_it"]
    # and `from eventbus.contrib.django import bus` is that bus
    assert built["lazy_bus"]


def test_publish_on_commit_sends_after_the_commit_and_never_after_a_rollback(
    observed: dict[str, Any],
) -> None:
    seen = observed["publishing"]
    assert seen["before_commit"] == [] and seen["after_commit"] == ["a"]
    assert seen["envelope"] == ["7", "a"]  # returned at once, with its fields
    assert seen["after_rollback"] == ["a"]
    # using=: the hook waits for that database's commit; in its autocommit, none
    assert seen["other_before_commit"] == ["a"]
    assert seen["autocommit_publishes_at_once"] == ["a", "c", "d"]


def test_publish_on_commit_refuses_an_invalid_event_before_the_commit(
    observed: dict[str, Any],
) -> None:
    seen = observed["publishing"]
    assert seen["unknown_type"].startswith("UnknownEventType: unknown event type 'cases.happened'")
    assert seen["too_large"].startswith("PayloadTooLarge: event 'cases.happened' is 300304 bytes")
    assert seen["a_dict"].startswith("TypeError: expected an Event or an Envelope, got dict")
    assert seen["fields_on_envelope"].startswith("TypeError: an envelope takes no envelope fields")


def test_a_publish_failing_after_the_commit_is_logged_with_its_envelope(
    observed: dict[str, Any],
) -> None:
    seen = observed["publishing"]
    assert seen["not_robust"] == "ConnectionError: broker gone"  # raised from the commit
    assert seen["robust"] is None  # robust=True: only logged
    assert seen["logged"] == ["eventbus: publish after commit failed, event cases"] * 2
    assert seen["logged_envelope"]


def test_the_outbox_row_commits_with_the_transaction_and_the_relay_publishes_it(
    observed: dict[str, Any],
) -> None:
    outbox = observed["outbox"]
    assert outbox["rows_after_rollback"] == 0
    assert outbox["row"] == ["cases.happened", "1", None, 0]
    assert outbox["invalid"].startswith("PayloadTooLarge")  # nothing written
    assert outbox["status_before"] == 2
    # batches of one, in id order, until nothing is pending
    assert outbox["relayed"] == {"published": 2, "failed": 0, "pending_left": 0, "error": None}
    assert outbox["seen"] == ["one", "two"]
    assert outbox["status_after"] == {"pending": 0, "failed": 0, "published": 2}
    # another database's outbox, relayed on its own
    assert outbox["other"]["published"] == 1
    assert outbox["seen_after_other"] == ["one", "two", "three"]
    assert outbox["max_batches"] == "ValueError: max_batches must be an int >= 1, got 0"


def test_the_celery_app_is_the_one_configured_from_django_or_the_one_named(
    observed: dict[str, Any],
) -> None:
    finding = observed["finding"]
    # the app of Celery's Django guide, found without a setting
    assert finding["detected"] and finding["detected_conf"] == 2
    # two such apps: name one
    assert finding["ambiguous"] == (
        "ConfigurationError: several Celery apps read Django's settings (other, proj); "
        "name yours with EVENTBUS_CELERY_APP = 'proj.celery:app'"
    )
    # EVENTBUS_CELERY_APP: module:attr, a module's app, or an EventBus
    assert finding["named_app"] and finding["named_module"] and finding["named_bus"]
    assert finding["memory_bus"] == (
        "ConfigurationError: EVENTBUS_CELERY_APP = 'cases_project:memory' names "
        "InMemoryEventBus, not a Celery app or the EventBus of one"
    )
    assert finding["not_an_app"] == (
        "ConfigurationError: EVENTBUS_CELERY_APP = 'json:dumps' is neither a Celery app "
        "nor an EventBus"
    )
    assert finding["missing_attr"] == (
        "ConfigurationError: EVENTBUS_CELERY_APP: 'cases_project' has no nope attribute"
    )
    assert finding["unimportable"].startswith(
        "ConfigurationError: EVENTBUS_CELERY_APP: cannot import 'no_such_module_here'"
    )


def test_relays_side_by_side_on_postgresql_publish_each_row_once() -> None:
    import psycopg

    # Given 60 outbox rows in a schema of the test's own on PostgreSQL
    parts = urlsplit(POSTGRES_URL)
    where = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "user": parts.username or "postgres",
        "dbname": parts.path.lstrip("/") or "test",
    }
    try:
        admin = psycopg.connect(**where, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL at {where['host']}:{where['port']} unreachable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: the PostgreSQL server must be up)")
        pytest.skip(reason)
    schema = f"eventbus_django_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f"CREATE SCHEMA {schema}")
        try:
            # When three relays publish them at once, in batches of five
            out = run_script(
                str(PG_RELAYS),
                where["host"],
                str(where["port"]),
                where["user"],
                where["dbname"],
                schema,
            )
        finally:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")

    # Then every event was handled exactly once (SKIP LOCKED: each took other rows)
    assert out["skip_locked"]
    assert out["overlapped"]
    assert (out["handled"], out["twice"]) == (60, [])
    assert sum(out["relays"]) == 60
