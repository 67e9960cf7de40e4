"""The consumer's offsets: only what was dispatched is ever committed (no broker needed)."""

from __future__ import annotations

from eventbus.kafka.consumer_offsets import Offsets

P0, P1 = ("orders", 0), ("orders", 1)


def test_only_dispatched_offsets_are_asked_to_be_committed_once_each() -> None:
    offsets = Offsets()
    assert offsets.to_commit() == {}
    offsets.dispatched(P0, 10)
    offsets.dispatched(P1, 4)
    assert offsets.to_commit() == {P0: 10, P1: 4}
    # asked once: not again until it moves
    assert offsets.to_commit() == {}
    offsets.dispatched(P0, 25)
    assert offsets.to_commit() == {P0: 25}
    # an offset never goes back (a batch read again after a rewind)
    offsets.dispatched(P0, 12)
    assert offsets.position(P0) == 25


def test_a_failed_commit_is_asked_again_and_a_final_commit_takes_all_unconfirmed() -> None:
    offsets = Offsets()
    offsets.dispatched(P0, 10)
    offsets.dispatched(P1, 4)
    offsets.to_commit()
    offsets.committed(P1, 4)
    offsets.commit_failed([P0])
    assert offsets.to_commit() == {P0: 10}
    assert offsets.uncommitted() == {P0: 10}
    offsets.committed(P0, 10)
    assert offsets.uncommitted() == {}
    assert offsets.committed_offsets() == {P0: 10, P1: 4}


def test_partitions_taken_away_are_forgotten() -> None:
    offsets = Offsets()
    offsets.dispatched(P0, 10)
    offsets.forget([P0])
    assert offsets.to_commit() == {} and offsets.position(P0) is None
