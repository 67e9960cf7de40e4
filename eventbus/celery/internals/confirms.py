"""Publisher confirms on RabbitMQ, waited for once per batch instead of once per message.

:func:`confirmed` wraps the K publishes of one event: they go out without
waiting, then one wait collects the broker's Acks for all of them (the
task-sent events Celery publishes on the same channel included). A Nack, or no
confirm within ``timeout`` seconds (``eventbus_confirm_timeout``), raises
:class:`PublishNotConfirmed`. It does nothing on other transports (Redis,
memory) or with ``eventbus_publish_confirms = False``.

eventbus puts the producer's channel in confirm mode itself, and does not use
kombu's connection-wide ``confirm_publish`` option: with that option every
channel of the connection waits after each publish, including the channel a
``--pool threads`` worker shares between its threads to send task events, and
py-amqp's wait is not thread-safe there (a worker hangs). A pooled producer's
channel is used by one thread at a time.

How the tags are known: in confirm mode the broker numbers a channel's
messages 1, 2, 3, ... and confirms by that number. A channel eventbus put in
confirm mode counts every publish made on it (inside a block or not, e.g. a
plain ``apply_async`` through the same pooled producer, which then does not
wait). A channel already in confirm mode (the application set kombu's
``confirm_publish``) is also handled: a :class:`_Tags` tracker hears every Ack
and Nack, and the first message of a block is confirmed on its own to learn
the broker's count.

Inside a block, py-amqp's poll before each publish (a non-blocking read for a
``connection.blocked`` notice) reads nothing: the block's wait reads what
arrived (see :func:`_polls_deferred`). With ``coalesce`` the block's messages
are written to the socket together, before its wait
(:mod:`.coalesced_writes`).

The batched wait uses py-amqp's private ``_confirm_selected`` and
``_basic_publish`` and replaces ``basic_publish`` and ``drain_events`` on the
instance for a block: checked once (:mod:`.compat`, feature
``batched_confirms``, an optimisation). Without them, or with
``eventbus_optimizations = False`` (``batched=False``), a block publishes
through py-amqp's own per-message confirm (``basic_publish_confirm``, what
kombu's ``confirm_publish`` option selects): the same guarantee, one wait per
message. Should py-amqp lack even that (feature ``publish_confirms``, a
guarantee), a block raises :class:`~eventbus.errors.IncompatibleDependency`
rather than publish unconfirmed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from amqp import Channel as AmqpChannel  # type: ignore[import-untyped]
from amqp import Connection as AmqpConnection
from amqp import spec
from amqp.exceptions import MessageNacked  # type: ignore[import-untyped]
from kombu.exceptions import OperationalError

from eventbus.celery.internals.coalesced_writes import Coalesced, coalesced
from eventbus.celery.internals.compat import require
from eventbus.errors import PublishError

__all__ = ["DEFAULT_CONFIRM_TIMEOUT", "PublishNotConfirmed", "confirmed", "confirmed_channel"]

DEFAULT_CONFIRM_TIMEOUT = 10.0  #: seconds to wait for a block's confirms (eventbus_confirm_timeout)

_TRACKER = "_eventbus_confirm_tags"  # attribute of the py-amqp channel holding its _Tags

#: A block's publishes whose poll reads nothing; beyond, the polls read again (a
#: long batch leaves about that many confirms at most unread on the socket).
DEFERRED_POLLS_MAX = 1000


class PublishNotConfirmed(PublishError, OperationalError):
    """The broker nacked a message, or did not confirm it in time.

    Also a kombu ``OperationalError``: publishers retry it like a lost
    connection (``EventBus.publish`` by its publish retry policy, then a
    :class:`~eventbus.errors.PublishError`). A message that was not confirmed
    may still have been delivered: a retry can duplicate it (at-least-once).
    """


class _Tags:
    """The delivery tags of one channel in confirm mode, and which are unconfirmed."""

    def __init__(self) -> None:
        self.last: int | None = None  # the broker's newest tag; None: unknown, learn it
        self.pending: set[int] = set()  # published in a block, not confirmed yet
        self.nacked: set[int] = set()  # of the pending ones, those the broker nacked
        self.lost = False  # a confirm did not fit the count: learn the base again
        self.active = False  # a block is publishing on the channel
        self.mine: list[int] = []  # the tags the current block published
        # eventbus numbers every publish of the channel: a confirm of a tag
        # no block waits for is a publish made outside a block.
        self.counts_all = False

    def reset(self, last: int | None) -> None:
        self.last = last
        self.pending.clear()
        self.nacked.clear()
        self.lost = False

    def publish(self) -> int:
        """Count one message published without waiting in a block; return its tag."""
        tag = self.count()
        self.pending.add(tag)
        return tag

    def count(self) -> int:
        """Count one message published on the channel; return its tag."""
        assert self.last is not None
        self.last += 1
        return self.last

    def on_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self._settle(delivery_tag, multiple, nacked=False)

    def on_nack(self, delivery_tag: int, multiple: bool = False) -> None:
        self._settle(delivery_tag, multiple, nacked=True)

    def _settle(self, tag: int, multiple: bool, *, nacked: bool) -> None:
        if self.last is None or tag > self.last:
            # A message nobody counted: published outside a block (py-amqp
            # waited for its confirm), or the first one of a block learning
            # the base. It is the newest.
            self.last = tag
        elif tag not in self.pending and not self.counts_all:
            # The broker confirms each tag once, the newest of a multiple
            # confirm included: the count is off (the channel was reopened
            # and put back in confirm mode behind this tracker's back).
            self.lost = True
        settled = {t for t in self.pending if t <= tag} if multiple else self.pending & {tag}
        self.pending -= settled
        if nacked:
            self.nacked |= settled


def _tags_of(channel: Any) -> _Tags:
    tags: _Tags | None = getattr(channel, _TRACKER, None)
    if tags is None:
        tags = _Tags()
        channel.events["basic_ack"].add(tags.on_ack)
        channel.events["basic_nack"].add(tags.on_nack)
        setattr(channel, _TRACKER, tags)  # lives and dies with the channel
    return tags


def _confirming_channel(producer: Any) -> Any | None:
    """The producer's py-amqp channel (connected); None on other transports."""
    connection = producer.connection
    if connection is None or connection.transport.driver_type != "amqp":
        return None
    if not connection.connected:
        # One attempt: the channel would connect with the connection's own
        # failover options, retrying for seconds outside the publisher's
        # retry policy. A connection error goes to the publisher's retry.
        _connect_once(connection)
    channel = producer.channel
    if isinstance(channel, AmqpChannel) and (not channel.is_open or channel.connection is None):
        # A pooled producer can hold the channel of a connection that was
        # closed since (and re-opened): publishing there would fail and make
        # kombu's retry publish the rest on a new channel, unconfirmed.
        _connect_once(connection)
        producer.revive(connection.default_channel)
        channel = producer.channel
    return channel if isinstance(channel, AmqpChannel) else None


