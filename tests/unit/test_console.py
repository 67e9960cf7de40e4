"""The console without a broker: who may start and use it, paging, mounting under another app.

The in-memory bus keeps dead letters in a list; everything a broker changes
is in tests/integration/test_console.py (both brokers) and the browser test.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from eventbus import InMemoryEventBus
from eventbus.cli.main import main
from eventbus.console import Credentials, create_app
from eventbus.console.snapshot import Filters, Snapshot
from eventbus.deadletter.memory import InMemoryDeadLetterStore
from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.summary import Summary
from eventbus.errors import ConfigurationError, DeadLetterQueueBusy, DeadLetterQueueUnavailable

USER, PASSWORD, TOKEN = "ops", "s3cret-password", "t0ken-" + "x" * 20
AUTH_VARIABLES = ("EVENTBUS_CONSOLE_USER", "EVENTBUS_CONSOLE_PASSWORD", "EVENTBUS_CONSOLE_TOKEN")


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in AUTH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def record(n: int) -> DeadLetter:
    return DeadLetter(
        failed_at=datetime(2026, 12, 1, tzinfo=UTC) + timedelta(seconds=n),
        id=f"{n:032x}",
        handler="h.ship" if n % 2 else "h.bill",
        reason="permanent_error",
        attempts=1,
        exception_type="ValueError",
        exception_message=f"failure {n}",
    )


def test_the_command_refuses_to_start_without_authentication(no_credentials: None) -> None:
    result = CliRunner().invoke(main, ["-A", "tests.unit.cli_app", "console"])
    assert result.exit_code == 1
    assert "refusing to serve the eventbus console without authentication" in result.output
    assert "EVENTBUS_CONSOLE_TOKEN" in result.output


def test_open_is_for_loopback_only(no_credentials: None) -> None:
    result = CliRunner().invoke(
        main, ["-A", "tests.unit.cli_app", "console", "--open", "--host", "0.0.0.0"]
    )
    assert result.exit_code == 2 and "loopback only, not '0.0.0.0'" in result.output


def test_the_command_has_help() -> None:
    result = CliRunner().invoke(main, ["console", "--help"])
    assert result.exit_code == 0 and "--open" in result.output and "--flower-url" in result.output


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        ({"EVENTBUS_CONSOLE_USER": "ops"}, "set both"),
        ({"EVENTBUS_CONSOLE_TOKEN": "short"}, "16 characters or more"),
    ],
)
def test_half_configured_credentials_are_named(variables: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        Credentials.from_env(variables)


def test_create_app_refuses_without_authentication(no_credentials: None) -> None:
    with pytest.raises(ConfigurationError, match="without authentication"):
        create_app(InMemoryEventBus())


def test_basic_and_bearer_headers() -> None:
    app = create_app(InMemoryEventBus(), credentials=Credentials(USER, PASSWORD, TOKEN))
    client = app.test_client()
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert client.get("/groups", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert client.get("/groups", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/groups", headers={"Authorization": "Bearer nope"}).status_code == 401
    wrong = base64.b64encode(f"{USER}:nope".encode()).decode()
    assert client.get("/groups", headers={"Authorization": f"Basic {wrong}"}).status_code == 401


def test_login_never_sends_elsewhere() -> None:
    app = create_app(InMemoryEventBus(), credentials=Credentials(USER, PASSWORD))
    app.config["WTF_CSRF_ENABLED"] = False
    client = app.test_client()
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:1"):
        response = client.post(f"/login?next={target}", data={"user": USER, "password": PASSWORD})
        assert response.status_code == 302 and response.headers["Location"] == "/", target


def test_a_changed_password_ends_sessions() -> None:
    bus = InMemoryEventBus()
    app = create_app(bus, credentials=Credentials(USER, PASSWORD), secret_key="k" * 32)
    app.config["WTF_CSRF_ENABLED"] = False
    client = app.test_client()
    client.post("/login", data={"user": USER, "password": PASSWORD})
    assert client.get("/groups").status_code == 200
    app.extensions["eventbus_console"].credentials = Credentials(USER, "another-password")
    assert client.get("/groups").status_code == 302


def test_cursor_pages_survive_records_leaving() -> None:
    store = InMemoryDeadLetterStore()
    for n in range(10):
        store.append(record(n))
    first = Snapshot.read(store).page(Filters(), None, 4)
    assert [r.id for r in first.rows] == [record(n).id for n in range(4)]
    # The record the page ended on, and the one before it, leave the queue
    store.remove([record(3).id, record(2).id])
    second = Snapshot.read(store).page(Filters(), first.next_cursor, 4)
    assert [r.id for r in second.rows] == [record(n).id for n in range(4, 8)]
    assert second.restarted  # (the page says the record it followed left)
    # A filter pages by the same cursor
    ships = Snapshot.read(store).page(Filters(handler="h.ship"), None, 2)
    assert [r.id for r in ships.rows] == [record(1).id, record(5).id]
    rest = Snapshot.read(store).page(Filters(handler="h.ship"), ships.next_cursor, 2)
    assert [r.id for r in rest.rows] == [record(7).id, record(9).id] and rest.next_cursor is None


def test_mounted_under_a_flask_app() -> None:
    # The README's snippet: the console under /console of a host application
    host = Flask("host")
    host.add_url_rule("/", "index", lambda: "the host app")
    console = create_app(InMemoryEventBus(), credentials=Credentials(USER, PASSWORD))
    host.wsgi_app = DispatcherMiddleware(host.wsgi_app, {"/console": console})  # type: ignore[method-assign]
    client = Client(host)
    assert client.get("/").get_data(as_text=True) == "the host app"
    response = client.get("/console/groups")
    assert response.status_code == 302 and response.headers["Location"].startswith("/console/login")
    login = client.get("/console/login").get_data(as_text=True)
    assert 'href="/console/static/console.css"' in login


DJANGO_MOUNT = """
import django
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

