"""The aggregate part of the sequence and position keys: one key per aggregate."""

from __future__ import annotations

import itertools

from eventbus.guarantees.ordering import aggregate_key

PARTS = [
    "",
    "a",
    ":",
    "a:",
    ":a",
    "a:b",
    "a::b",
    "%",
    "%3A",
    "\\",
    '"',
    "[",
    "]",
    ",",
    "é",
    "\\u003a",
]


def test_no_two_aggregates_share_a_key() -> None:
    # Given every (type, id) pair made of awkward parts
    pairs = list(itertools.product([None, *PARTS], PARTS))
    # When their keys are built, Then no two distinct aggregates share one
    # (None and "" are the same: no aggregate type)
    keys: dict[str, tuple[str, str]] = {}
    for kind, ident in pairs:
        key = aggregate_key(kind, ident)
        seen = keys.setdefault(key, (kind or "", ident))
        assert seen == (kind or "", ident), f"{seen} and {(kind, ident)} share {key!r}"


def test_a_type_without_a_colon_keeps_the_key_earlier_releases_wrote() -> None:
    # Keys already in Redis (sequence counters, positions) stay valid
    assert aggregate_key("Order", "7") == "Order:7"
    assert aggregate_key("Order", "eu:7") == "Order:eu:7"
    assert aggregate_key(None, "7") == ":7"
    assert aggregate_key("", "a:b") == ":a:b"


def test_a_type_with_a_colon_gets_a_key_no_other_aggregate_can_have() -> None:
    key = aggregate_key("Order:eu", "7")
    assert key != aggregate_key("Order", "eu:7")
    assert ":" not in key  # every key with a ':' belongs to a type without one
    assert key == r'["Order\u003aeu","7"]'