def _connect_once(connection: Any) -> None:
    """Connect, trying each URL of a failover list once (one URL: once), without waiting.

    kombu moves to the next URL of ``broker_url = "amqp://a;amqp://b"`` only
    when an attempt fails and another one follows: with ``max_retries=0`` a
    publisher whose broker went down would try that one forever, and never
    the next. One attempt per URL, and kombu waits only after a whole cycle.
    """
    connection.ensure_connection(max_retries=max(0, len(connection.alt) - 1))


@contextmanager
def confirmed(
    producer: Any,
    *,
    timeout: float | None = None,
    enabled: bool = True,
    batched: bool = True,
    coalesce: bool = False,
) -> Iterator[None]:
    """Publish through ``producer`` in the block; on exit, wait until the broker confirmed all.

    ``timeout`` (default :data:`DEFAULT_CONFIRM_TIMEOUT`) bounds the wait.
    Raises :class:`PublishNotConfirmed` on a Nack or a timeout. A no-op
    unless the producer is on RabbitMQ (py-amqp) and ``enabled``. Not
    ``batched`` (the optimisation off): each publish waits for its own confirm.
    ``coalesce`` (with ``batched``): the block's writes go out together
    (:mod:`.coalesced_writes`).
    """
    channel = _confirming_channel(producer) if enabled else None
    if channel is None:
        with _nacks_translated():  # py-amqp's per-message confirms, if the app set them
            yield
        return
    if batched:
        with confirmed_channel(channel, timeout=timeout, coalesce=coalesce):
            yield
    else:
        with confirmed_each(channel, timeout=timeout):
            yield
    if producer.channel is not channel:
        # kombu's publish retry reconnected in the block and published the
        # rest on a new channel, not in confirm mode: nothing confirmed those.
        raise PublishNotConfirmed("the connection was re-established while publishing")


