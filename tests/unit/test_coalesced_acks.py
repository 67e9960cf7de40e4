"""A RabbitMQ worker's acks of one loop turn: a settled run as one ``multiple`` ack, never more.

The rule under test: ``basic.ack(tag, multiple=True)`` settles every
unacknowledged delivery of the channel up to ``tag``, so it may only be sent
when every tag up to it was settled through the channel. :class:`FakeBroker`
plays the broker's side: it keeps the channel's unacknowledged tags and
fails as RabbitMQ does on an unknown tag (PRECONDITION_FAILED).
"""

from __future__ import annotations

import random
import threading

import pytest

from eventbus.celery.internals import acks, compat
from eventbus.celery.internals.acks import AckCoalescer, coalesce_acks


class UnknownTag(Exception):
    pass


class FakeBroker:
    """One channel's deliveries, as RabbitMQ keeps them."""

    def __init__(self) -> None:
        self.unacked: set[int] = set()
        self.next_tag = 1
        self.frames: list[tuple[str, int, bool]] = []
        self.acked: list[int] = []
        self.rejected: list[int] = []

    def deliver(self, n: int = 1) -> list[int]:
        tags = list(range(self.next_tag, self.next_tag + n))
        self.next_tag += n
        self.unacked.update(tags)
        return tags

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.frames.append(("ack", delivery_tag, multiple))
        if delivery_tag not in self.unacked:
            raise UnknownTag(delivery_tag)
        settled = [t for t in self.unacked if t <= delivery_tag] if multiple else [delivery_tag]
        self.unacked.difference_update(settled)
        self.acked += settled

    def basic_reject(self, delivery_tag: int, requeue: bool) -> None:
        self.frames.append(("reject", delivery_tag, requeue))
        if delivery_tag not in self.unacked:
            raise UnknownTag(delivery_tag)
        self.unacked.discard(delivery_tag)
        self.rejected.append(delivery_tag)


def coalescer_of(broker: FakeBroker) -> tuple[AckCoalescer, list[tuple[BaseException, list[int]]]]:
    errors: list[tuple[BaseException, list[int]]] = []
    coalescer = AckCoalescer(
        broker.basic_ack, broker.basic_reject, lambda e, t: errors.append((e, t))
    )
    return coalescer, errors


def test_a_settled_run_goes_out_as_one_multiple_ack_at_the_turns_end() -> None:
    broker = FakeBroker()
    coalescer, errors = coalescer_of(broker)
    tags = broker.deliver(5)
    for tag in tags:
        coalescer.basic_ack(tag)
    assert broker.frames == []  # held until the turn's end
    coalescer.flush()
    assert broker.frames == [("ack", 5, True)]
    assert sorted(broker.acked) == tags and broker.unacked == set()
    assert (coalescer.frames, coalescer.acks, errors) == (1, 5, [])


def test_a_running_message_is_never_acked_by_a_later_multiple_ack() -> None:
    broker = FakeBroker()
    coalescer, _ = coalescer_of(broker)
    broker.deliver(6)
    for tag in (1, 2, 4, 5):  # 3 and 6 still run
        coalescer.basic_ack(tag)
    coalescer.flush()
    assert broker.unacked == {3, 6}
    assert broker.frames == [("ack", 2, True), ("ack", 4, False), ("ack", 5, False)]
    coalescer.basic_ack(3)
    coalescer.flush()
    assert broker.unacked == {6}
    assert broker.frames[-1] == ("ack", 3, False)  # alone in its turn: as Celery sends it


def test_a_reject_goes_out_at_once_after_the_held_acks() -> None:
    broker = FakeBroker()
    coalescer, _ = coalescer_of(broker)
    broker.deliver(4)
    coalescer.basic_ack(1)
    coalescer.basic_ack(2)
    coalescer.basic_reject(3, requeue=True)
    assert broker.frames == [("ack", 2, True), ("reject", 3, True)]
    coalescer.basic_ack(4)
    coalescer.flush()
    # 3 was rejected (settled): 4 continues the run, alone in its turn
    assert broker.frames[-1] == ("ack", 4, False)
    assert broker.unacked == set() and broker.rejected == [3]


def test_a_tag_settled_elsewhere_or_never_stops_the_run() -> None:
    broker = FakeBroker()
    coalescer, _ = coalescer_of(broker)
    broker.deliver(1)  # tag 1: a delivery this channel never settles (no_ack, another consumer)
    broker.unacked.discard(1)
    broker.deliver(3)
    for tag in (2, 3, 4):
        coalescer.basic_ack(tag)
    coalescer.flush()
    assert broker.frames == [("ack", 2, False), ("ack", 3, False), ("ack", 4, False)]
    assert broker.unacked == set()


def test_acks_from_another_thread_or_with_multiple_go_out_at_once() -> None:
    broker = FakeBroker()
    coalescer, _ = coalescer_of(broker)
    broker.deliver(5)
    coalescer.basic_ack(1)
    thread = threading.Thread(target=coalescer.basic_ack, args=(2,))
    thread.start()
    thread.join()
    assert ("ack", 2, False) in broker.frames  # sent by that thread, not held
    coalescer.basic_ack(4, multiple=True)  # Celery never does; someone else might
    assert broker.frames[-2:] == [("ack", 1, False), ("ack", 4, True)]  # held ones first
    coalescer.basic_ack(5)
    coalescer.flush()
    assert broker.unacked == set()


