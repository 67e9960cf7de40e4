"""The console in a real browser: Debian's headless Chromium, driven by Playwright, on both brokers.

A real worker dead-letters two orders; the operator logs in, sees their
group, opens a record, edits its data with an invalid value and sees the
field error, fixes it and replays it, and sees the handler run and the record
leave the queue; then purges the other, after confirming. The console is
served by waitress, as ``eventbus console`` serves it.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``; never
``playwright install``): skipped without it, failed when CI is set. With
``EVENTBUS_CONSOLE_SCREENSHOTS=1`` (on Redis) it saves each page to
``docs/console-*.png``, the README's screenshots.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventbus import Envelope, PermanentHandlerError
from eventbus.console import Credentials, create_app

from .conftest import Env
from .console_support import PASSWORD, USER
from .helpers import OrderPlaced, Recorder, wait_for

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[2] / "docs"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LIMIT = 100  #: the handler refuses orders of more than this


def _need_browser() -> Any:
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        reason = f"playwright is not installed: {exc}"
    if reason is None and not shutil.which(CHROMIUM):
        reason = f"{CHROMIUM} not found: apt-get install chromium"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the browser test: {reason}")
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture
def served(env: Env) -> Iterator[str]:
    """The console of env's bus, served by waitress on a free loopback port: its base URL."""
    import waitress

    app = create_app(env.bus, credentials=Credentials(user=USER, password=PASSWORD), max_age=0)
    server: Any = waitress.create_server(app, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, name="console-under-test", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        server.task_dispatcher.shutdown()
        thread.join(timeout=5)


def test_log_in_edit_fix_replay_and_purge(env: Env, served: str) -> None:
    sync_playwright = _need_browser()
    shots = os.environ.get("EVENTBUS_CONSOLE_SCREENSHOTS") == "1" and env.kind == "redis"

    # Given a handler that refuses large orders, and a real worker that dead-letters two
    handled = Recorder()
    handler = env.name("reserve_stock")

    def reserve_stock(envelope: Envelope[OrderPlaced]) -> None:
        if envelope.data.quantity > LIMIT:
            raise PermanentHandlerError(
                f"order {envelope.data.order_id}: {envelope.data.quantity} is over the "
                f"stock limit of {LIMIT}"
            )
        handled.record(handler, envelope)

    env.bus.subscribe(OrderPlaced, handler=reserve_stock, name=handler)
    env.start_worker()
    env.bus.publish(OrderPlaced(order_id="o-edit", quantity=500))
    env.bus.publish(OrderPlaced(order_id="o-purge", quantity=700))
    wait_for(lambda: len(env.bus.dead_letters) == 2, message="two dead letters")
    edit_id, purge_id = (
        r.id for r in sorted(env.bus.dead_letters, key=lambda r: r.envelope["data"]["order_id"])
    )

    def shot(page: Any, name: str) -> None:
        if shots:
            page.screenshot(path=str(DOCS / f"console-{name}.png"), full_page=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(10_000)

            # When the operator logs in
            page.goto(served + "/")
            assert "/login" in page.url
            if shots:
                shot(page, "login")
            page.fill("input[name=user]", USER)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#dlq-depth")
            assert page.inner_text("#dlq-depth") == "2"
            shot(page, "overview")

            # Then the group is on the groups page
            page.click("nav >> text=Groups")
            row = page.locator("table.groups tbody tr", has_text=handler)
            assert row.count() == 1 and "PermanentHandlerError" in row.inner_text()
            shot(page, "groups")

            # And its records, one of which they open
            row.locator("td.num a").click()
            page.wait_for_selector("table.records")
            assert page.locator("table.records tbody tr").count() == 2
            shot(page, "records")
            page.locator("table.records tbody tr", has_text="o-edit").locator("a").click()
            page.wait_for_selector("#data")
            assert "Traceback" in page.content()
            shot(page, "record")

            # When they edit the data with an invalid value: the field error, nothing sent
            page.fill("#data", '{"order_id": "o-edit", "quantity": -1}')
            page.click("#edit-replay")
            errors = page.wait_for_selector(".field-errors")
            assert "quantity" in errors.inner_text() and "greater than or equal to 1" in (
                errors.inner_text()
            )
            shot(page, "edit-error")
            assert handled.count() == 0 and len(env.bus.dead_letters) == 2

            # And fix it and replay: the handler runs, the record leaves the queue
            page.fill("#data", '{"order_id": "o-edit", "quantity": 5}')
            page.click("#edit-replay")
            assert "Replayed" in page.inner_text(".flash")
            call = wait_for(lambda: handled.calls(), message="the handler to run the fix")[0]
            assert (call.envelope.data.order_id, call.envelope.data.quantity) == ("o-edit", 5)
            wait_for(
                lambda: edit_id not in {r.id for r in env.bus.dead_letters},
                message="the replayed record to leave the queue",
            )
            page.goto(served + "/records")
            assert page.locator("table.records tbody tr").count() == 1

            # Then they purge the other, after confirming
            page.locator("table.records tbody tr", has_text="o-purge").locator("a").click()
            page.click("#purge")
            page.wait_for_selector("#confirm-purge")
            shot(page, "purge")
            page.click("#confirm-purge")
            assert "Purged" in page.inner_text(".flash")
            assert purge_id not in {r.id for r in env.bus.dead_letters}
            assert len(env.bus.dead_letters) == 0
            assert handled.count() == 1
        finally:
            browser.close()
