"""The DLQ benchmark's app: one bus, one no-op handler, one dead-letter queue.

``eventbus -A bench.dlq_app dlq ...`` loads ``bus`` from here; it is built on
first access from the environment:

``BENCH_BROKER_URL``          broker (default ``redis://127.0.0.1:6379/13``)
``BENCH_DLQ``                 the dead-letter queue (default ``bench.dlq.dlq``)
``BENCH_DLQ_HANDLER_QUEUE``   the handler's queue (default ``bench.dlq.handler``)
``BENCH_RUN``                 optional: per-run event and control exchanges
                              (``bench.<run>.ev`` ...), as in ``bench.apps``

``bench/bench_dlq.py`` calls :func:`build` directly, with the same values.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.settings import make_app
from eventbus import DeadLetter, Envelope, Event, EventBus, create_event

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/13"
HANDLER = "bench.dlq.handler"  #: the handler name every record names
EVENT_TYPE = "bench.dlq.order_placed"

#: A few failure groups, so ``groups()`` has more than one line to count.
EXCEPTIONS = (
    ("ConnectionError", "connection refused by payments.internal:443"),
    ("TimeoutError", "payment gateway did not answer within 10.0s"),
    ("bench.errors.GatewayError", "gateway returned 503 Service Unavailable"),
)
TRACEBACK = """Traceback (most recent call last):
  File "/srv/app/.venv/lib/python3.12/site-packages/celery/app/trace.py", line 453, in trace_task
    R = retval = fun(*args, **kwargs)
  File "/srv/app/.venv/lib/python3.12/site-packages/eventbus/celery_bus.py", line 166, in run
    call(Envelope.from_wire(envelope, event_registry))
  File "/srv/app/orders/handlers.py", line 42, in charge_payment
    response = gateway.charge(order.id, amount=order.total, currency=order.currency)
  File "/srv/app/payments/gateway.py", line 118, in charge
    raise {exc}("{message}")
{exc}: {message}
"""


class OrderPlaced(Event):
    """A realistic small event: ids, a few fields, a list of lines."""

    event_type = EVENT_TYPE

    order_id: str
    customer_id: str
    total: float
    currency: str = "EUR"
    lines: list[dict[str, Any]] = []
    note: str | None = None


@dataclass
class DlqApp:
    app: Any
    bus: EventBus
    dlq: str
    handler_queue: str


def exchange_names(run: str) -> dict[str, str]:
    return {"event_exchange": f"bench.{run}.ev", "control_exchange": f"bench.{run}.ctl"}


def created_exchanges(run: str) -> list[str]:
    names = exchange_names(run)
    ctl = names["control_exchange"]
    return [names["event_exchange"], f"{ctl}.pidbox", f"reply.{ctl}.pidbox"]


def build(broker_url: str, dlq: str, handler_queue: str, run: str | None = None) -> DlqApp:
    app = make_app("bench-dlq", broker_url, **(exchange_names(run) if run else {}))
    bus = EventBus(app, default_queue=handler_queue, dead_letter_queue=dlq)

    def handler(envelope: Envelope[OrderPlaced]) -> None:
        """No-op: the benchmark runs no worker."""

    bus.subscribe(OrderPlaced, handler=handler, name=HANDLER)
    return DlqApp(app=app, bus=bus, dlq=dlq, handler_queue=handler_queue)


def make_event(i: int) -> OrderPlaced:
    return OrderPlaced(
        order_id=f"ord-{i:08d}",
        customer_id=f"cus-{i % 9973:06d}",
        total=round(19.99 + (i % 500) * 1.37, 2),
        lines=[
            {"sku": f"SKU-{(i * 7 + k) % 1000:04d}", "qty": k + 1, "price": 9.99 + k}
            for k in range(3)
        ],
        note="leave at the door" if i % 3 == 0 else None,
    )


def make_record(i: int, handler_queue: str, base: datetime) -> DeadLetter:
    """Dead letter number ``i``: a unique id and event, one of a few failure groups."""
    envelope = create_event(
        OrderPlaced,
        make_event(i),
        aggregate_id=f"ord-{i:08d}",
        aggregate_type="Order",
        metadata={"tenant": f"t{i % 17}", "source": "checkout"},
    ).to_wire()
    exc, message = EXCEPTIONS[i % len(EXCEPTIONS)]
    return DeadLetter(
        id=uuid.uuid4().hex,
        handler=HANDLER,
        reason="retries_exhausted",
        attempts=6,
        exception_type=exc,
        exception_message=message,
        traceback=TRACEBACK.format(exc=exc, message=message),
        task_id=str(uuid.uuid4()),
        queue=handler_queue,
        worker="celery@orders-worker-3",
        failed_at=base + timedelta(milliseconds=i),
        event_id=envelope["event_id"],
        event_type=envelope["event_type"],
        envelope=envelope,
    )


def base_time() -> datetime:
    return datetime.now(UTC) - timedelta(days=1)


# -- the CLI's entry point -------------------------------------------------------

_from_env: DlqApp | None = None


def from_env() -> DlqApp:
    global _from_env
    if _from_env is None:
        _from_env = build(
            os.environ.get("BENCH_BROKER_URL", DEFAULT_BROKER_URL),
            os.environ.get("BENCH_DLQ", "bench.dlq.dlq"),
            os.environ.get("BENCH_DLQ_HANDLER_QUEUE", "bench.dlq.handler"),
            os.environ.get("BENCH_RUN") or None,
        )
    return _from_env


def __getattr__(name: str) -> Any:
    # ``eventbus -A bench.dlq_app`` resolves ``bus`` here (PEP 562).
    if name == "bus":
        return from_env().bus
    if name == "app":
        return from_env().app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
