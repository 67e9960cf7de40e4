"""Shared pieces of the console tests: dead letters written as a worker writes them, a login.

Records are appended through the bus's own store (what a worker does when a
handler fails for good), so that a test sets up dozens of them in
milliseconds; the browser test makes its own with a real worker.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from flask.testing import FlaskClient

from eventbus import EventBus, PermanentHandlerError
from eventbus.deadletter.record import DeadLetter, DeadLetterReason
from eventbus.domain.envelope import create_event
from tests.integration.helpers import OrderPlaced

USER = "operator"
PASSWORD = "correct horse battery staple"
#: Event data an attacker chose: it must reach every page as text, never as markup.
SCRIPT = "<script>document.title='owned'</script>"

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def dead_letter(
    bus: EventBus,
    handler: str,
    *,
    order_id: str = "o-1",
    quantity: int = 1,
    exception: BaseException | None = None,
    reason: DeadLetterReason = "permanent_error",
    age: timedelta = timedelta(0),
    **data: Any,
) -> DeadLetter:
    """Write one dead letter of an OrderPlaced for ``handler`` to the bus's DLQ; return it."""
    envelope = create_event(
        OrderPlaced, {"order_id": order_id, "quantity": quantity, **data}, aggregate_id=order_id
    )
    error = exception or PermanentHandlerError(f"order {order_id} rejected")
    try:
        raise error
    except BaseException as exc:  # for a real traceback
        record = DeadLetter.from_exception(
            exc,
            handler=handler,
            reason=reason,
            attempts=1 if reason == "permanent_error" else 4,
            envelope=envelope.to_wire(),
            task_id=f"task-{order_id}",
            queue="it.queue",
            worker="celery@it-worker",
            failed_at=datetime.now(UTC) - age,
        )
    bus.dead_letter_store.append(record)
    return record


def csrf_token(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def log_in(client: FlaskClient, user: str = USER, password: str = PASSWORD) -> Any:
    page = client.get("/login")
    return client.post(
        "/login",
        data={"user": user, "password": password, "csrf_token": csrf_token(page.text)},
    )


def post(client: FlaskClient, path: str, page: str, **data: str) -> Any:
    """POST ``data`` to ``path`` with the CSRF token of the page at ``page``."""
    token = csrf_token(client.get(page).text)
    return client.post(path, data={**data, "csrf_token": token})
