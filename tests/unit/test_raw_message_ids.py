"""The ids of raw messages' records (celery.worker.RawMessageIds): one per message, kept."""

from __future__ import annotations

from typing import Any

from kombu.message import Message

from eventbus.celery.worker import RawMessageIds


def message(
    body: bytes = b"garbage",
    *,
    tag: Any = 1,
    queue: str = "q",
    redelivered: bool = False,
    headers: dict[str, Any] | None = None,
) -> Message:
    return Message(
        body=body,
        delivery_tag=tag,
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers if headers is not None else {},
        delivery_info={"routing_key": queue, "redelivered": redelivered},
    )


def test_a_redis_message_is_named_by_its_delivery_tag() -> None:
    # Given kombu's virtual delivery tags (a uuid per message, kept when it is put back)
    ids = RawMessageIds()

    # Then two identical elements are two records, and one delivered again is the same one
    first = ids(message(tag="8d1c-one"))
    assert ids(message(tag="8d1c-two")) != first
    assert ids(message(tag="8d1c-one", redelivered=True, headers={"redelivered": True})) == first


def test_identical_amqp_copies_are_one_record_each() -> None:
    # Given AMQP delivery tags (a channel's count of deliveries)
    ids = RawMessageIds()

    # When three identical copies arrive, then another message
    copies = [ids(message(tag=n)) for n in (1, 2, 3)]
    other = ids(message(b"other garbage", tag=4))

    # Then each is a record of its own
    assert len({*copies, other}) == 4
    # And a copy delivered again (a new tag) takes the first copy's id: the
    # store looks for that record before it writes
    assert ids(message(tag=9, redelivered=True)) == copies[0]
    assert ids(message(b"other garbage", tag=10, redelivered=True)) == other


def test_the_queue_and_headers_are_part_of_an_amqp_message() -> None:
    ids = RawMessageIds()
    assert ids(message(queue="a", redelivered=True)) != ids(message(queue="b", redelivered=True))
    assert ids(message(headers={"id": "1"}, redelivered=True)) != ids(
        message(headers={"id": "2"}, redelivered=True)
    )
    long = "x" * 1000  # headers that differ far in
    assert ids(message(headers={"a": long + "1"}, redelivered=True)) != ids(
        message(headers={"a": long + "2"}, redelivered=True)
    )
    deep: Any = []
    for _ in range(5000):  # nested deeper than json goes: named all the same
        deep = [deep]
    assert ids(message(headers={"deep": deep}, redelivered=True))
