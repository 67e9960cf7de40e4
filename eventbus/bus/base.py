"""What every bus does: keep subscriptions, build envelopes, count, replay.

:class:`BaseEventBus` is the template; a concrete bus implements
``_attach`` (make a subscription runnable) and ``_dispatch`` (deliver one
envelope to some subscriptions) and provides a dead-letter store.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload

from eventbus.bus.instrumentation import bus_made
from eventbus.deadletter.queue import DeadLetterQueue
from eventbus.deadletter.record import DeadLetter
from eventbus.deadletter.store import DeadLetterStore
from eventbus.domain.envelope import Envelope, check_ids, wrap
from eventbus.domain.events import Event, EventRegistry, EventTypeRef, registry, resolve_event_type
from eventbus.domain.options import HandlerOptions
from eventbus.domain.upcasting import UPCAST_FROM_KEY
from eventbus.errors import EventBusError, PayloadTooLarge, ReplayError, SubscriptionError
from eventbus.guarantees.delivery import Guard
from eventbus.guarantees.ordering import DEFAULT_GAP_TIMEOUT

if TYPE_CHECKING:
    from eventbus.bus.instrumentation import Instrumentation
    from eventbus.guarantees.idempotency import IdempotencyStore
    from eventbus.guarantees.state import State

__all__ = ["BaseEventBus", "Handler", "Subscription"]

#: Default of ``eventbus_claim_lease``: seconds an idempotency claim or an ordered
#: aggregate's turn is held by a delivery that never reports back (its worker
#: died and its message is not redelivered). With a hard time limit the lease
#: is that limit plus 30 s.
DEFAULT_CLAIM_LEASE = 300.0

#: Default of ``eventbus_max_payload_bytes``: the largest envelope (JSON bytes) sent or run.
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024

#: A handler is a callable taking the envelope, or an object with ``handle(envelope)``.
Handler = Callable[[Envelope[Any]], object]
H = TypeVar("H")


@dataclass(eq=False)
class Subscription:
    """One handler and the event types it receives."""

    name: str
    handler: object
    call: Handler
    options: HandlerOptions
    event_types: set[str] = field(default_factory=set)
    task: Any = None  # the Celery task, on the Celery bus
    guard: Guard | None = None  # runs the handler under its idempotency and ordering

    def describe(self) -> dict[str, Any]:
        return {
            "handler": self.name,
            "event_types": sorted(self.event_types),
            **self.options.describe(),
        }


class BaseEventBus(ABC):
    """Subscribe handlers to event types and publish events to them.

    Hooks for subclasses: ``_attach(subscription)``, ``_dispatch(envelope,
    subscriptions)``, ``_emit(envelope, subscriptions)`` (where a published
    envelope goes; by default ``_dispatch`` to its subscriptions),
    ``_resolve_options(given)`` and ``dead_letter_store``.
    """

    def __init__(self, *, event_registry: EventRegistry | None = None) -> None:
        self.event_registry = event_registry or registry
        self._subscriptions: dict[str, Subscription] = {}
        self._by_type: dict[str, tuple[Subscription, ...]] = {}
        self._ordered_types: set[str] = set()  # types with an ordered handler: sequenced
        # Event classes publish found to be events (that depends on the class alone).
        self._event_classes: set[type[Event]] = set()
        self._lock = threading.RLock()
        #: Events published per type, including those that had no subscriber.
        self.published: Counter[str] = Counter()
        #: What observes publishes, replays and handler runs (traces): None, or
        #: set by :func:`eventbus.tracing.instrument` (``bus.instrumentation``).
        self.instrumentation: Instrumentation | None = None
        # Last: an instrumentor of every bus (opentelemetry-instrument) sets it now.
        bus_made(self)

    # -- subscribing -------------------------------------------------------

    @overload
    def subscribe(
        self,
        *event_types: EventTypeRef,
        handler: None = None,
        name: str | None = None,
        **options: Any,
    ) -> Callable[[H], H]: ...

    @overload
    def subscribe(
        self, *event_types: EventTypeRef, handler: H, name: str | None = None, **options: Any
    ) -> H: ...

    def subscribe(
        self,
        *event_types: EventTypeRef,
        handler: Any = None,
        name: str | None = None,
        **options: Any,
    ) -> Any:
        """Subscribe a handler to one or more event types.

        As a decorator::

            @bus.subscribe(TodoCreated, max_retries=3)
            def notify(envelope: Envelope[TodoCreated]) -> None: ...

        or as a call, for an object with a ``handle`` method::

            bus.subscribe("user.registered", handler=AuditLog())

        The handler is returned unchanged, so it stays a plain function you
        can call in a test. Options are those of :class:`HandlerOptions`.
        """
        if not event_types:
            raise SubscriptionError("subscribe() needs at least one event type")
        classes = [resolve_event_type(ref, self.event_registry) for ref in event_types]

        def register(target: H) -> H:
            self._add_subscription(target, classes, name, options)
            return target

        return register(handler) if handler is not None else register

    def _add_subscription(
        self,
        target: object,
        classes: Sequence[type[Event]],
        name: str | None,
        given: Mapping[str, Any],
    ) -> Subscription:
        call = _callable_of(target)
        sub_name = name or _handler_name(target)
        with self._lock:
            options = self._resolve_options(given)
            sub = self._subscriptions.get(sub_name)
            if sub is None:
                sub = Subscription(name=sub_name, handler=target, call=call, options=options)
                sub.guard = self._guard_for(sub)
                self._attach(sub)
                self._subscriptions[sub_name] = sub
            elif sub.handler is not target:
                raise SubscriptionError(
                    f"handler name {sub_name!r} is already taken by {sub.handler!r}; "
                    "pass name=... to tell them apart"
                )
            elif sub.options != options:
                raise SubscriptionError(
                    f"{sub_name!r} is already subscribed with other options; "
                    "subscribe it once with all its event types"
                )
            for cls in classes:
                if cls.event_type not in sub.event_types:
                    sub.event_types.add(cls.event_type)
                    self._by_type[cls.event_type] = (*self._by_type.get(cls.event_type, ()), sub)
                    if options.ordered:
                        self._ordered_types.add(cls.event_type)
        return sub

    def _guard_for(self, sub: Subscription) -> Guard:
        options = sub.options
        lease = (
            options.time_limit + 30.0
            if options.time_limit
            else float(self._setting("claim_lease", DEFAULT_CLAIM_LEASE))
        )
        return Guard(
            handler=sub.name,
            call=sub.call,
            idempotent=options.idempotent,
            ordered=options.ordered,
            state=lambda: self.state,
            gap_timeout=float(self._setting("ordering_gap_timeout", DEFAULT_GAP_TIMEOUT)),
            lease=lease,
            can_wait=self._deliveries_can_wait,
        )

    #: Whether a delivery can wait for its turn (False: handlers run inside publish).
    _deliveries_can_wait = True

    def _setting(self, name: str, default: Any) -> Any:
        """The value of the ``eventbus_<name>`` setting (the Celery bus reads its app's)."""
        return default

    @property
    @abstractmethod
    def state(self) -> State:
        """Where idempotency claims and sequence positions live (``guarantees.state``)."""

    @property
    def idempotency(self) -> IdempotencyStore:
        """The idempotency store: ``bus.idempotency.atomic()`` inside a handler (Redis)."""
        return self.state.idempotency

    @property
    def assign_sequences(self) -> bool:
        """Sequence every aggregate's events at publish, ordered handler or not."""
        return bool(self._setting("assign_sequences", False))

    def _resolve_options(self, given: Mapping[str, Any]) -> HandlerOptions:
        return HandlerOptions.resolve(given, {})

    @abstractmethod
    def _attach(self, subscription: Subscription) -> None:
        """Make a new subscription runnable (the Celery bus creates its task)."""

    # -- publishing --------------------------------------------------------

    def publish(
        self,
        event: Event | Envelope[Any],
        *,
        aggregate_id: object = None,
        aggregate_type: str | None = None,
        correlation_id: object = None,
        causation_id: object = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Envelope[Any]:
        """Send ``event`` to every handler subscribed to its type; return its envelope.

        ``event`` is an :class:`Event` (wrapped in a new envelope with the
        keyword fields) or an envelope from :func:`~eventbus.create_event`.
        Data is validated before anything is sent
        (:class:`~eventbus.errors.EventValidationError`, also for an aggregate
        id, aggregate type, correlation or causation id over 255 characters).
        With no subscriber nothing
        is sent, but the event is counted in :attr:`published`. An event with
        an ``aggregate_id`` and no ``sequence`` gets the aggregate's next
        sequence number when a handler of its type is ordered (or
        ``eventbus_assign_sequences`` is on); the returned envelope carries it.
        """
        if isinstance(event, Envelope):
            if any(
                v is not None
                for v in (aggregate_id, aggregate_type, correlation_id, causation_id, metadata)
            ):
                raise TypeError(
                    "publish(envelope) takes no envelope fields; set them in create_event()"
                )
            envelope = event
            if envelope.event_type not in self.event_registry:
                resolve_event_type(
                    envelope.event_type, self.event_registry
                )  # raises UnknownEventType
            check_ids(envelope)  # (an envelope may be built or copied by hand)
        elif isinstance(event, Event):
            if type(event) not in self._event_classes:
                resolve_event_type(type(event), self.event_registry)
                self._event_classes.add(type(event))
            envelope = wrap(
                event,
                aggregate_id=aggregate_id,
                aggregate_type=aggregate_type,
                correlation_id=correlation_id,
                causation_id=causation_id,
                metadata=metadata,
            )
        else:
            raise TypeError(
                f"publish() takes an Event or an Envelope, got {type(event).__name__}; "
                "use create_event(type_name, data) for a dict"
            )
        subscriptions = self._by_type.get(envelope.event_type, ())
        instrumentation = self.instrumentation
        if instrumentation is None:
            envelope = self._send(envelope, subscriptions)
        else:
            envelope = instrumentation.publish(envelope, subscriptions, self._send)
        self._count_published(envelope.event_type)
        return envelope

    def _count_published(self, event_type: str) -> None:
        """Count one event as published (``published``, the metric): its publish returned.

        In an open :meth:`batch` whose sending can still fail after
        ``publish`` returned, the event waits in the batch's own count
        (:meth:`_batch_published`), which the bus adds once the block was sent.
        """
        pending = self._batch_published()
        (self.published if pending is None else pending)[event_type] += 1

    def _batch_published(self) -> Counter[str] | None:
        """The calling thread's open batch's count of events, or None (counted at once)."""
        return None

    def _send(
        self, envelope: Envelope[Any], subscriptions: Sequence[Subscription]
    ) -> Envelope[Any]:
        """Sequence ``envelope`` if it must be, dispatch it; return the envelope sent."""
        if (
            envelope.sequence is None
            and envelope.aggregate_id is not None
            and (envelope.event_type in self._ordered_types or self.assign_sequences)
        ):
            sequence = self.state.sequencer.next_sequence(
                envelope.aggregate_type, envelope.aggregate_id
            )
            envelope = envelope.model_copy(update={"sequence": sequence})
        self._emit(envelope, subscriptions)
        return envelope

    def _emit(self, envelope: Envelope[Any], subscriptions: Sequence[Subscription]) -> None:
        """Send a checked envelope where this bus sends events: to its subscriptions, if any.

        A bus whose destination is not its handlers (the Kafka bus: a topic)
        overrides this.
        """
        if subscriptions:
            self._dispatch(envelope, subscriptions)

    @abstractmethod
    def _dispatch(self, envelope: Envelope[Any], subscriptions: Sequence[Subscription]) -> None:
        """Deliver one envelope to these subscriptions (one message each)."""

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Publish the block's events together; on exit, all of them were sent.

        Every ``publish`` in the block is checked and gets its envelope back
        as usual, but the messages go out together: on Redis in pipelined
        round trips, on RabbitMQ with one wait for the broker's confirms at the
        end. When the block ends without an exception, every message was
        sent (and confirmed); if sending fails, the block raises
        :class:`~eventbus.errors.PublishError` and any of its messages may or
        may not have been delivered: publish them again (at-least-once). An
        exception raised in the block itself discards what was not sent yet.
        Use it for many events at once (a relay, a replay, an import); a
        single event gains nothing. Nested blocks join the outermost one.
        The in-memory bus runs handlers at once, as without a block.
        """
        yield

    @property
    def max_payload_bytes(self) -> int:
        """The largest envelope, in JSON bytes, that is published or run (0: no limit)."""
        return DEFAULT_MAX_PAYLOAD_BYTES

    def _wire(self, envelope: Envelope[Any]) -> dict[str, Any]:
        """The envelope's wire dict, refused with :class:`PayloadTooLarge` over the limit."""
        wire = envelope.to_wire()
        limit = self.max_payload_bytes
        if limit:
            # Brokers and workers hold whole messages in memory; a large
            # payload belongs in storage, the event carries its reference.
            size = len(json.dumps(wire, separators=(",", ":"), default=str).encode())
            if size > limit:
                raise PayloadTooLarge(envelope.event_type, size, limit)
        return wire

    # -- introspection -----------------------------------------------------

    def destination(self, envelope: Envelope[Any]) -> str:
        """Where :meth:`publish` sends ``envelope``, in words (what the CLI prints)."""
        names = [s.name for s in self.subscriptions(envelope.event_type)]
        return f"{len(names)} handler(s)" + (": " + ", ".join(names) if names else "")

    def subscriptions(self, event_type: EventTypeRef | None = None) -> list[Subscription]:
        """All subscriptions, or those of one event type, sorted by handler name."""
        if event_type is None:
            subs: Iterable[Subscription] = self._subscriptions.values()
        else:
            subs = self._by_type.get(
                resolve_event_type(event_type, self.event_registry).event_type, ()
            )
        return sorted(subs, key=lambda s: s.name)

    def subscription(self, name: str) -> Subscription:
        try:
            return self._subscriptions[name]
        except KeyError:
            raise SubscriptionError(f"no handler named {name!r} is subscribed") from None

    # -- dead letters ------------------------------------------------------

    @property
    @abstractmethod
    def dead_letter_store(self) -> DeadLetterStore: ...

    @property
    def dead_letter_queue(self) -> str:
        """The name metrics and logs give this bus's dead letters' place."""
        return "in-memory"

    @property
    def dead_letters(self) -> DeadLetterQueue:
        """List, inspect, replay and purge this bus's dead letters."""
        # Replays go out in chunks, each in one batch() (sent and confirmed together).
        return DeadLetterQueue(self.dead_letter_store, self._redeliver, self.batch)

    def _redeliver(
        self, record: DeadLetter, data: Mapping[str, Any] | None = None
    ) -> Envelope[Any]:
        sub = self._subscriptions.get(record.handler or "")
        if sub is None:
            raise ReplayError(f"handler {record.handler!r} is not subscribed on this bus")
        wire = dict(record.envelope or {})
        extra: dict[str, Any] = {}
        if data is not None:
            # Validate the correction on its own first, so the caller gets the
            # schema's own error (field by field), not a decode error.
            event_class = self.event_registry.get(str(wire.get("event_type")))
            event_class.parse_data(data)
            wire["data"] = dict(data)
            # The correction is data of the current schema: sent as such, not
            # upcast again from the version the record was written at.
            if wire.get("version") != event_class.event_version:
                metadata = wire.get("metadata")
                wire["metadata"] = {
                    **(metadata if isinstance(metadata, Mapping) else {}),
                    UPCAST_FROM_KEY: wire.get("version"),
                }
                wire["version"] = event_class.event_version
            extra["eventbus_edited_at"] = datetime.now(UTC).isoformat()
        try:
            envelope = Envelope.from_wire(wire, self.event_registry)
        except EventBusError as exc:
            raise ReplayError(str(exc)) from exc
        replays = int(envelope.metadata.get("eventbus_replays", 0)) + 1
        envelope = envelope.with_metadata(
            eventbus_replays=replays,
            eventbus_replayed_at=datetime.now(UTC).isoformat(),
            eventbus_dead_letter_id=record.id,
            **extra,
        )
        instrumentation = self.instrumentation
        try:
            if instrumentation is None:
                self._dispatch(envelope, (sub,))
            else:
                envelope = instrumentation.replay(envelope, record, sub, self._redispatch)
        except EventBusError as exc:
            raise ReplayError(f"re-publish of {record.id} failed, record kept: {exc}") from exc
        return envelope

    def _redispatch(
        self, envelope: Envelope[Any], subscriptions: Sequence[Subscription]
    ) -> Envelope[Any]:
        """Dispatch a replayed envelope as it is (it keeps its sequence); return it."""
        self._dispatch(envelope, subscriptions)
        return envelope


def _callable_of(target: object) -> Handler:
    if isinstance(target, type):
        raise SubscriptionError(
            f"{target.__qualname__} is a class; subscribe an instance (or a function)"
        )
    handle = getattr(target, "handle", None)
    if callable(handle):
        return handle  # type: ignore[no-any-return]
    if callable(target):
        return target
    raise SubscriptionError(
        f"a handler must be callable or have a handle(envelope) method, got {target!r}"
    )


def _handler_name(target: object) -> str:
    if callable(getattr(target, "handle", None)) or not hasattr(target, "__qualname__"):
        cls = type(target)
        name = f"{cls.__module__}.{cls.__qualname__}"
    else:
        name = f"{getattr(target, '__module__', '?')}.{target.__qualname__}"
    if "<lambda>" in name:
        raise SubscriptionError("a lambda has no stable name; pass name=... to subscribe()")
    return name