@contextmanager
def confirmed_channel(
    channel: Any, *, timeout: float | None = None, coalesce: bool = False
) -> Iterator[None]:
    """:func:`confirmed` on a py-amqp channel."""
    limit = DEFAULT_CONFIRM_TIMEOUT if timeout is None else float(timeout)
    tags = _tags_of(channel)
    if tags.active:  # nested: the outer block counts these messages and waits
        yield
        return
    if not channel._confirm_selected:
        channel.confirm_select()
        channel._confirm_selected = True
        tags.reset(0)  # a fresh confirm mode numbers from 1
        if not getattr(channel.connection, "confirm_publish", False):
            # (With the application's confirm_publish, py-amqp's per-message
            # confirms stay for the publishes outside a block.)
            _count_every_publish(channel, tags)
    elif tags.lost:
        tags.reset(None)
    tags.nacked.clear()  # earlier blocks have failed or returned: nobody asks
    tags.mine = []
    counting = getattr(channel, _COUNTING, False)
    per_message = channel.basic_publish

    def publish(*args: Any, **kwargs: Any) -> Any:
        # A channel in py-amqp's own confirm mode, as the application set it.
        if tags.last is None:
            # Confirm mode was on before this tracker: the Ack of one
            # message confirmed on its own tells it the broker's count.
            kwargs["confirm_timeout"] = kwargs.get("confirm_timeout") or limit
            return per_message(*args, **kwargs)
        sent = channel._basic_publish(*args, **kwargs)
        tags.mine.append(tags.publish())  # after the write: a failed one got no tag
        return sent

    with _nacks_translated():  # py-amqp's per-message confirm (learning the base)
        if not counting:
            channel.basic_publish = publish
        tags.active = True
        try:
            with (
                _coalesced(channel, coalesce) as writes,
                _polls_deferred(channel, tags, writes),
            ):
                yield
        finally:
            if not counting:
                channel.basic_publish = per_message
            tags.active = False
        _wait(channel, tags, tags.mine, limit)


_COUNTING = "_eventbus_counts_publishes"


def _coalesced(channel: Any, coalesce: bool) -> AbstractContextManager[Coalesced | None]:
    return coalesced(channel.connection) if coalesce else nullcontext()


@contextmanager
def confirmed_each(channel: Any, *, timeout: float | None = None) -> Iterator[None]:
    """:func:`confirmed` through py-amqp's own per-message confirm: each publish waits for its Ack.

    As py-amqp does for a connection with ``confirm_publish`` (its ``Channel``
    then publishes with ``basic_publish_confirm``), for the block only: a Nack
    raises at once, no confirm within ``timeout`` raises
    :class:`PublishNotConfirmed`. (kombu's publish retry takes py-amqp's
    ``MessageNacked`` for a lost connection and publishes again on a new
    channel, unconfirmed: :func:`confirmed` raises when the channel changed.)
    """
    require("publish_confirms")
    limit = DEFAULT_CONFIRM_TIMEOUT if timeout is None else float(timeout)
    if vars(channel).get("basic_publish") is not None:
        # (A channel that already confirms each publish: py-amqp's confirm_publish.)
        with _nacks_translated():
            yield
        return
    confirm = channel.basic_publish_confirm

    def publish(*args: Any, **kwargs: Any) -> Any:
        kwargs["confirm_timeout"] = kwargs.get("confirm_timeout") or limit
        try:
            return confirm(*args, **kwargs)
        except MessageNacked as exc:
            # (Raised as py-amqp's, kombu would reconnect and publish again unconfirmed.)
            raise PublishNotConfirmed("the broker nacked a message") from exc
        except TimeoutError as exc:  # socket.timeout, from the wait
            raise PublishNotConfirmed(
                f"the broker did not confirm a message within {limit}s"
            ) from exc

    channel.basic_publish = publish
    try:
        with _nacks_translated():
            yield
    finally:
        vars(channel).pop("basic_publish", None)


def _count_every_publish(channel: Any, tags: _Tags) -> None:
    """Number every publish on a channel eventbus put in confirm mode.

    Outside a block a publish does not wait (it is not eventbus's), but it
    takes a tag all the same, so the count stays the broker's.
    """
    raw = channel._basic_publish

    def publish(*args: Any, **kwargs: Any) -> Any:
        # (The count cannot be lost here: every publish of the channel is
        # counted, so no confirm can fall outside it; see _Tags._settle.)
        kwargs.pop("confirm_timeout", None)
        sent = raw(*args, **kwargs)
        tag = tags.count()
        if tags.active:
            tags.pending.add(tag)
            tags.mine.append(tag)
        return sent

    channel.basic_publish = publish
    tags.counts_all = True
    setattr(channel, _COUNTING, True)


