"""The event store contract, the same on every backend: memory, SQLite, PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from eventbus import (
    ConcurrencyError,
    Envelope,
    EventRegistry,
    EventStoreError,
    EventVersionError,
    UnknownEventType,
    create_event,
)
from eventbus.domain.upcasting import UPCAST_FROM_KEY
from eventbus.store import EventStore
from tests.store.events import (
    CURRENT,
    OLD_V1,
    OLD_V2,
    TodoArchived,
    TodoCreated,
    TodoCreatedV1,
    TodoCreatedV2,
    TodoDone,
)

TODO = "Todo"


def created(todo: str, title: str = "Buy milk", **fields: Any) -> Envelope[Any]:
    return create_event(
        TodoCreated,
        {"title": title, "priority": "high"},
        aggregate_id=todo,
        aggregate_type=TODO,
        event_registry=CURRENT,
        **fields,
    )


def done(todo: str) -> Envelope[Any]:
    return create_event(
        TodoDone, {}, aggregate_id=todo, aggregate_type=TODO, event_registry=CURRENT
    )


def titles(envelopes: list[Envelope[Any]]) -> list[str]:
    return [e.data.title if isinstance(e.data, TodoCreated) else "done" for e in envelopes]


def run_together(workers: list[Callable[[], object]]) -> list[object]:
    """Run the callables in threads released at once; their results or exceptions."""
    start = threading.Barrier(len(workers))
    results: list[object] = [None] * len(workers)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = workers[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


# -- append and load ---------------------------------------------------------------


def test_appended_events_are_numbered_1_to_n_and_load_back_as_written(store: EventStore) -> None:
    # Given three events of a new aggregate, one with metadata and a causation
    first = created("t1", "one", metadata={"user": "ada", "ip": "10.0.0.1"})
    batch = [first, created("t1", "two", causation_id=first.event_id), done("t1")]

    # When they are appended as a new aggregate
    stored = store.append(batch, expected_version=0)

    # Then they are numbered 1..3, in increasing global positions
    assert [s.sequence for s in stored] == [1, 2, 3]
    assert [s.envelope.event_id for s in stored] == [e.event_id for e in batch]
    positions = [s.position for s in stored]
    assert positions == sorted(positions) and len(set(positions)) == 3
    assert store.version("t1", aggregate_type=TODO) == 3

    # And they load back equal to what was appended, sequence included
    loaded = store.load("t1", aggregate_type=TODO)
    assert loaded == [s.envelope for s in stored]
    assert loaded[0].metadata == {"user": "ada", "ip": "10.0.0.1"}
    assert loaded[1].causation_id == str(first.event_id)
    assert loaded[0].occurred_at == first.occurred_at


def test_load_after_a_sequence_and_replay_fold_the_aggregate(store: EventStore) -> None:
    store.append([created("t1", "one"), created("t1", "two"), done("t1")], expected_version=0)

    assert titles(store.load("t1", aggregate_type=TODO, after=1)) == ["two", "done"]
    assert store.load("t1", aggregate_type=TODO, after=3) == []
    assert store.load("nobody", aggregate_type=TODO) == []

    def apply(state: list[str], envelope: Envelope[Any]) -> list[str]:
        return [*state, *titles([envelope])]

    assert store.replay("t1", apply, [], aggregate_type=TODO) == ["one", "two", "done"]
    # From a snapshot taken at version 2, only the newer events are applied.
    snapshot = ["one", "two"]
    assert store.replay("t1", apply, snapshot, aggregate_type=TODO, after=2) == [
        "one",
        "two",
        "done",
    ]


def test_without_expected_version_events_go_after_the_last_one(store: EventStore) -> None:
    store.append([created("t1", "one")])
    stored = store.append([created("t1", "two"), done("t1")])
    assert [s.sequence for s in stored] == [2, 3]


def test_an_aggregate_is_its_type_and_id(store: EventStore) -> None:
    store.append([created("42", "a todo")], expected_version=0)
    other = create_event(
        TodoDone, {}, aggregate_id="42", aggregate_type="Project", event_registry=CURRENT
    )
    untyped = create_event(TodoDone, {}, aggregate_id="42", event_registry=CURRENT)

    assert store.append([other], expected_version=0)[0].sequence == 1
    assert store.append([untyped], expected_version=0)[0].sequence == 1
    assert titles(store.load("42", aggregate_type=TODO)) == ["a todo"]
    assert store.load("42", aggregate_type="Project") == [other.model_copy(update={"sequence": 1})]
    assert [e.aggregate_type for e in store.load("42")] == [None]


def test_read_all_follows_the_global_order_across_aggregates(store: EventStore) -> None:
    # Given events of three aggregates, interleaved
    appended = []
    for round_ in range(3):
        for todo in ("a", "b", "c"):
            appended += store.append([created(todo, f"{todo}{round_}")])

    # When the whole store is read, in small batches
    everything = list(store.read_all(batch_size=2))

    # Then it comes in append order, positions increasing
    assert [s.envelope.event_id for s in everything] == [s.envelope.event_id for s in appended]
    assert [s.position for s in everything] == [s.position for s in appended]
    # And a projection resumes after the last position it handled
    checkpoint = everything[3].position
    assert [s.position for s in store.read_all(after=checkpoint)] == [
        s.position for s in appended[4:]
    ]
    assert [s.position for s in store.read_all(after=checkpoint, limit=3, batch_size=2)] == [
        s.position for s in appended[4:7]
    ]
    assert list(store.read_all(after=appended[-1].position)) == []
    assert len(store.read_all_records(limit=4)) == 4


def test_an_empty_batch_writes_nothing(store: EventStore) -> None:
    assert store.append([], expected_version=5) == []
    assert list(store.read_all()) == []


def test_a_batch_is_events_of_one_aggregate_with_an_id(store: EventStore) -> None:
    with pytest.raises(ValueError, match="one aggregate"):
        store.append([created("a"), created("b")])
    with pytest.raises(ValueError, match="aggregate_id"):
        store.append([create_event(TodoDone, {}, event_registry=CURRENT)])
    with pytest.raises(ValueError, match="expected_version"):
        store.append([created("a")], expected_version=-1)
    assert list(store.read_all()) == []


# -- concurrency ---------------------------------------------------------------------


def test_a_stale_expected_version_raises_and_writes_nothing(store: EventStore) -> None:
    # Given an aggregate at version 2
    store.append([created("t1", "one"), created("t1", "two")], expected_version=0)

    # When a writer that decided at version 1 appends a batch
    with pytest.raises(ConcurrencyError) as caught:
        store.append([done("t1"), created("t1", "three"), done("t1")], expected_version=1)

    # Then it is told the versions, and nothing of the batch was written
    error = caught.value
    assert (error.expected, error.actual) == (1, 2)
    assert (error.aggregate_type, error.aggregate_id) == (TODO, "t1")
    assert "nothing was written" in str(error)
    assert store.version("t1", aggregate_type=TODO) == 2
    assert len(list(store.read_all())) == 2
    # And expecting a new aggregate where one exists is the same conflict
    with pytest.raises(ConcurrencyError):
        store.append([created("t1")], expected_version=0)
    # Expecting a version the aggregate has not reached is one too
    with pytest.raises(ConcurrencyError):
        store.append([created("t1")], expected_version=7)


def test_a_pre_numbered_envelope_must_get_its_number(store: EventStore) -> None:
    stored = store.append([created("t1").model_copy(update={"sequence": 1})])
    assert stored[0].sequence == 1

    with pytest.raises(ConcurrencyError, match="claims sequence 5"):
        store.append([created("t1").model_copy(update={"sequence": 5})])
    assert store.version("t1", aggregate_type=TODO) == 1


def test_an_event_is_stored_once(store: EventStore) -> None:
    event = created("t1")
    store.append([event])
    with pytest.raises(EventStoreError, match="already stored"):
        store.append([done("t1"), event])
    assert titles(store.load("t1", aggregate_type=TODO)) == ["Buy milk"]


def test_racing_appenders_at_the_same_version_exactly_one_wins(store: EventStore) -> None:
    store.append([created("t1", "start")], expected_version=0)
    for version in range(1, 6):
        # Given four writers that all decided at the same version
        def writer(w: int, version: int = version) -> object:
            batch = [created("t1", f"v{version}-w{w}-a"), created("t1", f"v{version}-w{w}-b")]
            return store.append(batch, expected_version=version * 2 - 1)

        writers = [lambda w=w: writer(w) for w in range(4)]

        # When they append at once
        results = run_together(list(writers))

        # Then one batch went in, whole; the others got the concurrency error
        winners = [r for r in results if isinstance(r, list)]
        losers = [r for r in results if isinstance(r, ConcurrencyError)]
        assert len(winners) == 1 and len(losers) == 3, results
        assert [s.sequence for s in winners[0]] == [version * 2, version * 2 + 1]

    loaded = store.load("t1", aggregate_type=TODO)
    assert [e.sequence for e in loaded] == list(range(1, 12))
    for first, second in zip(loaded[1::2], loaded[2::2], strict=True):  # batches stay whole
        assert first.data.title[:-1] == second.data.title[:-1]


def test_concurrent_appends_without_expected_version_all_land_in_order(
    store: EventStore,
) -> None:
    def writer(w: int) -> list[int]:
        sequences = []
        for i in range(8):
            batch = [created("t1", f"w{w}-{i}-a"), created("t1", f"w{w}-{i}-b")]
            sequences += [s.sequence for s in store.append(batch)]
        return sequences

    results = run_together([lambda w=w: writer(w) for w in range(4)])

    assert not [r for r in results if isinstance(r, Exception)], results
    loaded = store.load("t1", aggregate_type=TODO)
    assert [e.sequence for e in loaded] == list(range(1, 65))
    for first, second in zip(loaded[::2], loaded[1::2], strict=True):
        assert first.data.title[:-1] == second.data.title[:-1]
    positions = [s.position for s in store.read_all()]
    assert positions == sorted(positions)


# -- schema evolution and unknown types ------------------------------------------------


def test_v1_and_v2_data_load_through_the_v3_class(store: EventStore) -> None:
    # Given events written by the first and the second release
    v1 = create_event(
        TodoCreatedV1,
        {"name": "old"},
        aggregate_id="t1",
        aggregate_type=TODO,
        event_registry=OLD_V1,
    )
    v2 = create_event(
        TodoCreatedV2,
        {"name": "newer", "priority": "low"},
        aggregate_id="t1",
        aggregate_type=TODO,
        event_registry=OLD_V2,
    )
    store.append([v1, v2, created("t1", "current")])

    # When today's code loads the aggregate
    loaded = store.load("t1", aggregate_type=TODO)

    # Then every event is a v3 TodoCreated, upcast step by step
    assert [e.data for e in loaded] == [
        TodoCreated(title="old", priority="normal"),
        TodoCreated(title="newer", priority="low"),
        TodoCreated(title="current", priority="high"),
    ]
    assert [e.version for e in loaded] == [3, 3, 3]
    assert [e.metadata.get(UPCAST_FROM_KEY) for e in loaded] == [1, 2, None]
    # And the stored rows are untouched: still v1 and v2 data
    raw = store.load_records("t1", aggregate_type=TODO)
    assert [(r.version, r.data) for r in raw[:2]] == [
        (1, {"name": "old"}),
        (2, {"name": "newer", "priority": "low"}),
    ]
    assert [s.envelope.data.title for s in store.read_all()] == ["old", "newer", "current"]


def test_an_event_type_the_code_no_longer_knows(store: EventStore) -> None:
    # Given an aggregate with an event of a type today's code dropped
    archived = create_event(
        TodoArchived, {}, aggregate_id="t1", aggregate_type=TODO, event_registry=OLD_V1
    )
    store.append([created("t1"), archived])

    # When it is loaded, the error names the type and the version it was written with
    with pytest.raises(UnknownEventType, match=r"'store.todo_archived' v4") as caught:
        store.load("t1", aggregate_type=TODO)
    assert (caught.value.event_type, caught.value.version) == ("store.todo_archived", 4)
    assert any("sequence 2" in note for note in caught.value.__notes__)
    with pytest.raises(UnknownEventType):
        list(store.read_all())

    # And the raw records are there for a caller who asks for them
    raw = store.load_records("t1", aggregate_type=TODO)
    assert [(r.event_type, r.version, r.sequence) for r in raw] == [
        ("store.todo_created", 3, 1),
        ("store.todo_archived", 4, 2),
    ]
    assert raw[1].event_id == archived.event_id
    assert raw[1].decode(OLD_V1).envelope.data == TodoArchived()
    assert [r.event_type for r in store.read_all_records()] == [
        "store.todo_created",
        "store.todo_archived",
    ]


def test_data_newer_than_the_code_is_a_clear_error(store: EventStore) -> None:
    future = EventRegistry()

    class TodoCreatedV4(TodoCreated, registry=future):
        event_type = "store.todo_created"
        event_version = 4

    event = create_event(
        TodoCreatedV4,
        {"title": "from the future", "priority": "high"},
        aggregate_id="t1",
        aggregate_type=TODO,
        event_registry=future,
    )
    store.append([event])

    with pytest.raises(EventVersionError, match="v4, newer than this code's v3") as caught:
        store.load("t1", aggregate_type=TODO)
    assert (caught.value.version, caught.value.current) == (4, 3)
