"""Classic or quorum queues on RabbitMQ: the ``eventbus_queue_type`` setting.

What upstream does (Celery 5.7, kombu 5.7). Celery supports RabbitMQ quorum
queues: a queue declared with ``x-queue-type: quorum`` (``task_default_queue_type``
for Celery's default queue) is detected by the worker
(``worker_detect_quorum_queues``, on by default), which then asks for a
per-consumer prefetch instead of global QoS (quorum queues have none) and adds
its ``DelayedDelivery`` step: 28 topic exchanges and quorum queues
``celery_delayed_0`` ... ``celery_delayed_27`` (``x-message-ttl`` of 2**level
seconds, ``x-dead-letter-strategy: at-least-once``), bound level to level and
to the exchange ``celery_delayed_delivery``, which the step binds to every
queue the worker knows (``#.<routing key>``). A task sent with a countdown
while the app knows a quorum queue goes to ``celery_delayed_27`` with the
countdown's bits before its routing key (``Celery.send_task``): RabbitMQ holds
it, not the worker.

Where it goes wrong, and what this module (with :class:`~eventbus.EventBus`)
does about it:

* Native delayed delivery needs a topic (or fanout) exchange: on a direct one
  Celery warns and the worker holds the countdown in memory, as with classic
  queues, and with a fixed prefetch a few such retries stop the worker. A
  quorum handler queue gets a topic exchange (named after it, as before).
* The step binds ``#.<name>``: a queue named ``orders`` also receives the
  delayed messages of a queue named ``eu.orders``. :func:`check_queue_names`
  refuses such a pair of handler queues.
* A countdown under one second raises ``ValueError`` in ``send_task``
  (``int(countdown)`` is 0): :func:`whole_seconds` rounds a deferral up.
* A retry carried the ``x-death`` headers of the delay queues it went
  through, and RabbitMQ before 4.0.1 took the next pass through the same
  queue for a dead-letter cycle and dropped the message (celery/celery#9867).
  Celery 5.7 strips them (``Context.as_execution_options``; celery/celery#10095).
  ``tests/integration/test_quorum_queues.py`` drives 1,000 events through two
  retries each to show that none is lost.
* A message that kills its worker process every time is re-queued forever on
  a classic queue. A quorum handler queue has ``x-delivery-limit``
  (``eventbus_delivery_limit``): past it RabbitMQ dead-letters the message to
  the DLQ (reason ``delivery_limit`` in its record), at least once
  (``x-dead-letter-strategy: at-least-once`` with ``x-overflow: reject-publish``,
  RabbitMQ 3.10+), not at most once.
* RabbitMQ 4.0 gives every quorum queue a delivery limit of 20, and before 4.3
  every return of a message counts, a channel closed with the message
  unacknowledged too: that is how eventbus browses the DLQ, and the DLQ
  dead-letters nowhere. The quorum DLQ is declared with a limit no browse
  reaches (:data:`DEAD_LETTER_QUEUE_DELIVERY_LIMIT`).
* At-least-once dead-lettering keeps a dead letter it cannot route in its
  source queue and tries again, and Celery declares its delay queues that way:
  a retry whose handler queue was deleted while it waited stays in a delay
  queue, and from about 32 of them every later retry of that queue waits
  behind them (measured on RabbitMQ 3.10.8). Nothing here can route it: the
  README says when a handler queue may be deleted.
* RabbitMQ cannot change a queue's type or arguments: declaring a classic
  queue again as a quorum queue fails with ``PRECONDITION_FAILED``, which
  closes the channel. :func:`declaration_mismatch` turns it into an error that
  names the queue, the argument and the setting behind it.

What it leaves alone: Celery's own default queue (``task_default_queue_type``,
``task_default_exchange_type``, for the app's other tasks), and the delay
topology, which Celery's worker step declares and binds.

Requirements: RabbitMQ 3.10 or later (message TTL on quorum queues, which the
delay queues need, and at-least-once dead-lettering both came with 3.10;
quorum queues with 3.8), with its feature flags enabled (tested on 3.10.8 with
``quorum_queue`` and ``stream_queue`` on), and Celery 5.5 or later (eventbus
needs 5.7).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, cast

from kombu.entity import Exchange, Queue

from eventbus.errors import ConfigurationError

__all__ = [
    "DEAD_LETTER_QUEUE_DELIVERY_LIMIT",
    "DEFAULT_DELIVERY_LIMIT",
    "DEFAULT_QUEUE_TYPE",
    "QueueType",
    "check_queue_names",
    "check_quorum_setup",
    "dead_letter_queue_arguments",
    "declaration_mismatch",
    "delivery_limit",
    "handler_queue",
    "queue_type",
    "whole_seconds",
]

QueueType = Literal["classic", "quorum"]

DEFAULT_QUEUE_TYPE: QueueType = "classic"  #: ``eventbus_queue_type`` when unset
#: ``eventbus_delivery_limit`` when unset: how many times a quorum handler queue
#: gives a message back to a worker after it came back unacknowledged (its worker
#: process died, a ``Reject(requeue=True)``), before it dead-letters it. Retries
#: are new messages and do not count. Limit N: N + 1 deliveries in all.
DEFAULT_DELIVERY_LIMIT = 5
#: The quorum DLQ's delivery limit: never reached by browsing it (each listing
#: returns every record once), whatever RabbitMQ's default (20 from 4.0).
DEAD_LETTER_QUEUE_DELIVERY_LIMIT = 2**31 - 1

QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}

#: Setting behind each argument of a handler queue's declaration.
_SETTING_OF = {
    "x-queue-type": "eventbus_queue_type",
    "x-overflow": "eventbus_queue_type",
    "x-dead-letter-strategy": "eventbus_queue_type",
    "type": "eventbus_queue_type",  # an exchange's type: topic on quorum, direct on classic
    "x-delivery-limit": "eventbus_delivery_limit",
    "x-dead-letter-exchange": "eventbus_broker_dead_lettering",
    "x-dead-letter-routing-key": "eventbus_broker_dead_lettering",
}

_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']*)'"
    r" in vhost '[^']*': (?P<detail>.*)"
)


def queue_type(conf: Mapping[str, Any]) -> QueueType:
    """``eventbus_queue_type``: ``"classic"`` (the default) or ``"quorum"``."""
    value = conf.get("eventbus_queue_type")
    if value in (None, ""):
        return DEFAULT_QUEUE_TYPE
    if value not in ("classic", "quorum"):
        raise ConfigurationError(
            f"eventbus_queue_type must be 'classic' or 'quorum', not {value!r} "
            "(EVENTBUS_QUEUE_TYPE with the repository's celeryconfig)"
        )
    return cast(QueueType, value)


def delivery_limit(conf: Mapping[str, Any]) -> int:
    """``eventbus_delivery_limit``: re-deliveries a quorum handler queue allows (default 5)."""
    value = conf.get("eventbus_delivery_limit")
    if value in (None, ""):
        return DEFAULT_DELIVERY_LIMIT
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = -1
    if limit < 0 or isinstance(value, bool):
        raise ConfigurationError(
            f"eventbus_delivery_limit must be a whole number >= 0, not {value!r}"
        )
    return limit


def check_quorum_setup(
    conf: Mapping[str, Any], *, driver: str, broker_dead_lettering: bool
) -> None:
    """Refuse a quorum setting the app cannot honour (a :class:`ConfigurationError`).

    Quorum queues are RabbitMQ's: on Redis (or any other transport) the
    setting is refused, not ignored, because it promises replicated queues
    and a delivery limit that nothing would provide. A quorum handler queue
    dead-letters past its delivery limit to the DLQ: without the dead-letter
    exchange it would drop the message. And the worker must ask for a
    per-consumer prefetch (Celery's ``worker_detect_quorum_queues``).
    """
    if queue_type(conf) != "quorum":
        return
    if driver != "amqp":
        raise ConfigurationError(
            f"eventbus_queue_type is 'quorum', but the broker is {driver!r}: quorum queues "
            "are RabbitMQ's. Set eventbus_queue_type to 'classic' (or unset it, or "
            "EVENTBUS_QUEUE_TYPE) on this broker"
        )
    if not broker_dead_lettering:
        raise ConfigurationError(
            "eventbus_queue_type is 'quorum' but eventbus_broker_dead_lettering is off: a "
            "quorum handler queue dead-letters a message past eventbus_delivery_limit to the "
            "DLQ, and without a dead-letter exchange RabbitMQ would drop it. Turn "
            "eventbus_broker_dead_lettering on (EVENTBUS_BROKER_DLX=1)"
        )
    if not conf.get("worker_detect_quorum_queues", True):
        raise ConfigurationError(
            "eventbus_queue_type is 'quorum' but worker_detect_quorum_queues is off: the "
            "worker would ask for a global prefetch, which quorum queues do not have, and "
            "would not set up Celery's native delayed delivery for retries. Leave "
            "worker_detect_quorum_queues at its default (True)"
        )
    delivery_limit(conf)  # a bad value fails here, not at the first declaration


def handler_queue(name: str, *, conf: Mapping[str, Any], dead_letter_queue: str | None) -> Queue:
    """How a handler queue is declared on RabbitMQ.

    Classic: a direct exchange of its name; with ``dead_letter_queue``, RabbitMQ's
    dead-letter exchange to it. Quorum: a topic exchange of its name (Celery's
    native delayed delivery routes through it), the delivery limit, and
    at-least-once dead-lettering to ``dead_letter_queue`` (required on quorum).
    """
    arguments: dict[str, Any] = {}
    if dead_letter_queue is not None:
        # The DLQ's exchange is named after it and binds it by its name.
        arguments = {
            "x-dead-letter-exchange": dead_letter_queue,
            "x-dead-letter-routing-key": dead_letter_queue,
        }
    kind = "direct"
    if queue_type(conf) == "quorum":
        assert dead_letter_queue is not None, "check_quorum_setup: quorum needs the DLX"
        kind = "topic"
        arguments.update(
            QUORUM,
            **{
                "x-delivery-limit": delivery_limit(conf),
                # At-least-once: the queue keeps a dead letter until the DLQ
                # confirmed it (RabbitMQ 3.10+; needs reject-publish overflow).
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
    return Queue(
        name,
        Exchange(name, type=kind, durable=True),
        routing_key=name,
        durable=True,
        queue_arguments=arguments or None,
    )


def dead_letter_queue_arguments(conf: Mapping[str, Any]) -> dict[str, Any] | None:
    """The DLQ's queue arguments on RabbitMQ: none on classic, quorum with no delivery limit."""
    if queue_type(conf) != "quorum":
        return None
    return {**QUORUM, "x-delivery-limit": DEAD_LETTER_QUEUE_DELIVERY_LIMIT}


def check_queue_names(names: Iterable[str]) -> None:
    """Refuse two quorum handler queues where one name ends with ``.`` and the other.

    Celery binds each queue to its delayed-delivery exchange as ``#.<name>``, a
    topic pattern that also matches ``<anything>.<name>``: a retry waiting for
    queue ``eu.orders`` would also be delivered to queue ``orders``.
    """
    ordered = sorted(set(names))
    for name in ordered:
        for other in ordered:
            if other != name and other.endswith("." + name):
                raise ConfigurationError(
                    f"handler queues {name!r} and {other!r} cannot both be quorum queues: "
                    f"Celery's native delayed delivery binds {name!r} as '#.{name}', which "
                    f"also matches {other!r}, so {name!r} would also get {other!r}'s retries. "
                    "Rename one of them"
                )


def whole_seconds(countdown: float, conf: Mapping[str, Any]) -> float:
    """A countdown Celery's native delayed delivery can send: whole seconds, at least 1.

    Only on quorum queues; classic ones take any countdown (the worker holds it).
    """
    if countdown <= 0 or queue_type(conf) != "quorum":
        return countdown
    return float(max(1, math.ceil(countdown)))


def declaration_mismatch(exc: BaseException, conf: Mapping[str, Any]) -> ConfigurationError | None:
    """The error to raise for a queue or exchange declared before with other arguments.

    RabbitMQ answers ``PRECONDITION_FAILED - inequivalent arg ...`` (406) and
    closes the channel; retrying cannot help. None for any other error.
    """
    for error in _chain(exc):
        text = str(getattr(error, "reply_text", None) or error)
        found = _INEQUIVALENT.search(text)
        if found is None:
            continue
        arg, kind, name, detail = found.group("arg", "kind", "name", "detail")
        setting = _SETTING_OF.get(arg)
        behind = f"; {setting} decides it" if setting else ""
        what = (
            f"the queue {name!r} (and its exchange)"
            if kind == "queue"
            else f"the exchange {name!r} (and its queue)"
        )
        return ConfigurationError(
            f"the {kind} {name!r} exists on the broker with other arguments than eventbus "
            f"declares: {arg!r} {detail.strip()}{behind} (eventbus_queue_type is "
            f"{queue_type(conf)!r}). RabbitMQ cannot change a queue's type or arguments "
            f"in place: move its messages away, delete {what} and let eventbus declare it "
            "again, or set the setting back to what the broker has"
        )
    return None


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
