"""Which Kafka topic an event goes to: :class:`TopicNaming`.

Three ways, each with an optional ``prefix`` (an environment, a service):

* one topic per event type (the default): ``todo.created`` goes to
  ``<prefix>todo.created``. Consumers subscribe to exactly the events they
  want; one aggregate's events of different types are in different topics,
  so their relative order is not kept (each type's are).
* one topic per aggregate type: every ``Todo`` event goes to ``<prefix>Todo``
  (``default`` takes events without an aggregate type, else they are refused),
  so one aggregate's events keep their order across types.
* one fixed topic for everything.

In every case the record key is the aggregate id (:mod:`eventbus.kafka.records`),
so one aggregate's events in one topic are in one partition, in order.

A topic name is what Kafka allows: 1-249 characters of ``A-Z a-z 0-9 . _ -``,
not ``.`` or ``..``. A configured name that is not raises
:class:`~eventbus.errors.ConfigurationError`; a name made from an event (an
aggregate type with a space) raises :class:`~eventbus.errors.EventValidationError`
at publish, before anything is sent.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from eventbus.errors import ConfigurationError, EventValidationError

if TYPE_CHECKING:
    from eventbus.domain.envelope import Envelope

__all__ = ["MAX_TOPIC_LENGTH", "TopicNaming", "TopicStrategy", "check_topic_name"]

TopicStrategy = Literal["event_type", "aggregate_type", "fixed"]

#: Kafka's limit on a topic name's length.
MAX_TOPIC_LENGTH = 249
_LEGAL = re.compile(r"^[A-Za-z0-9._-]+$")


def check_topic_name(name: str) -> str | None:
    """Why ``name`` is not a legal Kafka topic name, or None when it is."""
    if not isinstance(name, str) or not name:
        return "a topic name must be a non-empty string"
    return _check_name(name)


@functools.lru_cache(maxsize=4096)  # (a publish asks for the same few names again and again)
def _check_name(name: str) -> str | None:
    if len(name) > MAX_TOPIC_LENGTH:
        return f"a topic name has at most {MAX_TOPIC_LENGTH} characters, not {len(name)}"
    if name in (".", ".."):
        return f"{name!r} is not a topic name"
    if not _LEGAL.match(name):
        return f"{name[:60]!r} has characters a topic name cannot have (A-Z a-z 0-9 . _ - only)"
    return None


@dataclass(frozen=True)
class TopicNaming:
    """Maps an envelope to its topic; build it with a classmethod.

    ``TopicNaming.per_event_type(prefix="")`` (the default),
    ``TopicNaming.per_aggregate_type(prefix="", default=None)``,
    ``TopicNaming.fixed(topic)``; or :meth:`parse` for a setting's text.
    """

    by: TopicStrategy = "event_type"
    prefix: str = ""
    #: The fixed topic (``by="fixed"``), or where events without an aggregate
    #: type go (``by="aggregate_type"``; None: such events are refused).
    topic: str | None = None

    def __post_init__(self) -> None:
        if self.by not in ("event_type", "aggregate_type", "fixed"):
            raise ConfigurationError(
                f"Kafka topics are named by 'event_type', 'aggregate_type' or 'fixed', "
                f"not {self.by!r}"
            )
        if not isinstance(self.prefix, str):
            raise ConfigurationError(f"a topic prefix must be a string, got {self.prefix!r}")
        if self.prefix and (why := check_topic_name(self.prefix)) is not None:
            raise ConfigurationError(f"topic prefix {self.prefix!r}: {why}")
        if self.by == "fixed" and self.topic is None:
            raise ConfigurationError("a fixed topic naming needs the topic")
        if self.by == "event_type" and self.topic is not None:
            raise ConfigurationError("topics named by event type take no fixed topic")
        if self.topic is not None and (why := check_topic_name(self.topic)) is not None:
            raise ConfigurationError(f"topic {self.topic!r}: {why}")

    @classmethod
    def per_event_type(cls, prefix: str = "") -> TopicNaming:
        """One topic per event type: ``<prefix><event_type>``."""
        return cls("event_type", prefix)

    @classmethod
    def per_aggregate_type(cls, prefix: str = "", default: str | None = None) -> TopicNaming:
        """One topic per aggregate type: ``<prefix><aggregate_type>``; ``default`` for none."""
        return cls("aggregate_type", prefix, default)

    @classmethod
    def fixed(cls, topic: str) -> TopicNaming:
        """Every event to ``topic``."""
        return cls("fixed", "", topic)

    @classmethod
    def parse(cls, text: str, *, prefix: str = "") -> TopicNaming:
        """A naming from a setting: ``event_type``, ``aggregate_type`` or ``topic:NAME``."""
        value = str(text).strip()
        if value == "event_type":
            return cls.per_event_type(prefix)
        if value == "aggregate_type":
            return cls.per_aggregate_type(prefix)
        if value.startswith("topic:"):
            return cls.fixed(prefix + value[len("topic:") :])
        raise ConfigurationError(
            f"Kafka topic naming {text!r}: use 'event_type', 'aggregate_type' or 'topic:NAME'"
        )

    def topic_for(self, envelope: Envelope[Any]) -> str:
        """The topic this envelope is published to (EventValidationError: no legal one)."""
        if self.by == "fixed":
            assert self.topic is not None
            return self.topic
        if self.by == "event_type":
            return self._checked(self.prefix + envelope.event_type, envelope, "event_type")
        if envelope.aggregate_type is None:
            if self.topic is not None:
                return self.topic
            raise EventValidationError(
                envelope.event_type,
                [
                    {
                        "type": "kafka_topic",
                        "loc": ("aggregate_type",),
                        "msg": "Kafka topics are named by aggregate type, and this event has "
                        "none (give it one, or the naming a default topic)",
                        "input": None,
                    }
                ],
            )
        return self._checked(self.prefix + envelope.aggregate_type, envelope, "aggregate_type")

    def topic_for_type(self, event_type: str) -> str | None:
        """The topic every event of this type goes to, if the naming tells (None: per aggregate).

        For a consumer that subscribes to the topics of the event types it handles.
        """
        if self.by == "fixed":
            return self.topic
        if self.by == "event_type":
            name = self.prefix + event_type
            return name if check_topic_name(name) is None else None
        return None

    def _checked(self, name: str, envelope: Envelope[Any], field: str) -> str:
        why = check_topic_name(name)
        if why is None:
            return name
        raise EventValidationError(
            envelope.event_type,
            [
                {
                    "type": "kafka_topic",
                    "loc": (field,),
                    "msg": f"cannot name a Kafka topic: {why}",
                    "input": None,
                }
            ],
        )
