"""A confirm block's writes go out together: kept in order, sent before a read that waits."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import amqp
import pytest
from amqp.transport import TCPTransport

from eventbus.celery.internals import coalesced_writes, confirms
from eventbus.celery.internals.coalesced_writes import coalesced
from eventbus.celery.internals.confirms import confirmed_channel
from tests.unit.test_confirms import FakeChannel


class Socket:
    """What py-amqp's transport writes to (its ``_write``): the writes, in order."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.fail: OSError | None = None

    def sendall(self, data: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.writes.append(bytes(data))


def connection_on(sock: Socket) -> amqp.Connection:
    """A py-amqp connection (never connected) whose transport writes to ``sock``."""
    connection = amqp.Connection("127.0.0.1:1")
    transport = TCPTransport("127.0.0.1:1")
    transport._write = sock.sendall  # as py-amqp's _setup_transport sets it
    transport.connected = True
    connection.transport = transport
    return connection


def test_a_blocks_writes_go_out_as_one_in_order_when_it_ends() -> None:
    # Given a py-amqp connection
    sock = Socket()
    connection = connection_on(sock)

    # When a block writes three messages (py-amqp hands a view of a buffer it reuses)
    buffer = bytearray(b"m1")
    with coalesced(connection) as writes:
        assert writes is not None
        connection.transport.write(memoryview(buffer))
        buffer[:] = b"m2"
        connection.transport.write(memoryview(buffer))
        connection.transport.write(b"m3")
        # Then nothing was written yet
        assert sock.writes == []

    # And at its end all of it went in one write, in order
    assert sock.writes == [b"m1m2m3"]
    # And the transport writes as py-amqp's again
    connection.transport.write(b"after")
    assert sock.writes[-1] == b"after"
    assert "_eventbus_coalesced" not in vars(connection.transport)


def test_a_full_buffer_is_sent_before_the_block_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a block that sends what it kept once 4 bytes are kept
    monkeypatch.setattr(coalesced_writes, "FLUSH_BYTES", 4)
    sock = Socket()
    connection = connection_on(sock)

    # When it writes 2, 2, then 1 bytes
    with coalesced(connection):
        for part in (b"ab", b"cd", b"e"):
            connection.transport.write(part)

    # Then the first four went out together, the rest at the end
    assert sock.writes == [b"abcd", b"e"]


def test_other_threads_write_at_once() -> None:
    # Given a block that kept a write
    sock = Socket()
    connection = connection_on(sock)
    with coalesced(connection):
        connection.transport.write(b"mine")

        # When another thread writes on the same connection
        other = threading.Thread(target=connection.transport.write, args=(b"theirs",))
        other.start()
        other.join(5)

        # Then its write went out at once, the block's is still kept
        assert sock.writes == [b"theirs"]
    assert sock.writes == [b"theirs", b"mine"]


def test_a_second_block_on_the_connection_writes_as_py_amqp() -> None:
    sock = Socket()
    connection = connection_on(sock)
    with coalesced(connection) as first:
        done: list[Any] = []

        def second_block() -> None:
            with coalesced(connection) as second:
                done.append(second)
                connection.transport.write(b"second")

        other = threading.Thread(target=second_block)
        other.start()
        other.join(5)
        assert first is not None and done == [None]
        assert sock.writes == [b"second"]


def test_a_block_that_raised_still_sends_what_it_wrote() -> None:
    # (As py-amqp would have, a write at a time: the broker's count of the
    # channel's messages must stay the publisher's.)
    sock = Socket()
    connection = connection_on(sock)

    with pytest.raises(RuntimeError), coalesced(connection):
        connection.transport.write(b"m1")
        raise RuntimeError("boom")

    assert sock.writes == [b"m1"]
    assert "_write" in vars(connection.transport)  # the socket's sendall again
    connection.transport.write(b"after")
    assert sock.writes[-1] == b"after"


def test_a_failed_write_raises_a_connection_error_and_marks_the_transport() -> None:
    # Given a block that kept a write, on a socket the broker closed
    sock = Socket()
    connection = connection_on(sock)
    sock.fail = BrokenPipeError(32, "Broken pipe")

    # When the block ends, the write fails: a connection error (OSError)
    with pytest.raises(BrokenPipeError), coalesced(connection):
        connection.transport.write(b"m1")

    # And py-amqp knows the connection is gone (kombu reconnects on the next use)
    assert connection.transport.connected is False


def test_the_error_of_a_block_wins_over_the_failed_write() -> None:
    sock = Socket()
    connection = connection_on(sock)
    sock.fail = BrokenPipeError(32, "Broken pipe")

    with pytest.raises(RuntimeError), coalesced(connection):
        connection.transport.write(b"m1")
        raise RuntimeError("boom")


def test_without_a_transport_nothing_is_kept() -> None:
    with coalesced(amqp.Connection("127.0.0.1:1")) as writes:
        assert writes is None
    with coalesced(object()) as writes:
        assert writes is None


# -- in a confirm block ----------------------------------------------------------------


class WritingChannel(FakeChannel):
    """A FakeChannel whose publishes write to a py-amqp connection; reads note what was sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.sock = Socket()
        self.sent_at_reads: list[tuple[float | None, list[bytes]]] = []

        def drain_events(connection: Any, timeout: float | None = None) -> None:
            self.sent_at_reads.append((timeout, list(self.sock.writes)))
            if timeout == 0:
                raise TimeoutError

        monkeypatch.setattr(amqp.Connection, "drain_events", drain_events)
        self.connection = connection_on(self.sock)
        self.connection.confirm_publish = False

    def _basic_publish(self, body: str, **kwargs: Any) -> None:
        self.connection.transport.write(body.encode())
        super()._basic_publish(body, **kwargs)


def test_a_confirm_blocks_messages_are_one_write_before_its_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a channel on a py-amqp connection
    channel = WritingChannel(monkeypatch)

    # When a coalescing block publishes three messages (the broker acks them)
    with confirmed_channel(channel, timeout=1, coalesce=True):
        for body in ("m1", "m2", "m3"):
            channel.basic_publish(body)
        channel.confirm(3, multiple=True)

    # Then they went out in one write, before the wait for their confirms
    assert channel.sock.writes == [b"m1m2m3"]
    assert channel.log[-1] == "wait"


def test_a_read_that_waits_in_the_block_sends_the_kept_writes_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a coalescing block that published a message
    channel = WritingChannel(monkeypatch)
    with confirmed_channel(channel, timeout=1, coalesce=True):
        channel.basic_publish("m1")
        channel.confirm(1)

        # When its thread writes a request and reads its answer (a queue declare)
        channel.connection.transport.write(b"declare")
        channel.connection.drain_events(timeout=2)

    # Then the message and the request were sent before the read
    assert channel.sent_at_reads == [(2, [b"m1declare"])]


def test_without_coalescing_each_message_is_its_own_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    channel = WritingChannel(monkeypatch)

    with confirmed_channel(channel, timeout=1):
        for body in ("m1", "m2"):
            channel.basic_publish(body)
        channel.confirm(2, multiple=True)

    assert channel.sock.writes == [b"m1", b"m2"]


def test_a_long_blocks_polls_read_only_after_kept_writes_went_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a coalescing block allowed 3 publishes with polls that read nothing,
    # whose kept writes go out every 4 bytes (every second 2-byte message)
    monkeypatch.setattr(confirms, "DEFERRED_POLLS_MAX", 3)
    monkeypatch.setattr(coalesced_writes, "FLUSH_BYTES", 4)
    channel = WritingChannel(monkeypatch)

    # When it publishes 7 messages, each after py-amqp's poll
    with confirmed_channel(channel, timeout=1, coalesce=True):
        for n in range(1, 8):
            with contextlib.suppress(TimeoutError):
                channel.connection.drain_events(timeout=0)
            channel.basic_publish(f"m{n}")
        channel.confirm(7, multiple=True)

    # Then past the 3rd, a poll read what had arrived only when messages had
    # gone out since the last read (before the 4th, 5th and 7th), not at every publish
    polls = [sent for timeout, sent in channel.sent_at_reads if timeout == 0]
    assert polls == [
        [b"m1m2"],
        [b"m1m2", b"m3m4"],
        [b"m1m2", b"m3m4", b"m5m6"],
    ]
