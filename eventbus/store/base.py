"""The event store's interface: append with optimistic concurrency, load, replay, read all.

:class:`EventStore` is the template. A backend implements four primitives,
on rows (column dicts) and undecoded :class:`EventRecord` s:

``_write(stream, rows, expected_version)``
    append one aggregate's rows in one transaction, numbered after the
    aggregate's last sequence by :func:`number_rows`, which raises
    :class:`~eventbus.errors.ConcurrencyError` (nothing written) when the
    aggregate is not at ``expected_version``.
``_stream(stream, after)``
    one aggregate's records after a sequence number, in sequence order.
``read_all_records(after, limit)``
    every aggregate's records after a global position, in position order.
``version(aggregate_id, aggregate_type=...)``
    the aggregate's last sequence number (0: none).

Decoding (and with it upcasting) happens here, once for every backend.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

from eventbus.domain.envelope import Envelope, decode_envelope
from eventbus.domain.events import EventRegistry
from eventbus.errors import ConcurrencyError, ConfigurationError, EventError

__all__ = [
    "ANY_SCHEME",
    "DEFAULT_BATCH_SIZE",
    "EventRecord",
    "EventStore",
    "StoredEvent",
    "Stream",
    "number_rows",
    "prepare_append",
    "register_backend",
    "stored_events",
]

S = TypeVar("S")

#: The scheme key of the backend that takes every URL no other backend claimed.
ANY_SCHEME = "*"

#: URL scheme -> what opens a store at such a URL. The backends register
#: themselves when imported (``eventbus.store`` imports both of its own), so
#: this interface never imports its implementations.
_BACKENDS: dict[str, Callable[..., EventStore]] = {}


def register_backend(scheme: str, opener: Callable[..., EventStore]) -> None:
    """Make :meth:`EventStore.from_url` open ``scheme://`` URLs with ``opener(url, **options)``."""
    _BACKENDS[scheme] = opener


#: Rows fetched per query by :meth:`EventStore.read_all`.
DEFAULT_BATCH_SIZE = 500