@contextmanager
def _polls_deferred(channel: Any, tags: _Tags, writes: Coalesced | None = None) -> Iterator[None]:
    """In the block, the polls of py-amqp's publishes read nothing; the block's wait reads.

    Before each message py-amqp polls the connection (``drain_events(timeout=0)``,
    when the broker sends ``connection.blocked`` notices, as RabbitMQ does): two
    socket timeout changes and a ``recv``, for a frame at most (a confirm of an
    earlier message of the block, mostly). In the block, the block's thread
    is answered at once that nothing arrived, which a poll may always be
    told; every frame stays on the socket, in order, for the block's wait,
    which reads every frame up to the block's last confirm (a
    ``connection.blocked`` notice among them included) before the publisher
    returns. Reads that wait (a queue declare's answer, py-amqp's own
    per-message confirm) and other threads' reads are not touched. After
    :data:`DEFERRED_POLLS_MAX` publishes in one block (a batch) the polls read
    again, a frame each as py-amqp does: the unread confirms stop growing.
    With the block's ``writes`` kept (:mod:`.coalesced_writes`), a read of the
    block's thread that waits sends them first: it may wait for their answer;
    and past that many publishes only the first poll after kept writes went
    out reads, every frame that arrived (confirms answer what went out).
    """
    connection = channel.connection
    if not isinstance(connection, AmqpConnection):
        yield
        return
    drain_events = connection.drain_events
    own = vars(connection).get("drain_events")  # (py-amqp's is the class's)
    owner = threading.get_ident()
    mine = tags.mine

    read_after = [0]  # the kept writes' flush count at the last read

    def deferred(timeout: float | None = None) -> Any:
        if threading.get_ident() == owner:
            if timeout == 0:
                if len(mine) < DEFERRED_POLLS_MAX:
                    raise TimeoutError  # socket.timeout: nothing arrived yet
                if writes is not None:
                    # Confirms answer messages that went out: read once after each
                    # flush of the kept writes, everything that arrived by then.
                    if writes.flushes != read_after[0]:
                        read_after[0] = writes.flushes
                        _read_arrived(drain_events)
                    raise TimeoutError
            elif writes is not None:
                writes.flush()
        return drain_events(timeout=timeout)

    connection.drain_events = deferred
    try:
        yield
    finally:
        if own is None:
            vars(connection).pop("drain_events", None)
        else:
            connection.drain_events = own


def _read_arrived(drain_events: Any) -> None:
    """Read every frame that has arrived on the connection, without waiting."""
    for _ in range(_READ_ARRIVED_MAX):
        try:
            drain_events(timeout=0)
        except TimeoutError:  # socket.timeout: nothing more
            return


#: Methods one read of what arrived takes at most (the broker may still be sending).
_READ_ARRIVED_MAX = 10_000


@contextmanager
def _nacks_translated() -> Iterator[None]:
    """Raise py-amqp's ``MessageNacked`` as :class:`PublishNotConfirmed`.

    kombu's publish retry takes it for a lost connection and raises it as an
    empty ``OperationalError`` once retries are spent; say what happened.
    """
    try:
        yield
    except (MessageNacked, OperationalError) as exc:
        if isinstance(exc, PublishNotConfirmed) or not (
            isinstance(exc, MessageNacked) or isinstance(exc.__cause__, MessageNacked)
        ):
            raise
        raise PublishNotConfirmed("the broker nacked a message") from exc


def _wait(channel: Any, tags: _Tags, mine: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not tags.pending.isdisjoint(mine):
        if tags.lost:
            raise PublishNotConfirmed(
                "the broker's confirms on this channel no longer match its messages"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PublishNotConfirmed(f"the broker did not confirm the messages within {timeout}s")
        try:
            channel.wait([spec.Basic.Ack, spec.Basic.Nack], timeout=remaining)
        except TimeoutError as exc:  # socket.timeout, from the read
            raise PublishNotConfirmed(
                f"the broker did not confirm the messages within {timeout}s"
            ) from exc
    rejected = tags.nacked.intersection(mine)
    if rejected:
        tags.nacked -= rejected
        raise PublishNotConfirmed(f"the broker nacked {len(rejected)} of {len(mine)} message(s)")
