"""The Celery app that test_flower.py runs under a real Flower and a real worker.

``celery -A tests.integration.flower_app worker|flower`` and the test process
import this module with the same environment, so all three agree on:

``EVENTBUS_FLOWER_TEST_BROKER_URL``  the Redis broker (a database of its own)
``EVENTBUS_FLOWER_TEST_QUEUE``       the handler queue (unique per test run)
``EVENTBUS_FLOWER_TEST_DLQ``         the dead-letter queue (unique per test run)

The ledger handler fails until the Redis key :data:`FIXED_KEY` exists (the
"fix" the test deploys across processes); then it counts each run in
:data:`HANDLED_KEY`. The receipt handler always fails permanently.
"""

from __future__ import annotations

import os
import threading

import redis

from eventbus import Envelope, Event, EventBus, PermanentHandlerError
from tests.support import make_app

BROKER_URL = os.environ.get("EVENTBUS_FLOWER_TEST_BROKER_URL", "redis://127.0.0.1:6379/10")
QUEUE = os.environ.get("EVENTBUS_FLOWER_TEST_QUEUE", "it.flower")
DEAD_LETTER_QUEUE = os.environ.get("EVENTBUS_FLOWER_TEST_DLQ", f"{QUEUE}.dlq")

FIXED_KEY = f"{QUEUE}:fixed"  #: exists once the ledger handler is "fixed"
HANDLED_KEY = f"{QUEUE}:handled"  #: successful ledger runs

LEDGER_HANDLER = "it.flower.post_to_ledger"
RECEIPT_HANDLER = "it.flower.send_receipt"

app = make_app(
    BROKER_URL,
    default_queue=QUEUE,
    # What Flower needs: the worker's task events and the senders' task-sent events,
    # and remote control for its worker pages.
    worker_send_task_events=True,
    worker_enable_remote_control=True,
)
bus = EventBus(app, default_queue=QUEUE, dead_letter_queue=DEAD_LETTER_QUEUE)


class PaymentCaptured(Event):
    event_type = "it.flower.payment_captured"

    payment_id: str
    amount: int


class LedgerUnavailable(ConnectionError):
    """The ledger did not answer: worth a retry."""


_client: redis.Redis | None = None
_client_lock = threading.Lock()


def client() -> redis.Redis:
    """A Redis client on the broker's database (the worker's threads share it)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = redis.Redis.from_url(BROKER_URL, socket_timeout=5)
        return _client


@bus.subscribe(
    PaymentCaptured,
    name=LEDGER_HANDLER,
    retry_on=(ConnectionError,),
    max_retries=1,
    retry_backoff=1,
    retry_jitter=False,
)
def post_to_ledger(envelope: Envelope[PaymentCaptured]) -> None:
    """Post the payment to the ledger; fails (retryable) until the fix is deployed."""
    if not client().exists(FIXED_KEY):
        raise LedgerUnavailable(f"ledger timed out posting payment {envelope.data.payment_id}")
    client().incr(HANDLED_KEY)


@bus.subscribe(PaymentCaptured, name=RECEIPT_HANDLER)
def send_receipt(envelope: Envelope[PaymentCaptured]) -> None:
    """Mail a receipt; there is no template, so it fails permanently."""
    raise PermanentHandlerError(f"no receipt template for amount {envelope.data.amount}")
