"""py-amqp's reading of message headers, made to survive headers nested too deep.

py-amqp decodes a message's header table recursively
(``amqp.serialization._read_item``, one Python frame per level of nesting).
Headers nested deeper than the recursion limit allows (about 900 levels; one
level is 5 bytes, so a 15 KB header does it) raise ``RecursionError`` from
``GenericContent._load_properties``, out of ``drain_events``: Celery takes it
for an unrecoverable error and stops the worker, and RabbitMQ redelivers the
message to the next worker, which stops too.

:func:`guard_deep_headers` wraps ``GenericContent._load_properties``: such a
message gets, instead of the properties it could not read, those of a stand-in
(:mod:`eventbus.celery.refused`, content type nothing decodes), and arrives
with its body; eventbus's worker dead-letters it ("undecodable") and acks it.
Every other message is read as py-amqp reads it. Installed once per process,
by an EventBus worker's consumer and by every read of the dead-letter queue
(:mod:`eventbus.celery.deadletter.amqp`: such a message is an undecodable record
there). The method and its signature are checked once (:mod:`.compat`,
feature ``deep_headers_guard``, a guarantee): a worker on RabbitMQ whose
py-amqp lacks it refuses to start (:class:`~eventbus.errors.IncompatibleDependency`);
elsewhere (a browse of the dead-letter queue) py-amqp is left as it is.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from eventbus.celery.internals.compat import problems
from eventbus.celery.refused import CONTENT_TYPE, REASON_HEADER, WHY_HEADER

__all__ = ["guard_deep_headers"]

logger = logging.getLogger(__name__)

#: What the stand-in says of the message (its dead letter shows it).
WHY_DEEP = "a message whose headers nest deeper than py-amqp can decode"


def guard_deep_headers() -> bool:
    """Install the guard (once); False if py-amqp moved what it wraps."""
    try:
        from amqp.serialization import GenericContent  # type: ignore[import-untyped]
    except ImportError:  # no py-amqp: no RabbitMQ transport to guard
        return False
    if problems("deep_headers_guard"):
        return False  # (a worker on RabbitMQ refused to start already)
    load = GenericContent._load_properties
    if getattr(load, "eventbus_guarded", False):
        return True

    @functools.wraps(load)
    def load_properties(self: Any, class_id: int, buf: Any, offset: int) -> Any:
        try:
            return load(self, class_id, buf, offset)
        except RecursionError:
            logger.warning("a message's headers nest too deep to decode: taken as a stand-in")
            self.properties = {
                "content_type": CONTENT_TYPE,
                "application_headers": {REASON_HEADER: "undecodable", WHY_HEADER: WHY_DEEP},
            }
            return offset

    load_properties.eventbus_guarded = True  # type: ignore[attr-defined]
    GenericContent._load_properties = load_properties
    return True