def test_an_ack_that_cannot_be_sent_is_reported_with_its_tags() -> None:
    broker = FakeBroker()
    coalescer, errors = coalescer_of(broker)
    broker.deliver(3)
    for tag in (1, 2, 3):
        coalescer.basic_ack(tag)
    broker.unacked.clear()  # the connection is gone: every tag is unknown
    coalescer.flush()
    assert [tags for _, tags in errors] == [[1, 2, 3]]
    coalescer.flush()
    assert len(errors) == 1  # not held again: the broker delivers them again


def test_past_max_tracked_it_holds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acks, "MAX_TRACKED", 10)
    broker = FakeBroker()
    coalescer, _ = coalescer_of(broker)
    broker.deliver(30)  # tag 1 never settles
    for tag in range(2, 14):
        coalescer.basic_ack(tag)
        coalescer.flush()
    assert not coalescer.holding
    coalescer.basic_ack(14)
    assert broker.frames[-1] == ("ack", 14, False)  # at once
    assert broker.unacked == {1} | set(range(15, 31))


@pytest.mark.parametrize("seed", range(40))
def test_random_turns_settle_exactly_what_was_asked(seed: int) -> None:
    """Random deliveries, acks, rejects and turns: each asked tag settled once, no other."""
    rng = random.Random(seed)
    broker = FakeBroker()
    coalescer, errors = coalescer_of(broker)
    running: list[int] = []
    asked_ack: set[int] = set()
    asked_reject: set[int] = set()
    for _turn in range(200):
        running += broker.deliver(rng.randint(0, 4))
        rng.shuffle(running)
        for _ in range(rng.randint(0, len(running))):
            tag = running.pop()
            if rng.random() < 0.1:
                coalescer.basic_reject(tag, requeue=rng.random() < 0.5)
                asked_reject.add(tag)
            else:
                coalescer.basic_ack(tag)
                asked_ack.add(tag)
        coalescer.flush()
        assert broker.unacked == set(running)  # nothing running was settled
    assert errors == []
    assert sorted(broker.acked) == sorted(asked_ack)
    assert sorted(broker.rejected) == sorted(asked_reject)
    assert coalescer.acks == len(asked_ack)


class FakePoller:
    def __init__(self) -> None:
        self.ready: list[list[tuple[int, int]]] = []  # what each poll(0) finds
        self.polls: list[float | None] = []

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        self.polls.append(timeout)
        return self.ready.pop(0) if self.ready else []


class FakeHub:
    def __init__(self) -> None:
        self.poller = FakePoller()
        self.on_close: set = set()

    def close(self) -> None:
        for callback in list(self.on_close):
            callback(self)


class FakeChannel(FakeBroker):
    pass


def test_held_acks_go_out_before_the_loop_would_wait() -> None:
    hub, channel = FakeHub(), FakeChannel()
    undo = coalesce_acks(hub, channel, hold=4)
    channel.deliver(6)
    channel.basic_ack(1)
    channel.basic_ack(2)
    hub.poller.ready = [[(7, 1)]]  # busy: a socket is readable
    assert hub.poller.poll(10.0) == [(7, 1)]
    assert channel.frames == []  # held while the loop has events to handle
    assert hub.poller.poll(10.0) == []  # nothing ready: the poll would wait
    assert channel.frames == [("ack", 2, True)]
    assert hub.poller.polls == [0, 0, 10.0]
    for tag in (3, 4, 5, 6):  # as many as the hold: out at once, whatever is ready
        channel.basic_ack(tag)
    hub.poller.ready = [[(7, 1)]]
    hub.poller.poll(10.0)
    assert channel.frames[-1] == ("ack", 6, True) and channel.unacked == set()
    undo()


def test_a_busy_loop_holds_an_ack_no_longer_than_max_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(acks.time, "monotonic", lambda: now[0])
    hub, channel = FakeHub(), FakeChannel()
    coalesce_acks(hub, channel, hold=4)
    channel.deliver(1)
    channel.basic_ack(1)
    hub.poller.ready = [[(7, 1)], [(7, 1)]]
    hub.poller.poll(1.0)
    assert channel.frames == []
    now[0] += acks.MAX_HOLD_SECONDS
    hub.poller.poll(1.0)
    assert channel.frames == [("ack", 1, False)]


def test_acks_go_out_at_once_after_close_and_undo_restores_the_channel() -> None:
    hub, channel = FakeHub(), FakeChannel()
    poll = hub.poller.poll
    undo = coalesce_acks(hub, channel, hold=4)
    channel.deliver(3)
    channel.basic_ack(1)
    channel.basic_ack(2)
    hub.close()  # kombu's on_close: what is held goes out
    assert channel.frames == [("ack", 2, True)]
    channel.basic_ack(3)  # an ack Celery queued, run by kombu after on_close
    assert channel.frames[-1] == ("ack", 3, False)
    undo()
    assert hub.on_close == set()
    assert hub.poller.poll == poll
    assert "basic_ack" not in channel.__dict__  # the class's own again


@pytest.mark.parametrize(
    ("setting", "env", "on"),
    [
        (None, None, True),
        (False, None, False),
        (None, "0", False),
        (None, "off", False),
        (True, "0", True),
        ("false", None, False),
        (None, "1", True),
    ],
)
def test_the_setting_and_its_environment_variable_turn_it_off(
    monkeypatch: pytest.MonkeyPatch, setting: object, env: str | None, on: bool
) -> None:
    if env is None:
        monkeypatch.delenv(acks.ENV, raising=False)
    else:
        monkeypatch.setenv(acks.ENV, env)
    assert compat.switched_on({acks.SETTING: setting}, acks.SETTING, acks.ENV) is on
