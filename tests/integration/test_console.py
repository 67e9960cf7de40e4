"""The web console through Flask's test client, on Redis and on RabbitMQ.

Dead letters are written to the bus's real dead-letter queue; the console
reads, replays, edits and purges them there, and a replayed record's message
is seen on the real handler queue. What an operator sees: who may enter,
that a POST without its CSRF token changes nothing, that event data is shown
as text, the filters and the pages, and every action logged with the user.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape

from eventbus import Envelope, EventBus
from eventbus.cli.context import fail_fast
from eventbus.console import Credentials, create_app
from eventbus.errors import ConfigurationError
from tests.support import make_app, wait_for

from .conftest import Env
from .console_support import PASSWORD, SCRIPT, USER, csrf_token, dead_letter, log_in, post
from .helpers import OrderPlaced

FLOWER = "http://flower.example:5555"


def subscribe(env: Env, short: str) -> str:
    name = env.name(short)

    def handle(envelope: Envelope[OrderPlaced]) -> None:
        raise AssertionError("no worker runs in these tests")

    env.bus.subscribe(OrderPlaced, handler=handle, name=name)
    return name


def console(env: Env, **options: object) -> Flask:
    app = create_app(
        env.bus,
        credentials=Credentials(user=USER, password=PASSWORD),
        flower_url=FLOWER,
        max_age=0,  # every page reads the queue: the tests see each change at once
        **options,  # type: ignore[arg-type]
    )
    app.testing = True
    return app


@pytest.fixture
def client(env: Env) -> Iterator[FlaskClient]:
    with console(env).test_client() as test_client:
        yield test_client


def test_who_may_enter(env: Env, client: FlaskClient) -> None:
    # Given a console with a user and password
    # When nobody logged in asks for a page, they are sent to the login form
    response = client.get("/records")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    # And a wrong password is refused, Basic or form alike
    assert client.get("/", headers={"Authorization": "Basic b3BlcmF0b3I6bm9wZQ=="}).status_code == (
        401
    )
    refused = log_in(client, password="wrong")
    assert refused.status_code == 401 and "wrong user or password" in refused.text
    assert client.get("/").status_code == 302
    # And a login without its CSRF token is refused
    assert client.post("/login", data={"user": USER, "password": PASSWORD}).status_code == 400
    # Then the right one gets in, and the page never shows the password or the broker's
    assert log_in(client).status_code == 302
    page = client.get("/")
    assert page.status_code == 200 and USER in page.text
    assert PASSWORD not in page.text
    assert "Overview" in page.text


def test_refuses_to_exist_without_authentication(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EVENTBUS_CONSOLE_USER", "EVENTBUS_CONSOLE_PASSWORD", "EVENTBUS_CONSOLE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigurationError, match="without authentication"):
        create_app(env.bus)
    # Open, it answers loopback clients only
    app = create_app(env.bus, open=True)
    with app.test_client() as open_client:
        assert open_client.get("/groups").status_code == 200
        far = open_client.get("/groups", environ_overrides={"REMOTE_ADDR": "10.1.2.3"})
        assert far.status_code == 403


def test_groups_records_and_record_escape_event_data(env: Env, client: FlaskClient) -> None:
    # Given dead letters whose data and message carry markup (an attacker's input)
    handler = subscribe(env, "ship")
    env.bus.dead_letter_store.declare()
    records = [
        dead_letter(env.bus, handler, order_id=f"{SCRIPT}-{n}", quantity=n + 1) for n in range(3)
    ]
    log_in(client)

    # When the operator opens the groups page
    page = client.get("/groups")
    # Then the group is there, counted, and the markup is text
    assert page.status_code == 200
    assert handler in page.text and "eventbus.errors.PermanentHandlerError" in page.text
    assert ">3</a>" in page.text
    assert SCRIPT not in page.text and escape(SCRIPT) in page.text

    # And the records page lists them, escaped
    page = client.get("/records")
    assert page.status_code == 200 and page.text.count(f"/records/{records[0].id}") == 1
    assert SCRIPT not in page.text and escape(SCRIPT) in page.text

    # And a record shows its envelope, data, traceback, worker, and a link to Flower's task page
    page = client.get(f"/records/{records[0].id}")
    assert page.status_code == 200
    assert SCRIPT not in page.text and escape(SCRIPT) in page.text
    assert "Traceback (most recent call last)" in page.text
    assert "celery@it-worker" in page.text
    assert f'href="{FLOWER}/task/task-{escape(SCRIPT)}-0"'.replace("<", "%3C") not in page.text
    assert f"{FLOWER}/task/task-%3Cscript%3E" in page.text


def test_filters_and_cursor_pages(env: Env) -> None:
    # Given 12 records of one handler and 2 older ones of another, with another exception
    ship, bill = subscribe(env, "ship"), subscribe(env, "bill")
    env.bus.dead_letter_store.declare()
    shipped = [dead_letter(env.bus, ship, order_id=f"ship-{n}") for n in range(12)]
    billed = [
        dead_letter(
            env.bus,
            bill,
            order_id=f"bill-{n}",
            exception=ValueError("card declined"),
            reason="retries_exhausted",
            age=timedelta(hours=2),
        )
        for n in range(2)
    ]
    with console(env, page_size=5).test_client() as client:
        log_in(client)

        # When the operator pages through everything, 5 at a time, by cursor
        seen: list[str] = []
        url = "/records"
        while url:
            page = client.get(url)
            assert page.status_code == 200
            seen += [r.id for r in shipped + billed if f"/records/{r.id}" in page.text]
            nxt = page.text.split('rel="next" href="', 1)
            url = nxt[1].split('"', 1)[0].replace("&amp;", "&") if len(nxt) > 1 else ""
        # Then every record was shown once
        assert sorted(seen) == sorted(r.id for r in shipped + billed)

        # And each filter narrows the list
        def shown(**query: str) -> set[str]:
            text = client.get("/records", query_string=query).text
            return {r.id for r in shipped + billed if f"/records/{r.id}" in text}

        assert shown(handler=bill) == {r.id for r in billed}
        assert shown(exception_type="ValueError") == {r.id for r in billed}
        assert shown(reason="retries_exhausted") == {r.id for r in billed}
        assert shown(event_type="it.order.placed", text="bill-1") == {billed[1].id}
        assert shown(text="card DECLINED") == {r.id for r in billed}
        assert shown(handler=ship, since="1h", text="ship-3") == {shipped[3].id}
        assert shown(until="1h") == {r.id for r in billed}
        assert "No dead letter matches" in client.get("/records?text=nothing-like-it").text
        # And a filter that means nothing is named
        bad = client.get("/records?since=yesterday-ish")
        assert bad.status_code == 400 and "since: &#39;yesterday-ish&#39;" in bad.text


def test_actions_need_csrf_and_are_logged_with_the_user(
    env: Env, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="eventbus.console")
    handler = subscribe(env, "ship")
    env.declare_handler_queue()
    env.bus.dead_letter_store.declare()
    edited, replayed, purged = (
        dead_letter(env.bus, handler, order_id=f"o-{n}", quantity=500) for n in range(3)
    )
    log_in(client)

    # A replay POSTed without its CSRF token is refused, and nothing is sent
    refused = client.post(f"/records/{replayed.id}/replay")
    assert refused.status_code == 400 and "CSRF" in refused.text
    assert env.queue_length() == 0 and len(env.bus.dead_letters) == 3

    # Edit with an invalid value: the field is named, nothing is sent, the record stays
    page = f"/records/{edited.id}"
    response = post(
        client, f"/records/{edited.id}/edit", page, data='{"order_id": "o-0", "quantity": -1}'
    )
    assert response.status_code == 422
    assert "<code>quantity</code>: Input should be greater than or equal to 1" in response.text
    assert env.queue_length() == 0 and len(env.bus.dead_letters) == 3
    response = post(client, f"/records/{edited.id}/edit", page, data="{not json")
    assert response.status_code == 422 and "not valid JSON" in response.text

    # Fixed: replayed with the corrected data, the record leaves the queue
    response = post(
        client, f"/records/{edited.id}/edit", page, data='{"order_id": "o-0", "quantity": 5}'
    )
    assert response.status_code == 302
    wait_for(lambda: env.queue_length() == 1, message="the edited event on the handler queue")
    assert edited.id not in {r.id for r in env.bus.dead_letters}

    # Replay as it is
    response = post(client, f"/records/{replayed.id}/replay", f"/records/{replayed.id}")
    assert response.status_code == 302
    assert "Replayed" in client.get(response.headers["Location"]).text
    wait_for(lambda: env.queue_length() == 2, message="the replayed event on the handler queue")

    # Purge asks first, then deletes without replaying
    confirm = client.get(f"/records/{purged.id}/purge")
    assert confirm.status_code == 200 and "Yes, purge it" in confirm.text
    assert len(env.bus.dead_letters) == 1
    response = post(client, f"/records/{purged.id}/purge", f"/records/{purged.id}/purge")
    assert response.status_code == 302
    assert len(env.bus.dead_letters) == 0 and env.queue_length() == 2
    assert client.get(f"/records/{purged.id}").status_code == 404

    # Every action is logged with who did it
    actions = [r.getMessage() for r in caplog.records if f"user={USER} " in r.getMessage()]
    assert any(f"replayed dead letter {edited.id} with edited data" in m for m in actions)
    assert any(f"replayed dead letter {replayed.id} (event" in m for m in actions)
    assert any(f"purged dead letter {purged.id}" in m for m in actions)
    assert not any(PASSWORD in r.getMessage() for r in caplog.records)


def test_group_replay_counts_first_then_replays(env: Env, client: FlaskClient) -> None:
    ship, bill = subscribe(env, "ship"), subscribe(env, "bill")
    env.declare_handler_queue()
    env.bus.dead_letter_store.declare()
    for n in range(4):
        dead_letter(env.bus, ship, order_id=f"s-{n}")
    other = dead_letter(env.bus, bill, order_id="b-0", exception=ValueError("no"))
    log_in(client)
    group = {
        "handler": ship,
        "exception_type": "eventbus.errors.PermanentHandlerError",
        "reason": "permanent_error",
    }

    # The dry run counts, and changes nothing
    dry = client.get("/groups/replay", query_string=group)
    assert dry.status_code == 200 and 'id="would-replay">4<' in dry.text
    assert len(env.bus.dead_letters) == 5

    # Confirmed, the group is replayed in the background, its progress on a page
    response = client.post(
        "/groups/replay", data={**group, "expected": "4", "csrf_token": csrf_token(dry.text)}
    )
    assert response.status_code == 302
    job_page = response.headers["Location"]
    done = wait_for(
        lambda: "Done: replayed 4" in (text := client.get(job_page).text) and text,
        message="the group replay to finish",
    )
    assert "of 4 counted" in done
    assert [r.id for r in env.bus.dead_letters] == [other.id]
    wait_for(lambda: env.queue_length() == 4, message="four replayed events on the handler queue")


def test_overview_counts(env: Env, client: FlaskClient) -> None:
    handler = subscribe(env, "ship")
    env.declare_handler_queue()
    env.bus.dead_letter_store.declare()
    for n in range(2):
        dead_letter(env.bus, handler, order_id=f"o-{n}")
    dead_letter(env.bus, handler, order_id="old", age=timedelta(hours=3))
    log_in(client)
    page = client.get("/")
    assert page.status_code == 200
    assert 'id="dlq-depth">3<' in page.text
    assert f'<td>{env.queue}</td><td class="num">0</td>' in page.text
    assert f'{handler}</a></td><td class="num">2</td>' in page.text


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_an_unreadable_queue_is_an_error_never_empty(kind: str) -> None:
    # Given a bus whose broker does not answer, its URL carrying a password
    url = {
        "redis": "redis://:s3cret-pass@127.0.0.1:1/0",
        "rabbitmq": "amqp://guest:s3cret-pass@127.0.0.1:1//",
    }[kind]
    app = make_app(url)
    bus = fail_fast(EventBus(app, default_queue="it.console.unreadable"))
    console_app = create_app(bus, credentials=Credentials(user=USER, password=PASSWORD))
    with console_app.test_client() as client:
        log_in(client)
        for path in ("/", "/groups", "/records", "/records/0123456789abcdef"):
            page = client.get(path)
            # Then each page says the queue could not be read, and never shows the password
            assert page.status_code == 503, (path, page.text)
            assert "could not be read" in page.text and "connection refused" in page.text
            assert "No dead letters" not in page.text and "s3cret-pass" not in page.text
    app.close()


def test_records_held_by_another_reader_are_not_shown_as_absent(
    env: Env, client: FlaskClient
) -> None:
    # Given three dead letters, and another reader in the middle of a listing
    handler = subscribe(env, "ship")
    env.bus.dead_letter_store.declare()
    records = [dead_letter(env.bus, handler, order_id=f"o-{n}") for n in range(3)]
    log_in(client)
    env.app.conf.eventbus_dlq_browse_wait = 0.5  # (the wait for the other reader's turn)
    other = iter(env.bus.dead_letter_store.records())
    next(other)
    try:
        page = client.get("/records")
    finally:
        other.close()  # type: ignore[attr-defined]
    shown = [r.id for r in records if f"/records/{r.id}" in page.text]
    if env.kind == "rabbitmq":
        # Then on RabbitMQ (a browse holds what it passed) the page says the queue
        # could not be read while the other reader held it: not "no dead letters"
        assert page.status_code == 503
        assert "another reader" in page.text and "No dead letters" not in page.text
    else:
        # On Redis a listing holds nothing: every record is shown, and no warning
        assert page.status_code == 200
        assert shown == [r.id for r in records] and 'id="incomplete"' not in page.text
    # And once the other reader is done, all are there again
    page = client.get("/records")
    assert 'id="incomplete"' not in page.text
    assert all(f"/records/{r.id}" in page.text for r in records)


def test_the_depth_is_unknown_not_an_error_while_a_reader_holds_the_queue(
    rabbitmq_env: Env,
) -> None:
    # Given a console that read its snapshot of three dead letters on RabbitMQ,
    # then another reader in the middle of a listing (it holds what it passed,
    # as the console's own read in the background does): the queue's depth
    # cannot be counted meanwhile (count() raises DeadLetterQueueBusy)
    env = rabbitmq_env
    handler = subscribe(env, "ship")
    env.bus.dead_letter_store.declare()
    records = [dead_letter(env.bus, handler, order_id=f"o-{n}") for n in range(3)]
    app = create_app(env.bus, credentials=Credentials(user=USER, password=PASSWORD), max_age=3600)
    with app.test_client() as client:
        log_in(client)
        assert "The queue holds 3 message(s) now" in " ".join(client.get("/groups").text.split())
        env.app.conf.eventbus_dlq_browse_wait = 0.5
        other = iter(env.bus.dead_letter_store.records())
        next(other)
        try:
            # When the list pages are shown
            pages = {path: client.get(path) for path in ("/", "/groups", "/records")}
        finally:
            other.close()  # type: ignore[attr-defined]
    # Then each shows the snapshot's records, the depth unknown: not an error page
    for path, page in pages.items():
        text = " ".join(page.text.split())
        assert page.status_code == 200, (path, page.status_code, text[text.find("<main") :][:300])
        assert "could not be read" not in text and "message(s) now" not in text, path
    assert 'id="dlq-depth">?<' in pages["/"].text
    assert all(f"/records/{r.id}" in pages["/records"].text for r in records)
