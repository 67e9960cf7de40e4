"""Publisher confirms batched per block: the tag accounting, on a scripted fake channel."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import defaultdict, deque
from types import SimpleNamespace
from typing import Any

import amqp
import pytest
from amqp.exceptions import MessageNacked
from kombu import Connection, Queue
from kombu.exceptions import OperationalError

from eventbus import EventBus, PublishError
from eventbus.celery.internals import confirms
from eventbus.celery.internals.confirms import PublishNotConfirmed, confirmed, confirmed_channel
from tests.support import make_app


class FakeChannel:
    """A py-amqp channel's confirm surface, with the broker's side scripted by the test.

    The broker numbers the messages of a channel in confirm mode from 1.
    ``confirm(tag)`` queues an Ack (or Nack) frame; ``wait`` delivers one
    queued frame to the ``events`` listeners, or times out when none is queued.
    As in py-amqp, ``basic_publish`` does not wait unless the connection has
    the application's ``confirm_publish``: then it is the per-message
    confirm (select confirm mode once, publish, wait).
    """

    def __init__(self, *, confirm_publish: bool = False, in_confirm_mode_at: int | None = None):
        self.connection = SimpleNamespace(
            confirm_publish=confirm_publish or bool(in_confirm_mode_at)
        )
        self.events: defaultdict[str, set[Any]] = defaultdict(set)
        self._confirm_selected = in_confirm_mode_at is not None
        self.broker_tag = in_confirm_mode_at or 0  # the broker's count of this channel
        self.frames: deque[tuple[str, int, bool]] = deque()
        self.log: list[str] = []  # "publish:<tag>", "wait", "select", in order
        self.nack_next = False  # the broker nacks the next per-message publish
        self.basic_publish = (
            self.basic_publish_confirm if self.connection.confirm_publish else self._basic_publish
        )

    def confirm_select(self) -> None:
        self.broker_tag = 0
        self.log.append("select")

    def confirm(self, tag: int, *, multiple: bool = False, nack: bool = False) -> None:
        self.frames.append(("basic_nack" if nack else "basic_ack", tag, multiple))

    def _basic_publish(self, body: str, **kwargs: Any) -> None:
        self.broker_tag += 1
        self.log.append(f"publish:{self.broker_tag}")

    def basic_publish_confirm(self, body: str, **kwargs: Any) -> None:
        if not self._confirm_selected:
            self._confirm_selected = True
            self.confirm_select()
        self._basic_publish(body)
        self.confirm(self.broker_tag, nack=self.nack_next)
        if self.wait(["ack", "nack"], timeout=kwargs.get("confirm_timeout")) == "basic_nack":
            raise MessageNacked()

    def wait(self, methods: list[Any], timeout: float | None = None) -> str:
        self.log.append("wait")
        if not self.frames:
            raise TimeoutError("timed out")  # socket.timeout, as py-amqp raises it
        kind, tag, multiple = self.frames.popleft()
        for listener in list(self.events[kind]):
            listener(tag, multiple)
        return kind

    def waits(self) -> int:
        return self.log.count("wait")


def publish_block(channel: FakeChannel, count: int, *confirms: dict[str, Any]) -> None:
    """Publish ``count`` messages in one block; the broker then sends ``confirms``."""
    with confirmed_channel(channel, timeout=1):
        for i in range(count):
            channel.basic_publish(f"m{i}")
        for frame in confirms:
            channel.confirm(**frame)


# -- a channel eventbus puts in confirm mode (the default) ------------------------


def test_a_block_is_confirmed_by_one_wait_after_all_its_publishes() -> None:
    # Given a channel not in confirm mode (the application did not set confirm_publish)
    channel = FakeChannel()

    # When three messages are published in a block and the broker acks them at once
    publish_block(channel, 3, {"tag": 3, "multiple": True})

    # Then confirm mode was selected, the three went out without waiting, then one wait
    assert channel.log == ["select", "publish:1", "publish:2", "publish:3", "wait"]


def test_acks_one_by_one_in_any_order_are_all_waited_for() -> None:
    channel = FakeChannel()

    publish_block(channel, 3, {"tag": 2}, {"tag": 3}, {"tag": 1})

    assert channel.waits() == 3
    assert not channel.frames


def test_a_multiple_ack_settles_every_tag_up_to_it() -> None:
    # Given a first block whose messages were all confirmed
    channel = FakeChannel()
    publish_block(channel, 2, {"tag": 2, "multiple": True})

    # When a second block gets a multiple ack for part of it, then a single one
    publish_block(channel, 3, {"tag": 4, "multiple": True}, {"tag": 5})

    # Then it waited for both frames, and its tags continued from the first block's
    assert channel.log[-5:] == ["publish:3", "publish:4", "publish:5", "wait", "wait"]
    assert not channel.frames


def test_a_nack_raises_a_retryable_publish_error() -> None:
    channel = FakeChannel()

    with pytest.raises(PublishNotConfirmed, match="nacked 1 of 3") as raised:
        publish_block(channel, 3, {"tag": 1}, {"tag": 2, "nack": True}, {"tag": 3})

    # A PublishError for users, a kombu OperationalError for publish retry loops
    assert isinstance(raised.value, PublishError)
    assert isinstance(raised.value, OperationalError)


def test_a_multiple_nack_rejects_every_tag_up_to_it() -> None:
    channel = FakeChannel()

    with pytest.raises(PublishNotConfirmed, match="nacked 2 of 3"):
        publish_block(channel, 3, {"tag": 2, "multiple": True, "nack": True}, {"tag": 3})


def test_a_nack_of_an_earlier_block_does_not_fail_the_next() -> None:
    # Given a block that failed on a nack
    channel = FakeChannel()
    with pytest.raises(PublishNotConfirmed):
        publish_block(channel, 1, {"tag": 1, "nack": True})

    # When the next block's messages are acked, it returns
    publish_block(channel, 1, {"tag": 2})
    assert channel.log[-2:] == ["publish:2", "wait"]


def test_no_confirm_in_time_raises_instead_of_hanging() -> None:
    channel = FakeChannel()

    with pytest.raises(PublishNotConfirmed, match="did not confirm"):
        publish_block(channel, 2, {"tag": 1})

    # And the next block's accounting is not disturbed by the late ack
    channel.confirm(tag=2)
    publish_block(channel, 1, {"tag": 3})
    assert not channel.frames


def test_publishes_outside_a_block_do_not_wait_but_keep_the_count() -> None:
    # Given a channel a block put in confirm mode
    channel = FakeChannel()
    publish_block(channel, 2, {"tag": 2, "multiple": True})

    # When two messages are published outside a block (a plain apply_async
    # through the same pooled producer)
    channel.basic_publish("outside-1")
    channel.basic_publish("outside-2")

    # Then neither waited for its confirm
    assert channel.log[-2:] == ["publish:3", "publish:4"]
    # And the next block numbers on from 5: the broker's acks of 3 and 4
    # (delivered to it first) and of its own settle it
    channel.confirm(tag=3)
    channel.confirm(tag=4)
    publish_block(channel, 2, {"tag": 6, "multiple": True})
    assert channel.log[-5:] == ["publish:5", "publish:6", "wait", "wait", "wait"]
    assert not channel.frames


def test_a_block_waits_for_its_own_tags_not_for_those_published_outside() -> None:
    # Given a confirmed channel with a message published outside a block, never confirmed yet
    channel = FakeChannel()
    publish_block(channel, 1, {"tag": 1})
    channel.basic_publish("outside")

    # When a block's one message (tag 3) is acked on its own
    publish_block(channel, 1, {"tag": 3})

    # Then the block returned after one wait, not waiting for tag 2
    assert channel.log[-2:] == ["publish:3", "wait"]


def test_a_channel_reopened_out_of_confirm_mode_is_selected_again() -> None:
    channel = FakeChannel()
    publish_block(channel, 3, {"tag": 3, "multiple": True})
    channel._confirm_selected = False  # py-amqp reopens a channel after a channel error

    publish_block(channel, 1, {"tag": 1})

    assert channel.log[-3:] == ["select", "publish:1", "wait"]


def test_an_error_in_the_block_skips_the_wait_and_keeps_the_count() -> None:
    # Given a block that published one message, then failed
    channel = FakeChannel()
    with pytest.raises(RuntimeError), confirmed_channel(channel, timeout=1):
        channel.basic_publish("m")
        raise RuntimeError("boom")

    # Then it did not wait
    assert channel.waits() == 0
    # And the next block counts that message: its own is tag 2
    publish_block(channel, 1, {"tag": 1}, {"tag": 2})
    assert channel.log[-3:] == ["publish:2", "wait", "wait"]


def test_a_nested_block_leaves_the_wait_to_the_outer_one() -> None:
    channel = FakeChannel()

    with confirmed_channel(channel, timeout=1):
        channel.basic_publish("outer")
        with confirmed_channel(channel, timeout=1):
            channel.basic_publish("inner")
        channel.confirm(tag=2, multiple=True)

    assert channel.log == ["select", "publish:1", "publish:2", "wait"]


# -- a channel in py-amqp's own confirm mode (the application set confirm_publish) --


def test_unknown_base_is_learned_from_one_message_confirmed_on_its_own() -> None:
    # Given a channel already in py-amqp's confirm mode, 41 messages into its count
    channel = FakeChannel(in_confirm_mode_at=41)

    # When a block publishes three messages
    publish_block(channel, 3, {"tag": 44, "multiple": True})

    # Then the first was confirmed on its own (its ack says 42), the rest in one wait
    assert channel.log == ["publish:42", "wait", "publish:43", "publish:44", "wait"]

    # And the next block batches all of its messages
    publish_block(channel, 2, {"tag": 46, "multiple": True})
    assert channel.log[-3:] == ["publish:45", "publish:46", "wait"]


def test_a_nack_while_learning_the_base_raises_a_publish_error() -> None:
    channel = FakeChannel(in_confirm_mode_at=7)
    channel.nack_next = True

    with pytest.raises(PublishNotConfirmed, match="nacked") as raised:
        publish_block(channel, 2)

    assert isinstance(raised.value.__cause__, MessageNacked)


def test_the_applications_confirms_stay_per_message_outside_a_block() -> None:
    # Given a channel of a connection with the application's confirm_publish,
    # not in confirm mode yet: the block selects it and batches
    channel = FakeChannel(confirm_publish=True)
    publish_block(channel, 2, {"tag": 2, "multiple": True})
    assert channel.log == ["select", "publish:1", "publish:2", "wait"]

    # When the application publishes outside a block
    channel.basic_publish("outside-1")
    channel.basic_publish("outside-2")

    # Then each of its messages is still confirmed on its own
    assert channel.log[-4:] == ["publish:3", "wait", "publish:4", "wait"]
    # And the next block counts on from 5 without learning the base again
    publish_block(channel, 2, {"tag": 6, "multiple": True})
    assert channel.log[-3:] == ["publish:5", "publish:6", "wait"]


def test_publishes_outside_a_block_keep_the_learned_count() -> None:
    # Given a channel in py-amqp's confirm mode a block has used
    channel = FakeChannel(in_confirm_mode_at=3)
    publish_block(channel, 2, {"tag": 5, "multiple": True})

    # When two messages are published outside a block (confirmed one by one)
    channel.basic_publish("outside-1")
    channel.basic_publish("outside-2")

    # Then the next block counts on from 8
    publish_block(channel, 2, {"tag": 9, "multiple": True})
    assert channel.log[-3:] == ["publish:8", "publish:9", "wait"]


def test_a_count_that_no_longer_fits_fails_fast_and_is_relearned() -> None:
    # Given a tracked channel in py-amqp's confirm mode that was reopened and
    # put back in confirm mode behind the tracker's back: the broker counts from 1 again
    channel = FakeChannel(in_confirm_mode_at=10)
    publish_block(channel, 5, {"tag": 15, "multiple": True})
    channel.broker_tag = 0

    # When a block publishes, its acks do not fit the count: an error, not a timeout
    with pytest.raises(PublishNotConfirmed, match="no longer match"):
        publish_block(channel, 2, {"tag": 2, "multiple": True})

    # And the next block learns the base again and succeeds
    publish_block(channel, 2, {"tag": 4, "multiple": True})
    assert channel.log[-4:] == ["publish:3", "wait", "publish:4", "wait"]


def test_an_error_in_the_block_restores_per_message_confirms() -> None:
    # Given a channel in py-amqp's confirm mode whose count a block has learned
    channel = FakeChannel(in_confirm_mode_at=1)
    publish_block(channel, 1)

    # When a block publishes a message, then fails
    with pytest.raises(RuntimeError), confirmed_channel(channel, timeout=1):
        channel.basic_publish("m")
        raise RuntimeError("boom")

    # Then that message was not waited for
    assert channel.log[-1] == "publish:3"
    # And a publish outside a block is confirmed on its own again
    channel.basic_publish("outside")
    assert channel.log[-2:] == ["publish:4", "wait"]


# -- where confirms do nothing ------------------------------------------------------


def test_other_transports_are_left_alone() -> None:
    # Given a producer on kombu's in-memory transport
    queue = Queue("confirms-test")
    with Connection("memory://") as conn, conn.Producer() as producer:
        # When it publishes in a confirmed block
        with confirmed(producer, timeout=1):
            producer.publish({"n": 1}, routing_key=queue.name, declare=[queue])

        # Then the message is there, as without the block
        message = queue(conn.default_channel).get(no_ack=True)
        assert message is not None and message.payload == {"n": 1}


def test_disabled_confirms_do_not_touch_the_connection() -> None:
    # Given a producer on RabbitMQ, not connected (nothing listens on port 1)
    with Connection("amqp://guest:guest@127.0.0.1:1//") as conn:
        producer = conn.Producer()

        # When a block is entered with confirms off, nothing connects or fails
        with confirmed(producer, timeout=1, enabled=False):
            pass

        assert not conn.connected


def test_a_publisher_whose_broker_is_down_tries_the_next_url_of_its_failover_list() -> None:
    # Given a failover list whose first broker is down (nothing listens on
    # port 1) and whose second takes connections but never answers
    with socket.create_server(("127.0.0.1", 0)) as second:
        port = second.getsockname()[1]
        url = f"amqp://guest:guest@127.0.0.1:1//;amqp://guest:guest@127.0.0.1:{port}//"
        with Connection(url, connect_timeout=1) as conn:
            producer = conn.Producer()

            # When a confirmed block connects, and fails
            with pytest.raises(OperationalError), confirmed(producer, timeout=1):
                pass

        # Then it tried the second broker too (its connection waits to be accepted)
        second.settimeout(0)
        try:
            accepted, _ = second.accept()
        except BlockingIOError:
            pytest.fail("the publisher never tried the second URL of its failover list")
        accepted.close()


@pytest.mark.parametrize(
    "url",
    ["amqp://guest:guest@127.0.0.1:5672//", "redis://127.0.0.1:6379/9"],
    ids=["rabbitmq", "redis"],
)
def test_the_bus_leaves_the_transport_options_alone(url: str) -> None:
    # Given an app (nothing connects) with its own transport options
    configured = {"visibility_timeout": 60}
    app = make_app(url, broker_transport_options=configured)
    try:
        # When a bus is created on it
        EventBus(app, default_queue="q", dead_letter_queue="q.dlq")

        # Then no connection-wide confirm_publish was added (it hangs --pool
        # threads workers): eventbus confirms on its own channels
        assert app.conf.broker_transport_options == {"visibility_timeout": 60}
    finally:
        app.close()


# -- py-amqp's polls before each publish, in a block ---------------------------------


class PolledChannel(FakeChannel):
    """A FakeChannel on a real (unconnected) py-amqp connection whose reads are recorded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.reads: list[tuple[str, float | None]] = []  # (thread name, timeout)

        def drain_events(connection: Any, timeout: float | None = None) -> None:
            self.reads.append((threading.current_thread().name, timeout))
            if timeout == 0:
                raise TimeoutError  # nothing arrived

        monkeypatch.setattr(amqp.Connection, "drain_events", drain_events)
        self.connection = amqp.Connection("127.0.0.1:1")  # never connects
        self.connection.confirm_publish = False

    def _basic_publish(self, body: str, **kwargs: Any) -> None:
        # As py-amqp: poll the connection (connection.blocked notices), then send.
        with contextlib.suppress(TimeoutError):
            self.connection.drain_events(timeout=0)
        super()._basic_publish(body, **kwargs)