settings.configure(
    ROOT_URLCONF=__name__, ALLOWED_HOSTS=["localhost"], SECRET_KEY="x" * 50, DEBUG=False
)
urlpatterns = [path("", lambda request: HttpResponse("the django site"))]
django.setup()

# The README's snippet: the console under /eventbus of a Django project's WSGI app
from django.core.wsgi import get_wsgi_application
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from eventbus import InMemoryEventBus
from eventbus.console import Credentials, create_app

bus = InMemoryEventBus()
application = DispatcherMiddleware(
    get_wsgi_application(),
    {"/eventbus": create_app(bus, credentials=Credentials(user="ops", password="pw-123456"))},
)

from werkzeug.test import Client

client = Client(application)
site = client.get("/", headers={"Host": "localhost"})
console = client.get("/eventbus/groups", headers={"Host": "localhost"})
print(site.get_data(as_text=True), console.status_code, console.headers["Location"])
"""


def test_mounted_in_a_django_project() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", DJANGO_MOUNT], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "the",
        "django",
        "site",
        "302",
        "/eventbus/login?next=/eventbus/groups?",
    ]


def test_a_stale_snapshot_is_served_while_it_is_read_again() -> None:
    from eventbus.console.cache import SnapshotCache
    from tests.support import wait_for

    store = InMemoryDeadLetterStore()
    store.append(record(1))
    cache = SnapshotCache(store, max_age=0.05)
    first = cache.get()
    assert len(first) == 1
    store.append(record(2))
    wait_for(lambda: first.age() > 0.05, message="the snapshot to grow stale")
    assert cache.get() is first  # served stale, while a read runs in the background
    wait_for(lambda: len(cache.get()) == 2, message="the new read to be served")
    # What the console itself removed leaves the snapshot at once
    cache.forget([record(2).id])
    assert [r.id for r in cache.get(fresh=False).rows] == [record(1).id]


def test_a_failed_read_is_raised_never_an_empty_snapshot() -> None:
    from eventbus.console.cache import SnapshotCache
    from eventbus.errors import DeadLetterQueueUnavailable

    class Failing(InMemoryDeadLetterStore):
        fail = False

        def __iter__(self):  # type: ignore[no-untyped-def]
            if self.fail:
                raise DeadLetterQueueUnavailable("cannot read the dead-letter queue: refused")
            return super().__iter__()

    store = Failing()
    store.append(record(1))
    cache = SnapshotCache(store, max_age=60)
    assert len(cache.get()) == 1
    store.fail = True
    with pytest.raises(DeadLetterQueueUnavailable):
        cache.get(fresh=True)
    with pytest.raises(DeadLetterQueueUnavailable):  # and on every page after, until a read works
        cache.get()


class SlowStore(InMemoryDeadLetterStore):
    """A store whose read gives ``before`` rows, then waits for ``go`` (a large queue, read)."""

    def __init__(self, before: int) -> None:
        super().__init__()
        self.before = before
        self.go = threading.Event()
        self.fail = False

    def summaries(self) -> Iterator[Summary]:
        for n, row in enumerate(super().summaries()):
            if n == self.before:
                assert self.go.wait(30), "the test never let the read go on"
                if self.fail:
                    raise DeadLetterQueueUnavailable("cannot read the dead-letter queue: refused")
            yield row


def test_a_read_longer_than_the_first_wait_is_shown_as_far_as_it_got_marked_partial() -> None:
    from eventbus.console.cache import SnapshotCache
    from tests.support import wait_for

    store = SlowStore(before=3)
    for n in range(1, 6):
        store.append(record(n))
    app = create_app(InMemoryEventBus(), credentials=Credentials(USER, PASSWORD))
    cache = SnapshotCache(store, max_age=60, first_wait=0.2)
    app.extensions["eventbus_console"].cache = cache
    client = app.test_client()
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    auth = {"Authorization": f"Basic {basic}"}

    partial = cache.get()
    assert partial.partial and len(partial) == 3 and partial.expected == 5
    page = client.get("/groups", headers=auth)
    assert page.status_code == 200
    text = " ".join(page.text.split())
    assert "Partial: the dead-letter queue is still being read" in text
    assert "only the 3 record(s) read so far, of the 5 message(s) the queue held" in text
    assert "3 record(s) read, not yet all" in text
    records_page = " ".join(client.get("/records", headers=auth).text.split())
    assert "Partial: the dead-letter queue is still being read" in records_page

    store.go.set()
    wait_for(lambda: not cache.get().partial, message="the read to end")
    whole = cache.get()
    assert len(whole) == 5 and whole.expected == 5
    text = " ".join(client.get("/groups", headers=auth).text.split())
    assert "Partial" not in text and ": 5 record(s)." in text


def test_a_read_that_fails_after_a_partial_page_is_raised_to_the_next() -> None:
    from eventbus.console.cache import SnapshotCache
    from tests.support import wait_for

    store = SlowStore(before=1)
    store.append(record(1))
    store.append(record(2))
    store.fail = True
    cache = SnapshotCache(store, max_age=60, first_wait=0.1)
    assert cache.get().partial
    store.go.set()
    wait_for(lambda: not cache.refreshing, message="the read to end")
    with pytest.raises(DeadLetterQueueUnavailable):
        cache.get()


def test_a_quick_first_read_is_shown_whole() -> None:
    from eventbus.console.cache import SnapshotCache

    store = InMemoryDeadLetterStore()
    store.append(record(1))
    snapshot = SnapshotCache(store, max_age=60, first_wait=10).get()
    assert not snapshot.partial and len(snapshot) == 1 and snapshot.expected == 1


def test_the_live_depth_is_unknown_not_an_error_while_a_reader_holds_the_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a console whose snapshot was read, and a queue another reader now
    # holds (RabbitMQ: the console's own read in the background browses it),
    # so that its depth cannot be counted (the store raises DeadLetterQueueBusy)
    bus = InMemoryEventBus()
    for n in range(1, 4):
        bus.dead_letter_store.append(record(n))
    app = create_app(bus, credentials=Credentials(USER, PASSWORD))
    client = app.test_client()
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    auth = {"Authorization": f"Basic {basic}"}
    assert "The queue holds 3 message(s) now" in " ".join(
        client.get("/groups", headers=auth).text.split()
    )

    def busy() -> int:
        raise DeadLetterQueueBusy(
            "cannot count the dead-letter queue 'eventbus.dlq': another reader holds its messages"
        )

    monkeypatch.setattr(bus.dead_letter_store, "count", busy)

    # When the list pages are shown
    pages = {path: client.get(path, headers=auth) for path in ("/", "/groups", "/records")}

    # Then each shows the snapshot's records with the depth unknown: not an error page
    for path, page in pages.items():
        text = " ".join(page.text.split())
        assert page.status_code == 200, (path, page.status_code, text[text.find("<main") :][:300])
        assert "could not be read" not in text and "message(s) now" not in text, path
    overview = " ".join(pages["/"].text.split())
    assert 'id="dlq-depth">?<' in overview
    assert "queue depth: unknown while another reader holds them" in overview
    assert all(f"/records/{record(n).id}" in pages["/records"].text for n in range(1, 4))
    assert "h.ship" in pages["/groups"].text and "h.bill" in pages["/groups"].text
