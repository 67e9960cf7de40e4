"""Bounded decompression of compressed messages on handler queues (transport.compression)."""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable, Iterator

import pytest
from kombu.transport.virtual.base import Channel as VirtualChannel

from eventbus.celery.internals.compression import (
    CompressedMessageRefused,
    CompressionPolicy,
    DecompressedTooLarge,
    decompress_within,
    guard_compression,
    unguard_compression,
)
from eventbus.errors import PayloadTooLarge

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "application/x-gzip": zlib.compress,
    "zlib": zlib.compress,
    "application/x-bz2": bz2.compress,
    "application/x-lzma": lzma.compress,
}


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
def test_a_body_within_the_bound_decompresses_as_kombu_would(compression: str) -> None:
    body = b'[[{"x": 1}], {}, {}]' * 100
    compressed = COMPRESSORS[compression](body)
    assert decompress_within(compressed, compression, len(body)) == body
    assert decompress_within(compressed, compression, 0) == body  # no bound


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
def test_decompression_stops_one_byte_past_the_bound(compression: str) -> None:
    bomb = COMPRESSORS[compression](b"\0" * 10_000_000)
    with pytest.raises(DecompressedTooLarge) as raised:
        decompress_within(bomb, compression, 1000, limit=600)
    assert raised.value.size == 1001
    assert isinstance(raised.value, PayloadTooLarge)
    assert "1000 bytes" in str(raised.value) and "600" in str(raised.value)


def test_every_stream_of_a_multi_stream_body_counts_toward_the_bound() -> None:
    two = bz2.compress(b"a" * 600) + bz2.compress(b"b" * 600)
    assert decompress_within(two, "bzip2", 1200) == b"a" * 600 + b"b" * 600
    with pytest.raises(DecompressedTooLarge):
        decompress_within(two, "bzip2", 1000)


def test_truncated_data_and_an_unknown_compression_are_errors() -> None:
    with pytest.raises(Exception, match="truncated"):
        decompress_within(zlib.compress(b"x" * 1000)[:-4], "zlib", 10_000)
    with pytest.raises(CompressedMessageRefused, match="cannot decompress within a bound"):
        decompress_within(b"...", "application/x-brotli", 10_000)


@pytest.fixture
def guarded() -> Iterator[str]:
    queue = "unit.compression.guarded"
    guard_compression([queue], CompressionPolicy(allowed=False, max_bytes=1000, limit=600))
    yield queue
    unguard_compression([queue])


def _message(queue: str, body: bytes, task: str = "handler") -> object:
    # As kombu's virtual transports (Redis) build a message from an element.
    payload = {
        "body": body.decode("latin-1"),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {"task": task, "compression": "application/x-gzip"},
        "properties": {
            "delivery_info": {"exchange": "", "routing_key": queue},
            "delivery_tag": "tag-1",
        },
    }
    channel = VirtualChannel.__new__(VirtualChannel)
    channel.decode_body = lambda body, encoding: body.encode("latin-1")  # type: ignore[method-assign]
    return VirtualChannel.Message(payload, channel=channel)


def test_a_guarded_queue_refuses_a_compressed_message_undecompressed(guarded: str) -> None:
    compressed = zlib.compress(b"\0" * 10_000_000)
    message = _message(guarded, compressed)
    assert message.body == compressed  # type: ignore[attr-defined]
    [(kind, error, _)] = message.errors  # type: ignore[attr-defined]
    assert kind is CompressedMessageRefused and "task_compression" in str(error)
    assert message.headers["compression"] == "application/x-gzip"  # type: ignore[attr-defined]


def test_another_queue_is_kombus_as_before(guarded: str) -> None:
    message = _message("unit.compression.other", zlib.compress(b"[1]"))
    assert message.body == b"[1]" and not message.errors  # type: ignore[attr-defined]