def test_a_blocks_polls_read_nothing_and_its_wait_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a channel on a py-amqp connection that polls before each publish
    channel = PolledChannel(monkeypatch)

    # When a block publishes three messages (the broker acks them)
    publish_block(channel, 3, {"tag": 3, "multiple": True})

    # Then none of its polls read the socket: the wait after them reads
    assert channel.reads == []
    assert channel.log[-4:] == ["publish:1", "publish:2", "publish:3", "wait"]
    # And after the block the connection is py-amqp's own again: a publish polls
    assert "drain_events" not in vars(channel.connection)
    channel.basic_publish("outside")
    assert channel.reads == [("MainThread", 0)]


def test_reads_that_wait_and_other_threads_polls_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a channel on a py-amqp connection, in a block
    channel = PolledChannel(monkeypatch)
    with confirmed_channel(channel, timeout=1):
        channel.basic_publish("m0")
        channel.confirm(1)

        # When the block's thread reads with a timeout (an RPC's answer, a
        # per-message confirm) and another thread polls the same connection
        channel.connection.drain_events(timeout=None)
        channel.connection.drain_events(timeout=2)
        other = threading.Thread(target=poll, args=(channel,), name="other", daemon=True)
        other.start()
        other.join(5)

    # Then those reads went to the socket, the block's own poll did not
    assert channel.reads == [("MainThread", None), ("MainThread", 2), ("other", 0)]


def poll(channel: PolledChannel) -> None:
    with contextlib.suppress(TimeoutError):
        channel.connection.drain_events(timeout=0)


def test_a_long_blocks_polls_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a block allowed 3 publishes with polls that read nothing
    monkeypatch.setattr(confirms, "DEFERRED_POLLS_MAX", 3)
    channel = PolledChannel(monkeypatch)

    # When it publishes 5 messages
    publish_block(channel, 5, {"tag": 5, "multiple": True})

    # Then the polls of the 4th and 5th read again (confirms left unread stay bounded)
    assert channel.reads == [("MainThread", 0), ("MainThread", 0)]


def test_an_error_in_the_block_gives_the_connection_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a channel on a py-amqp connection
    channel = PolledChannel(monkeypatch)

    # When a block fails after a publish
    with pytest.raises(RuntimeError), confirmed_channel(channel, timeout=1):
        channel.basic_publish("m0")
        raise RuntimeError("boom")

    # Then the connection polls again as py-amqp does
    assert "drain_events" not in vars(channel.connection)
    channel.basic_publish("outside")
    assert channel.reads == [("MainThread", 0)]
