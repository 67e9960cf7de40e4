"""Compressed messages on handler queues: never a compression bomb in the worker's main process.

kombu decompresses a message with a ``compression`` header as it builds it,
in the worker's main process, with no bound: 100 KB of zlib is 100 MB of
zeros. eventbus's publish compresses only when the app sets
``task_compression``. So on a handler queue a compressed message is refused
before anything is decompressed unless the app sets it (one dead letter,
``undecodable``), and when it does, decompression stops at what
``eventbus_max_payload_bytes`` allows (one dead letter, ``oversized``); a
normal compressed event is handled.
"""

from __future__ import annotations

import base64
import bz2
import json
import resource
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import kombu.compression
import pytest
import redis
from kombu import Queue

from tests.support import REDIS_TRANSPORT

from .conftest import Env
from .helpers import OrderPlaced, Recorder, wait_for
from .test_bad_input import kombu_element

#: Bytes of zeros a bomb decompresses to.
BOMB_SIZE = 100 * 1024 * 1024
#: How much more memory (peak RSS) than before the worker may have used: far below a bomb.
MEMORY_MARGIN = 40 * 1024 * 1024


def _compressed_zeros(compressor: Any) -> bytes:
    """BOMB_SIZE zeros, compressed a megabyte at a time (never held whole here)."""
    chunk = b"\0" * (1024 * 1024)
    parts = [compressor.compress(chunk) for _ in range(BOMB_SIZE // len(chunk))]
    return b"".join(parts) + compressor.flush()


#: kombu's name of each compression (the ``compression`` header), and a bomb of it.
BOMBS: dict[str, Callable[[], bytes]] = {
    "application/x-gzip": lambda: _compressed_zeros(zlib.compressobj(9)),
    "application/x-bz2": lambda: _compressed_zeros(bz2.BZ2Compressor(9)),
}


@pytest.fixture(params=sorted(BOMBS), ids=lambda name: name.rsplit("-", 1)[-1])
def bomb(request: pytest.FixtureRequest) -> tuple[str, bytes]:
    return request.param, BOMBS[request.param]()


@pytest.fixture
def kombu_decompressed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Sizes of the bodies kombu's own (unbounded) decompression was given, in this process.

    (The test's own reads count too: on RabbitMQ the app's dead letters are
    compressed when it compresses its task messages.)
    """
    calls: list[int] = []
    decoders: dict[str, Callable[[bytes], bytes]] = kombu.compression._decoders
    for name, decode in list(decoders.items()):

        def counted(body: bytes, _decode: Callable[[bytes], bytes] = decode) -> bytes:
            calls.append(len(body))
            return _decode(body)

        monkeypatch.setitem(decoders, name, counted)
    yield calls


def _peak_rss() -> int:
    """This process's peak resident memory, in bytes (the worker runs in it)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _publish_compressed(env: Env, name: str, body: bytes, compression: str) -> str:
    """A handler task message whose body says it is compressed; returns its task id."""
    task_id = f"compressed-{uuid.uuid4().hex[:8]}"
    env.publish_raw(
        body,
        headers={"task": name, "id": task_id, "compression": compression},
        content_type="application/json",
        content_encoding="utf-8",
    )
    return task_id


def _subscribed(env: Env) -> tuple[Recorder, str]:
    recorder = Recorder()
    name = env.name("orders")
    env.bus.subscribe(OrderPlaced, name=name, handler=recorder.handler(name))
    return recorder, name


def _handles_a_good_event(env: Env, recorder: Recorder, name: str) -> None:
    envelope = env.bus.publish(OrderPlaced(order_id="after-the-bomb", quantity=1))
    wait_for(
        lambda: str(envelope.event_id) in {c.event_id for c in recorder.calls(name)},
        message="the worker to handle the good event published after the bomb",
    )


def test_a_compressed_message_is_refused_undecompressed_when_the_app_compresses_nothing(
    env: Env, bomb: tuple[str, bytes], kombu_decompressed: list[int]
) -> None:
    # Given a handler and a worker whose app sets no task_compression
    compression, body = bomb
    recorder, name = _subscribed(env)
    env.start_worker()
    before = _peak_rss()

    # When a compression bomb (100 MB of zeros) lands on the handler queue
    task_id = _publish_compressed(env, name, body, compression)

    # Then it is one dead letter, undecodable, its compressed bytes kept: never decompressed
    wait_for(lambda: len(env.bus.dead_letters) >= 1, message="a dead letter")
    [record] = env.bus.dead_letters.list()
    assert record.task_id == task_id
    assert len(body) not in kombu_decompressed, "kombu decompressed it"
    assert record.raw_size == len(body), "the record keeps something else than the bytes sent"
    assert record.reason == "undecodable"
    assert "compress" in record.exception_message, record.exception_message
    assert "task_compression" in record.exception_message, record.exception_message
    assert _peak_rss() - before < MEMORY_MARGIN
    # And the worker goes on with the next good event
    _handles_a_good_event(env, recorder, name)
    assert len(env.bus.dead_letters) == 1
    assert recorder.count(name) == 1


def test_decompression_stops_at_the_payload_limit_when_the_app_compresses(
    env: Env, bomb: tuple[str, bytes], kombu_decompressed: list[int]
) -> None:
    # Given a handler and a worker whose app compresses its task messages
    env.app.conf.task_compression = "zlib"
    compression, body = bomb
    recorder, name = _subscribed(env)
    env.start_worker()
    before = _peak_rss()

    # When a compression bomb lands on the handler queue
    task_id = _publish_compressed(env, name, body, compression)

    # Then it is one dead letter, oversized: decompressed no further than the limit allows
    wait_for(lambda: len(env.bus.dead_letters) >= 1, message="a dead letter")
    [record] = env.bus.dead_letters.list()
    assert record.task_id == task_id
    assert len(body) not in kombu_decompressed, "kombu decompressed it, unbounded"
    assert record.raw_size == len(body), "the record keeps something else than the bytes sent"
    assert record.reason == "oversized"
    assert str(env.bus.max_payload_bytes) in record.exception_message, record.exception_message
    assert _peak_rss() - before < MEMORY_MARGIN
    # And a normal event, compressed by publish, is handled
    _handles_a_good_event(env, recorder, name)
    assert len(env.bus.dead_letters) == 1


def test_a_compressed_event_is_handled_when_the_app_compresses(env: Env) -> None:
    # Given a handler and a worker whose app compresses its task messages
    env.app.conf.task_compression = "zlib"
    recorder, name = _subscribed(env)
    env.declare_handler_queue()

    # When an event is published (compressed by Celery, as the app asks)
    envelope = env.bus.publish(OrderPlaced(order_id="o-zipped", quantity=3))
    with env.connection() as conn:
        message = wait_for(
            lambda: Queue(env.queue)(conn.default_channel).get(no_ack=False),
            message="the published message on its queue",
        )
        assert message.headers.get("compression") == "application/x-gzip"
        message.requeue()
    env.start_worker()

    # Then the handler runs it, with its data
    wait_for(lambda: recorder.count(name) == 1, message="the compressed event handled")
    [call] = recorder.calls(name)
    assert call.event_id == str(envelope.event_id)
    assert call.envelope.data.order_id == "o-zipped"
    assert len(env.bus.dead_letters) == 0


def test_a_bomb_forging_another_routing_key_on_a_handler_list_is_refused_all_the_same(
    env: Env, kombu_decompressed: list[int]
) -> None:
    if env.kind != "redis" or REDIS_TRANSPORT != "eventbus":
        pytest.skip("eventbus's Redis transport: it says which list it popped (README: Limits)")
    # Given a handler and a worker whose app sets no task_compression
    recorder, name = _subscribed(env)
    env.start_worker()

    # When a zlib bomb lands on the handler queue's list, claiming another
    # routing key and no handler task
    bomb = BOMBS["application/x-gzip"]()
    element = json.loads(kombu_element("celery.forged", headers=json.dumps({"id": "forged"})))
    element["body"] = base64.b64encode(bomb).decode()
    element["headers"]["compression"] = "application/x-gzip"
    with redis.Redis.from_url(env.broker_url) as client:
        client.lpush(env.queue, json.dumps(element))

    # Then it is one dead letter of the queue it was on, never decompressed
    wait_for(lambda: len(env.bus.dead_letters) >= 1, message="a dead letter")
    [record] = env.bus.dead_letters.list()
    assert len(bomb) not in kombu_decompressed, "kombu decompressed it"
    assert (record.reason, record.queue, record.raw_size) == ("undecodable", env.queue, len(bomb))
    _handles_a_good_event(env, recorder, name)