@dataclass(frozen=True, slots=True)
class Stream:
    """An aggregate's identity: its type and id, as on its envelopes.

    A missing ``aggregate_type`` is stored as ``""`` (SQL unique constraints
    treat NULLs as distinct, which would let two writers both take sequence 1).
    """

    aggregate_type: str
    aggregate_id: str

    @classmethod
    def of(cls, aggregate_id: object, aggregate_type: str | None = None) -> Stream:
        if aggregate_id is None or aggregate_id == "":
            raise ValueError("an event store stream needs an aggregate_id")
        return cls(aggregate_type or "", str(aggregate_id))

    def describe(self) -> tuple[str | None, str]:
        return self.aggregate_type or None, self.aggregate_id


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One stored event as written: ``data`` is the JSON dict, not decoded.

    What :meth:`EventStore.load_records` and :meth:`EventStore.read_all_records`
    return, for callers that must see events this code cannot decode (a type
    it no longer knows, a version it cannot upcast). :meth:`decode` turns it
    into a :class:`StoredEvent`.
    """

    position: int
    aggregate_type: str | None
    aggregate_id: str
    sequence: int
    event_id: UUID
    event_type: str
    version: int
    occurred_at: datetime
    correlation_id: str | None
    causation_id: str | None
    metadata: dict[str, Any]
    data: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        """The envelope's wire dict (see :mod:`eventbus.domain.envelope`)."""
        occurred = self.occurred_at
        if occurred.tzinfo is None:  # SQLite keeps no zone; the store writes UTC
            occurred = occurred.replace(tzinfo=UTC)
        return {
            "event_id": str(self.event_id),
            "event_type": self.event_type,
            "version": self.version,
            "occurred_at": occurred.isoformat(),
            "aggregate_id": self.aggregate_id,
            "aggregate_type": self.aggregate_type,
            "sequence": self.sequence,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "metadata": self.metadata,
            "data": self.data,
        }

    def decode(self, event_registry: EventRegistry | None = None) -> StoredEvent:
        """The record as a typed envelope, upcast to its class's current version.

        Raises :class:`~eventbus.errors.UnknownEventType` (naming type and
        version) for a type the registry does not know,
        :class:`~eventbus.errors.EventVersionError` for data it cannot upcast,
        :class:`~eventbus.errors.EventValidationError` for data that fails
        its schema. The error's notes name the record.
        """
        try:
            envelope = decode_envelope(self.to_wire(), event_registry)
        except EventError as exc:
            exc.add_note(
                f"stored event at position {self.position}: aggregate "
                f"{self.aggregate_type or '-'} {self.aggregate_id!r}, sequence {self.sequence}, "
                f"event_id {self.event_id} (read it undecoded with load_records/read_all_records)"
            )
            raise
        return StoredEvent(self.position, envelope)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A stored event: its global ``position`` in the store and its envelope.

    ``envelope.sequence`` is its number within the aggregate (1, 2, ...).
    """

    position: int
    envelope: Envelope[Any]

    @property
    def sequence(self) -> int:
        assert self.envelope.sequence is not None  # the store always sets it
        return self.envelope.sequence


class EventStore(ABC):
    """Events of aggregates, appended with optimistic concurrency and read back.

    An aggregate's events are numbered 1, 2, 3 ... (the envelope's
    ``sequence``); its *version* is the number of its last event (0 for a
    new aggregate). Every event also has a global ``position`` (increasing,
    maybe with gaps), for readers that follow the whole store.

    Backends: :class:`~eventbus.store.InMemoryEventStore` and
    :class:`~eventbus.store.SQLEventStore` (SQLite, PostgreSQL);
    :meth:`from_url` picks one.
    """

    def __init__(self, *, event_registry: EventRegistry | None = None) -> None:
        #: Where loaded events' classes and upcasters are looked up (``None``:
        #: the process-wide registry).
        self.event_registry = event_registry

    @staticmethod
    def from_url(url: str, **options: Any) -> EventStore:
        """The store at ``url``: ``memory://``, ``sqlite:///path.db``, ``postgresql://...``.

        Other keyword options go to the backend (``event_registry``,
        ``table_name``, ``engine_options`` ...). A SQL store's table is not
        created here: call :meth:`create_schema` (or use a migration). The
        URL's scheme picks the backend that registered it
        (:func:`register_backend`); any other scheme goes to SQLAlchemy.
        """
        scheme = url.partition(":")[0].split("+")[0].lower()
        opener = _BACKENDS.get(scheme) or _BACKENDS.get(ANY_SCHEME)
        if opener is None:  # only if eventbus.store's own backends were never imported
            raise ConfigurationError(f"no event store backend for {scheme!r} URLs")
        return opener(url, **options)

    def create_schema(self) -> None:  # noqa: B027 - a no-op unless the backend has a schema
        """Create the store's table and indexes if they do not exist (SQL backends)."""

    def close(self) -> None:  # noqa: B027 - a no-op unless the backend holds connections
        """Release the backend's connections."""

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------

    def append(
        self, envelopes: Iterable[Envelope[Any]], *, expected_version: int | None = None
    ) -> list[StoredEvent]:
        """Append events of ONE aggregate atomically; return them numbered.

        ``expected_version`` is the aggregate's version the caller decided on
        (0: a new aggregate); if another writer moved it on, nothing is
        written and :class:`~eventbus.errors.ConcurrencyError` is raised.
        ``None`` appends after whatever the last event is (still safe under
        concurrent writers). The returned envelopes carry their ``sequence``
        (publish them: ordered handlers then agree with the store); an
        envelope that already has one must have the number it gets.
        """
        batch = list(envelopes)
        if not batch:
            return []
        stream, rows = prepare_append(batch, expected_version)
        return stored_events(batch, self._write(stream, rows, expected_version))

    @abstractmethod
    def _write(
        self, stream: Stream, rows: Sequence[dict[str, Any]], expected_version: int | None
    ) -> list[tuple[int, int]]:
        """Write ``rows`` after the stream's last event; return ``(position, sequence)``s."""

    # -- reading -------------------------------------------------------------

    @abstractmethod
    def version(self, aggregate_id: object, *, aggregate_type: str | None = None) -> int:
        """The aggregate's version: the sequence number of its last event (0: none)."""

    def load(
        self, aggregate_id: object, *, aggregate_type: str | None = None, after: int = 0
    ) -> list[Envelope[Any]]:
        """The aggregate's events with a sequence above ``after``, in order, decoded.

        Older data is upcast to the current class. An event this code cannot
        decode raises (see :meth:`EventRecord.decode`); :meth:`load_records`
        reads them raw.
        """
        return [
            r.decode(self.event_registry).envelope
            for r in self.load_records(aggregate_id, aggregate_type=aggregate_type, after=after)
        ]

    def load_records(
        self, aggregate_id: object, *, aggregate_type: str | None = None, after: int = 0
    ) -> list[EventRecord]:
        """Like :meth:`load`, undecoded: events of any type, as they were written."""
        return self._stream(Stream.of(aggregate_id, aggregate_type), after)

    @abstractmethod
    def _stream(self, stream: Stream, after: int) -> list[EventRecord]:
        """The stream's records with a sequence above ``after``, in sequence order."""

    def replay(
        self,
        aggregate_id: object,
        apply: Callable[[S, Envelope[Any]], S],
        initial: S,
        *,
        aggregate_type: str | None = None,
        after: int = 0,
    ) -> S:
        """Fold the aggregate's events into state: ``apply(apply(initial, e1), e2) ...``.

        ``after`` with an ``initial`` from a snapshot replays only the newer events.
        """
        state = initial
        for envelope in self.load(aggregate_id, aggregate_type=aggregate_type, after=after):
            state = apply(state, envelope)
        return state

    def read_all(
        self, after: int = 0, *, limit: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Iterator[StoredEvent]:
        """Every aggregate's events after global position ``after``, in position order.

        For rebuilding a projection: keep the last ``position`` handled and
        pass it as ``after`` next time. Rows are fetched ``batch_size`` at a
        time; ``limit`` stops after that many events.
        """
        left = limit
        while left is None or left > 0:
            size = batch_size if left is None else min(batch_size, left)
            records = self.read_all_records(after, limit=size)
            for record in records:
                yield record.decode(self.event_registry)
            if len(records) < size:
                return
            after = records[-1].position
            if left is not None:
                left -= len(records)

    @abstractmethod
    def read_all_records(self, after: int = 0, *, limit: int | None = None) -> list[EventRecord]:
        """Like :meth:`read_all`, undecoded, one list (``limit`` rows at most)."""


def prepare_append(
    batch: Sequence[Envelope[Any]], expected_version: int | None
) -> tuple[Stream, list[dict[str, Any]]]:
    """The stream of a non-empty batch and its rows to write; ValueError if it is no batch."""
    if expected_version is not None and (
        not isinstance(expected_version, int)
        or isinstance(expected_version, bool)
        or expected_version < 0
    ):
        raise ValueError(f"expected_version must be None or an int >= 0, got {expected_version!r}")
    return _stream_of(batch), [_row(e) for e in batch]


def _stream_of(batch: Sequence[Envelope[Any]]) -> Stream:
    first = batch[0]
    stream = Stream.of(first.aggregate_id, first.aggregate_type)
    for envelope in batch[1:]:
        if Stream.of(envelope.aggregate_id, envelope.aggregate_type) != stream:
            raise ValueError(
                "append() takes the events of one aggregate: "
                f"{stream.describe()} and {(envelope.aggregate_type, envelope.aggregate_id)}"
            )
    return stream


def _row(envelope: Envelope[Any]) -> dict[str, Any]:
    """The columns of a new record, but its position; ``sequence`` is the envelope's claim."""
    return {
        "sequence": envelope.sequence,
        "event_id": envelope.event_id,
        "event_type": envelope.event_type,
        "version": envelope.version,
        "occurred_at": envelope.occurred_at,
        "correlation_id": envelope.correlation_id,
        "causation_id": envelope.causation_id,
        # What a JSON column would give back, in every backend alike.
        "metadata": json.loads(json.dumps(envelope.metadata, default=str))
        if envelope.metadata
        else {},
        "data": envelope.data.model_dump(mode="json"),
    }


def stored_events(
    batch: Sequence[Envelope[Any]], written: Sequence[tuple[int, int]]
) -> list[StoredEvent]:
    """The appended envelopes numbered: ``written`` holds their ``(position, sequence)``."""
    return [
        StoredEvent(position, envelope.model_copy(update={"sequence": sequence}))
        for envelope, (position, sequence) in zip(batch, written, strict=True)
    ]


def number_rows(
    stream: Stream,
    rows: Sequence[dict[str, Any]],
    current: int,
    expected_version: int | None,
) -> list[dict[str, Any]]:
    """``rows`` numbered after ``current``, the stream's version read by the backend.

    Raises :class:`ConcurrencyError` when the stream is not at
    ``expected_version``, or a row claims another number than it would get
    (an envelope's ``sequence`` is a claim about the stream, like an
    expected version).
    """
    aggregate_type, aggregate_id = stream.describe()
    if expected_version is not None and current != expected_version:
        raise ConcurrencyError(
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            expected=expected_version,
            actual=current,
        )
    numbered = []
    for offset, row in enumerate(rows, start=1):
        claimed = row["sequence"]
        if claimed is not None and claimed != current + offset:
            raise ConcurrencyError(
                aggregate_type=aggregate_type,
                aggregate_id=aggregate_id,
                expected=expected_version,
                actual=current,
                detail=f"event {offset} of the batch claims sequence {claimed}, "
                f"it would be {current + offset}",
            )
        numbered.append({**row, "sequence": current + offset})
    return numbered
