"""kombu's Redis transport, with a take-and-record that is one atomic step.

kombu's Redis transport takes a message off a queue with ``BRPOP`` and
records it as unacked (``ZADD unacked_index`` and ``HSET unacked``, in
``QoS.append``) in a second round trip. A consumer killed between the two,
or a Redis crashing between them, loses that message for good: it is on no
queue and in no unacked hash (celery/kombu#1733, celery/celery#7950).

Here a consumer sends ``EVALSHA`` of a Lua script instead of ``BRPOP``: over
the same keys ``BRPOP`` would wait on (the channel's queue order, each
priority step, ``global_keyprefix``), the script records the first available
message exactly as ``QoS.append`` would and pops it, and returns it. Redis
runs a script atomically and writes its effects to the AOF as one unit, so
no kill and no crash falls between the take and the record. ``QoS.append``
then only does the in-process bookkeeping for such a message.

The script does not block. When every queue is empty it returns nothing, and
the channel waits for Redis to say that one of its queues changed
(:mod:`.redis_wake`: client-side caching invalidations, ``CLIENT TRACKING``,
on a second connection the event loop watches), then takes again; it looks
anyway every ``eventbus_idle_poll_interval`` seconds (2 s), one ``EXISTS``.
Where Redis cannot tell it (notifications refused, or off:
``eventbus_idle_wake = False``) it polls every ``eventbus_poll_interval``
seconds instead (transport option, default :data:`DEFAULT_POLL_INTERVAL`). A
hub timer wakes an idle worker's event loop, and ``drain_events`` waits no
longer than the next look. A busy consumer gets a message from every take,
and never arms, so a busy worker is neither slowed nor told of every push.

In a worker (a connection registered with an event loop), acks are sent
together: ``QoS.ack`` frees the prefetch slot at once, and the records of
the acked messages are removed (``HDEL``/``ZREM``) for all of them in one
pipeline, every ``eventbus_ack_interval`` seconds (transport option,
default :data:`DEFAULT_ACK_INTERVAL`; 0 sends each ack at once, as kombu
does), when :data:`ACK_BATCH_MAX` are waiting, and when the channel closes.
A worker killed in between leaves those records, and its messages run again
after ``visibility_timeout``: at least once, as with a kill just before an
ack. Without an event loop every ack is sent at once. The pipeline is not a
``MULTI`` (kombu's is): a Redis at ``maxmemory`` refuses ``MULTI`` but still
deletes, so acks go through a full Redis; acks that fail are retried at
each interval, with one warning until they go through again.

Whatever bytes sit on a list, the consumer gets a message, and a recorded
one. kombu's transport raises out of ``drain_events`` on an element that is
not a JSON kombu message (not JSON, a JSON array, a body that is not base64,
headers nested deeper than ``json`` goes), which stops a Celery worker, and
the element is gone. Here an element the script cannot read as a kombu
message is taken as a stand-in (:mod:`eventbus.celery.refused`): a kombu
message of a content type nothing decodes, with the element's first bytes and
its size, recorded as unacked under a delivery tag the consumer passes (a
fresh one per stand-in). So is an element the consumer finds unreadable after
Redis could read it (its record's tag kept), and one larger than its queue's
limit (:meth:`Transport.eventbus_limit`; an EventBus worker sets it for its
handler queues): the script checks the size before it decodes anything, so
Redis never spends time decoding such an element. eventbus's worker
dead-letters stand-ins; kombu's restore after ``visibility_timeout`` puts a
stand-in back like any message.

A Redis that refuses the script (out of memory: ``maxmemory`` with
``noeviction`` refuses its first write) takes nothing: the channel polls
again :data:`ERROR_BACKOFF` seconds later. The log says so once when Redis
starts refusing, once when it takes the script again, and only at DEBUG in
between; kombu's restore of unacked messages, which a full Redis refuses
too (its mutex), is logged the same way instead of raising out of
``drain_events`` (which stops a worker without an event loop) or into the
event loop's timer.

Everything else is kombu's: publishing, rejects, the restore of
unacked messages after ``visibility_timeout``, fanout (``LISTEN``),
priorities, health checks. Messages of consumers that do not ack
(``no_ack``) are popped without a record, as kombu does.

An app with an ``EventBus`` gets it on a ``redis://`` broker, and
:class:`SecureTransport` on ``rediss://``, unless ``broker_transport`` is set
(:mod:`eventbus.celery.transport_selection` chooses from the app's broker URL).

This module subclasses kombu's private code: every name it overrides or uses
is listed in :mod:`.reaches` (feature ``redis_transport``) and checked once,
with kombu's version, by :mod:`.compat`. A kombu without one of them, or
outside the supported range, makes the transport refuse to start
(:class:`~eventbus.errors.IncompatibleDependency`, naming
``eventbus_redis_transport = "kombu"``) instead of running half-patched; the
module itself still imports.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from queue import Empty
from time import monotonic, time
from typing import Any

import kombu.connection as kombu_connection
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from kombu.utils.uuid import uuid
from redis.exceptions import NoScriptError, ResponseError

from eventbus.celery.internals.compat import transport_problem
from eventbus.celery.internals.redis_wake import (
    DEFAULT_IDLE_POLL_INTERVAL,
    UNANNOUNCED_LIMIT,
    WAKE,
    Wake,
    say_once,
    wake_available,
)
from eventbus.celery.internals.taken import note_taken_from
from eventbus.celery.refused import KEPT_BYTES, stand_in
from eventbus.errors import IncompatibleDependency

# kombu's annotations of these classes are partial: subclass them as untyped.
kombu_redis: Any = importlib.import_module("kombu.transport.redis")


class _Missing:
    """Stands for a kombu class that is gone: the module imports, the transport refuses."""

    from_transport_options: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise IncompatibleDependency(transport_problem() or "kombu's Redis transport moved")


def _enabled(value: Any) -> bool:
    """A transport option's truth: ``"0"``, ``"false"``, ``"no"``, ``"off"`` are False."""
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def _kombu(name: str) -> Any:
    """kombu's Redis class ``name``, or a stand-in that refuses (checked by compat)."""
    return getattr(kombu_redis, name, _Missing)


__all__ = [
    "ACK_BATCH_MAX",
    "DEFAULT_ACK_INTERVAL",
    "DEFAULT_IDLE_POLL_INTERVAL",
    "DEFAULT_POLL_INTERVAL",
    "TAKE_SCRIPT",
    "Channel",
    "QoS",
    "SecureTransport",
    "Transport",
]

logger = logging.getLogger(__name__)

#: Seconds an idle channel that Redis does not notify waits before it looks again.
DEFAULT_POLL_INTERVAL = 0.05
#: Seconds a channel waits after Redis refused the script (out of memory, say).
ERROR_BACKOFF = 1.0
#: Seconds a worker's acks wait to be sent together.
DEFAULT_ACK_INTERVAL = 0.02
#: Acks waiting on one channel that are sent at once, without waiting for the interval.
ACK_BATCH_MAX = 100

# What a channel sends at its next poll (see Channel._brpop_start).
TAKE = "take"  #: the take script
WAKE_TAKE = "wake-take"  #: told of a change: the take script, and an arm in the same round trip
ARM = "arm"  #: found nothing: CLIENT CACHING yes + EXISTS (Redis tracks the queue keys)
CHECK = "check"  #: armed, and the safety net is due: EXISTS
#: Replies to read per kind of poll.
REPLIES = {TAKE: 1, WAKE_TAKE: 3, ARM: 2, CHECK: 1}

#: KEYS: the unacked index, the unacked hash, then the queue keys in the order
#: BRPOP would take them. ARGV: the time to record; a fresh delivery tag (for a
#: stand-in); how many bytes of an element a stand-in keeps; then per queue key:
#: "1" to record its message as unacked or "0" not to (a consumer without
#: acks), the queue's name, and its size limit in bytes (0: none).
#: Returns nil, or {position of the key among the queue keys (from 1), the
#: message, its delivery tag if recorded else nil, 1 if the message is a
#: stand-in (the fresh tag is used up) else 0}. An element over its queue's
#: limit is never decoded (only the part after a kombu message's body, for its
#: task name and id); one that is not a kombu message (or over the limit) is
#: taken as a stand-in (:mod:`eventbus.celery.refused`): its first bytes
#: and its size. The writes come before the pop: should Redis refuse a write
#: (out of memory), nothing was taken. The pop is an LTRIM, which, unlike
#: RPOP, does not copy the element into the script a second time.
TAKE_SCRIPT = """
-- The headers of a kombu element, its body unread: kombu writes the body
-- first, in base64 (no quote in it), and the rest is small.
local function headers_of(item)
  if string.sub(item, 1, 10) ~= '{"body": "' then return nil end
  local close = string.find(item, '"', 11, true)
  if not close or #item - close > 65536 then return nil end
  local ok, rest = pcall(cjson.decode, '{' .. string.sub(item, close + 2))
  if ok and type(rest) == 'table' and type(rest['headers']) == 'table' then
    return rest['headers']
  end
  return nil
end

for i = 3, #KEYS do
  local item = redis.call('LINDEX', KEYS[i], -1)
  if item then
    local arg = 4 + (i - 3) * 3
    local record, queue, limit = ARGV[arg] == '1', ARGV[arg + 1], tonumber(ARGV[arg + 2])
    local refused = 'oversized'
    if limit == 0 or #item <= limit then
      refused = 'undecodable'
      local ok, message = pcall(cjson.decode, item)
      if ok and type(message) == 'table' and type(message['properties']) == 'table' then
        local properties = message['properties']
        local info = properties['delivery_info']
        local tag = properties['delivery_tag']
        if type(tag) == 'string' and type(info) == 'table'
            and type(info['exchange']) == 'string'
            and type(info['routing_key']) == 'string' then
          if record then
            redis.call('ZADD', KEYS[1], ARGV[1], tag)
            redis.call('HSET', KEYS[2], tag, '[' .. item .. ','
              .. cjson.encode(info['exchange']) .. ','
              .. cjson.encode(info['routing_key']) .. ']')
          else
            tag = false
          end
          redis.call('LTRIM', KEYS[i], 0, -2)
          return {i - 2, item, tag, 0}
        end
      end
    end
    local headers = {}
    headers['x-eventbus-raw-size'] = #item
    headers['x-eventbus-refused'] = refused
    if refused == 'oversized' then
      -- which task, for the dead letter
      local original = headers_of(item)
      if original then
        for _, name in ipairs({'task', 'id'}) do
          if type(original[name]) == 'string' then
            headers[name] = string.sub(original[name], 1, 200)
          end
        end
      end
    end
    local stand_in = cjson.encode({
      ['body'] = string.sub(item, 1, tonumber(ARGV[3])),
      ['content-encoding'] = 'utf-8',
      ['content-type'] = 'application/x-eventbus-undecodable',
      ['headers'] = headers,
      ['properties'] = {
        ['delivery_info'] = {['exchange'] = '', ['routing_key'] = queue},
        ['delivery_tag'] = ARGV[2],
        ['priority'] = 0,
      },
    })
    local tag = false
    if record then
      tag = ARGV[2]
      redis.call('ZADD', KEYS[1], ARGV[1], tag)
      redis.call('HSET', KEYS[2], tag, '[' .. stand_in .. ',"",' .. cjson.encode(queue) .. ']')
    end
    redis.call('LTRIM', KEYS[i], 0, -2)
    return {i - 2, stand_in, tag, 1}
  end
end
return false
"""
TAKE_SCRIPT_SHA = hashlib.sha1(TAKE_SCRIPT.encode()).hexdigest()


class QoS(_kombu("QoS")):  # type: ignore[misc]
    """kombu's Redis QoS; a message the script recorded is not recorded again.

    In a worker, an ack's records are removed with other acks' (see the module).
    """

    def ack(self, delivery_tag: str) -> None:
        if not self.channel.eventbus_defer_ack(delivery_tag):
            super().ack(delivery_tag)
            return
        virtual.QoS.ack(self, delivery_tag)  # the prefetch slot is free now

    def append(self, message: Any, delivery_tag: str) -> None:
        recorded: set[str] | None = getattr(self.channel.connection, "eventbus_recorded", None)
        if recorded is not None and delivery_tag in recorded:
            recorded.discard(delivery_tag)
            # Only the in-process bookkeeping (prefetch, restore at shutdown).
            virtual.QoS.append(self, message, delivery_tag)
            return
        super().append(message, delivery_tag)


class MultiChannelPoller(_kombu("MultiChannelPoller")):  # type: ignore[misc]
    """kombu's poller; ``get`` waits no longer than an idle channel's next poll."""

    #: The event loop's ``call_later`` (set by :meth:`Transport.register_with_event_loop`).
    call_later: Callable[..., Any] | None = None
    _short_wait = False
    _restore_due = 0.0

    def get(self, callback: Any, timeout: float | None = None) -> Any:
        wait = self.idle_wait()
        if wait is not None and (timeout is None or wait < timeout):
            timeout, self._short_wait = wait, True
        try:
            return super().get(callback, timeout)
        finally:
            self._short_wait = False

    def idle_wait(self) -> float | None:
        """Seconds until the first idle consuming channel polls again (None: none idle)."""
        now = monotonic()
        waits = [
            channel.eventbus_idle_until - now
            for channel in self._channels
            if channel.active_queues and channel.eventbus_idle_until > now
        ]
        return max(min(waits), 0.0) if waits else None

    def on_readable(self, fileno: int) -> Any:
        chan_type = self._fd_to_chan.get(fileno)
        if chan_type is not None and chan_type[1] == WAKE:
            # Read whatever the prefetch: kombu reads a channel's sockets only
            # when it can consume, and an unread wake-up would keep the event
            # loop spinning. Nothing delivered: drain_events goes on waiting.
            chan_type[0].eventbus_notified()
            raise Empty()
        return super().on_readable(fileno)

    def maybe_restore_messages(self) -> Any:
        # drain_events comes back after every short wait: restore at most once a
        # second there, as often as kombu does with its 1 s BRPOP timeout.
        if self._short_wait:
            now = monotonic()
            if now < self._restore_due:
                return None
            self._restore_due = now + 1.0
        try:
            return super().maybe_restore_messages()
        except ResponseError as exc:
            # A full Redis refuses the restore's mutex (SET): kombu raises it out
            # of drain_events (a worker without an event loop stops) or into the
            # event loop's timer (a traceback per restore interval).
            channel = next(iter(self._channels), None)
            if channel is not None and channel.connection is not None:
                channel.connection.eventbus_refused("the restore of unacked messages", exc)
            return None


class Channel(_kombu("Channel")):  # type: ignore[misc]
    """kombu's Redis channel, taking messages with :data:`TAKE_SCRIPT` instead of BRPOP.

    An idle channel waits for Redis's notification (:mod:`.redis_wake`)
    instead of polling, where Redis gives them.
    """

    QoS = QoS

    #: Seconds between two polls of an idle channel that Redis does not notify.
    eventbus_poll_interval = DEFAULT_POLL_INTERVAL
    #: Seconds between two looks of an idle channel that Redis notifies (the safety net).
    eventbus_idle_poll_interval = DEFAULT_IDLE_POLL_INTERVAL
    #: Whether an idle channel asks Redis to notify it (False: it polls).
    eventbus_idle_wake: Any = True
    #: ``monotonic()`` before which the channel does not poll (it found nothing).
    eventbus_idle_until = 0.0
    _eventbus_script_cached = False
    _eventbus_acks_failing = False  # the last try to send acks failed (and was logged)
    _eventbus_polled: list[str] = []

    from_transport_options = (
        *getattr(_kombu("Channel"), "from_transport_options", ()),
        "eventbus_poll_interval",
        "eventbus_idle_poll_interval",
        "eventbus_idle_wake",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._eventbus_no_ack: set[str] = set()
        self._eventbus_acks: list[str] = []  # acked, records not removed yet
        self._eventbus_acks_lock = threading.Lock()  # (pool threads ack)
        #: The delivery tag of the next stand-in (a new one once used).
        self._eventbus_tag = uuid()
        #: (element, its record's tag, queue) while the script's take is delivered.
        self._eventbus_taken: tuple[bytes, str | None, str] | None = None
        #: What the next poll sends (TAKE, WAKE_TAKE, ARM, CHECK), and what is in flight.
        self._eventbus_next = TAKE
        self._eventbus_sent = TAKE
        #: Redis told of a change while a poll was in flight: take again, do not wait.
        self._eventbus_woken = False
        #: The event loop's timer that ends the channel's idle wait.
        self._eventbus_timer: Any = None
        #: The notifications of new messages (None: off, the channel polls).
        self._eventbus_wake: Wake | None = None
        super().__init__(*args, **kwargs)
        if _enabled(self.eventbus_idle_wake) and wake_available():
            self._eventbus_wake = Wake(self)

    def eventbus_defer_ack(self, delivery_tag: str) -> bool:
        """Keep an ack to send with others; False: send it now (no event loop, closing, closed).

        A message whose channel closed (a worker that reconnected) can still be
        acked late, as kombu allows: its channel keeps its connection pool.
        """
        transport = self.connection
        if transport is None or transport.eventbus_ack_timer is None or self._closing:
            return False
        with self._eventbus_acks_lock:
            self._eventbus_acks.append(delivery_tag)
            full = len(self._eventbus_acks) >= ACK_BATCH_MAX
        transport.eventbus_ack_channels.add(self)
        if full:
            self.eventbus_send_acks()
        return True

    def eventbus_send_acks(self) -> None:
        """Remove the records of the acks waiting, in one pipeline."""
        with self._eventbus_acks_lock:
            tags, self._eventbus_acks = self._eventbus_acks, []
        if not tags:
            return
        try:
            # Not in a MULTI: a full Redis (maxmemory) refuses MULTI, and these
            # deletions are what it still takes. The record goes before its index
            # entry: split by a crash, kombu's restore drops an entry whose record is gone.
            with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
                pipe.hdel(self.unacked_key, *tags).zrem(self.unacked_index_key, *tags).execute()
        except Exception:
            # Kept for the next try; if none succeeds (the connection is gone),
            # the records stay and the messages come back after visibility_timeout.
            with self._eventbus_acks_lock:
                self._eventbus_acks[:0] = tags
            if self._eventbus_acks_failing:
                logger.debug("could not send %d acks to Redis; retrying", len(tags))
                return
            self._eventbus_acks_failing = True  # said once, until they go through
            logger.warning("could not send %d acks to Redis; retrying", len(tags), exc_info=True)
            return
        if self._eventbus_acks_failing:
            self._eventbus_acks_failing = False
            logger.warning("acks sent to Redis again")

    def close(self) -> None:
        if not self.closed:
            self.eventbus_send_acks()
            self.connection.eventbus_ack_channels.discard(self)
            self._eventbus_cancel_timer()
        super().close()

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> Any:
        # A consumer without acks never acks: its messages must not be recorded.
        if no_ack:
            self._eventbus_no_ack.add(queue)
        else:
            self._eventbus_no_ack.discard(queue)
        ret = super().basic_consume(
            queue, no_ack=no_ack, callback=callback, consumer_tag=consumer_tag, **kwargs
        )

        # kombu's callback (virtual.Channel.basic_consume), but a message it
        # cannot build (a body that is not base64, headers that are a list...)
        # goes to the consumer as a stand-in, instead of raising out of
        # drain_events and stopping the worker.
        # The message notes the queue it was taken from: its element's routing
        # key is whatever its producer wrote (eventbus.celery.internals.taken).
        def deliver(raw_message: Any) -> Any:
            message = self._eventbus_message(raw_message, queue)
            note_taken_from(message, queue)
            if not no_ack:
                self.qos.append(message, message.delivery_tag)
            return callback(message)

        self.connection._callbacks[queue] = deliver
        self._eventbus_queues_changed()
        return ret

    def _basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        ret = super()._basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            self._eventbus_no_ack.discard(queue)
        self._eventbus_queues_changed()
        return ret

    def _eventbus_queues_changed(self) -> None:
        # Keys nobody tracks yet, or messages of a new queue waiting: take now
        # (then arm over the new set of keys), not after the idle wait.
        self._eventbus_next = TAKE
        self._eventbus_poll_now()

    def _brpop_start(self, timeout: float | None = None) -> None:
        if self.eventbus_idle_until > monotonic():
            return  # idle: a notification, the idle timer (or drain_events) comes back
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        polled = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        prefix = self.global_keyprefix
        connection = self.client.connection
        step = self._eventbus_next if self._eventbus_notifications() else TAKE
        commands: list[tuple[Any, ...]] = []
        if step in (TAKE, WAKE_TAKE):
            commands.append(self._eventbus_take_command(queues, polled))
        if step in (WAKE_TAKE, ARM):
            # Only the command after this one is tracked (OPTIN): the queue keys.
            commands.append(("CLIENT", "CACHING", "YES"))
        if step != TAKE:
            commands.append(("EXISTS", *(prefix + key for key in polled)))
        self._eventbus_sent = step
        self._eventbus_woken = False
        self._eventbus_polled = polled
        self._in_poll = connection
        self._brpop_sent_at = monotonic()
        if len(commands) == 1:
            connection.send_command(*commands[0])
        else:
            connection.send_packed_command(connection.pack_commands(commands))

    def _eventbus_take_command(self, queues: list[str], polled: list[str]) -> tuple[Any, ...]:
        """The take script's command over ``polled`` (the keys of ``queues``, in BRPOP's order)."""
        limits = self.connection.eventbus_element_limits
        per_key: list[str | int] = []
        for _ in self.priority_steps:
            for queue in queues:
                record = self.ack_emulation and queue not in self._eventbus_no_ack
                per_key += ("1" if record else "0", queue, limits.get(queue, 0))
        prefix = self.global_keyprefix
        keys = [
            prefix + self.unacked_index_key,
            prefix + self.unacked_key,
            *(prefix + key for key in polled),
        ]
        script = (
            ("EVALSHA", TAKE_SCRIPT_SHA) if self._eventbus_script_cached else ("EVAL", TAKE_SCRIPT)
        )
        return (*script, len(keys), *keys, repr(time()), self._eventbus_tag, KEPT_BYTES, *per_key)

    def _brpop_read(self, **options: Any) -> bool:
        if not self._in_poll:
            self._eventbus_unsolicited()
            raise Empty()
        try:
            step = self._eventbus_sent
            connection = self.client.connection
            try:
                replies = [self._eventbus_reply(connection) for _ in range(REPLIES[step])]
            except self.connection_errors:
                # Disconnect, so that the next poll reconnects.
                connection.disconnect()
                raise
            if step in (TAKE, WAKE_TAKE) and self._eventbus_took(replies[0]):
                self._eventbus_next = TAKE  # busy: the next take at once
                return True
            self._in_poll = None  # (the connection is free again)
            self._eventbus_found_nothing(step, replies)
            raise Empty()
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _eventbus_reply(self, connection: Any) -> Any:
        """The next reply on the poll connection; an error reply as its exception."""
        try:
            return connection.read_response()
        except self.ResponseError as exc:  # (read: the connection is in step)
            return exc

    def _eventbus_took(self, reply: Any) -> bool:
        """Deliver what the take script took, if it took something."""
        if isinstance(reply, NoScriptError):
            # Redis restarted (or flushed its script cache): EVAL it next time.
            self._eventbus_script_cached = False
            return False
        if isinstance(reply, ResponseError):
            # Out of memory, say: said once, until Redis takes it again.
            self.connection.eventbus_refused(
                f"eventbus's take script (nothing taken; polling again every "
                f"{ERROR_BACKOFF:.1f} s)",
                reply,
            )
            return False
        self._eventbus_script_cached = True
        self.connection.eventbus_taken()
        if not reply:
            return False
        position, item, tag, stand_in = reply
        if stand_in:
            self._eventbus_tag = uuid()  # used up
        self._eventbus_deliver(self._eventbus_polled[int(position) - 1], item, tag)
        return True

    def _eventbus_found_nothing(self, step: str, replies: list[Any]) -> None:
        """Decide the next poll, and how long to wait for it, after a poll that took nothing."""
        wake = self._eventbus_wake
        take = replies[0] if step in (TAKE, WAKE_TAKE) else None
        self._eventbus_next = TAKE
        if isinstance(take, NoScriptError):
            return  # again at once, with EVAL
        if isinstance(take, ResponseError):
            self._eventbus_idle(ERROR_BACKOFF)
            return
        if wake is None:
            self._eventbus_idle(self.eventbus_poll_interval)
            return
        if step == TAKE:
            self._eventbus_next = ARM  # at once: nothing tracked the keys until now
            return
        waiting = replies[-1]  # EXISTS: lists of the channel's queues that hold messages
        if isinstance(waiting, ResponseError) or any(isinstance(r, ResponseError) for r in replies):
            self._eventbus_notifications_off(f"Redis refused the tracking of queue keys: {waiting}")
            return
        if self._eventbus_woken:
            self._eventbus_next = WAKE_TAKE  # told of a change meanwhile
            return
        if waiting:
            if step == CHECK:
                self._eventbus_unannounced(wake)
            return  # a message came since the take: take it now
        self._eventbus_next = CHECK
        self._eventbus_idle(float(self.eventbus_idle_poll_interval))

    # -- notifications (eventbus.celery.internals.redis_wake) ---------------------

    def _eventbus_notifications(self) -> bool:
        """Whether Redis notifies this channel of changes to its queues (set up if need be)."""
        wake = self._eventbus_wake
        if wake is None:
            return False
        try:
            if wake.ready():
                # New tracking: a change meanwhile went unannounced. Take, and arm.
                self._eventbus_next = WAKE_TAKE
        except self.ResponseError as exc:
            self._eventbus_notifications_off(f"Redis refused CLIENT TRACKING: {exc}")
            return False
        return True

    def eventbus_notified(self) -> None:
        """Redis said a key this channel tracks changed (the wake connection is readable)."""
        wake = self._eventbus_wake
        if wake is None:
            return
        if not wake.read():
            # The wake connection is gone: set up again (next poll), take and arm.
            self._eventbus_next = WAKE_TAKE
            self._eventbus_poll_now()
            return
        wake.unannounced = 0
        if self._in_poll:
            self._eventbus_woken = True  # its reply decides (it may say "empty")
        elif self._eventbus_next == CHECK:  # (a busy channel takes next anyway)
            self._eventbus_next = WAKE_TAKE
        self._eventbus_poll_now()

    def _eventbus_unannounced(self, wake: Wake) -> None:
        """The safety net found a message no notification announced: the wake-ups are suspect."""
        wake.unannounced += 1
        if wake.unannounced >= UNANNOUNCED_LIMIT:
            self._eventbus_notifications_off(
                f"{UNANNOUNCED_LIMIT} messages in a row were found by the idle poll, "
                "no notification from Redis announced them"
            )
            return
        logger.info(
            "a message on %s was found by the idle poll, not announced by Redis: "
            "reconnecting the wake connection",
            ", ".join(sorted(set(self.active_queues))),
        )
        wake.forget()

    def _eventbus_notifications_off(self, why: str) -> None:
        """Poll every ``eventbus_poll_interval`` from now on (one warning per process)."""
        wake, self._eventbus_wake = self._eventbus_wake, None
        if wake is None:
            return
        say_once(
            why.split(":")[0],
            "%s; an idle worker polls its queues every %.2f s instead of waiting to be told",
            why,
            float(self.eventbus_poll_interval),
        )
        wake.close()
        self._eventbus_next = TAKE
        self._eventbus_poll_now()
        connection = getattr(self.__dict__.get("client"), "connection", None)
        if connection is not None and connection._sock is not None and not self._in_poll:
            with contextlib.suppress(Exception):  # (best effort: nothing new is tracked anyway)
                connection.send_command("CLIENT", "TRACKING", "OFF")
                connection.read_response()

    def _eventbus_unsolicited(self) -> None:
        """The poll connection is readable with nothing asked: Redis pushed, or closed it."""
        connection = self.client.connection
        try:
            # RESP3: "tracking-redir-broken", the wake connection is gone.
            connection.read_response(push_request=True)
        except (*self.connection_errors, OSError):
            connection.disconnect()  # the next poll reconnects (and tracks again)
        except self.ResponseError:
            pass
        else:
            if self._eventbus_wake is not None:
                self._eventbus_wake.forget()
        self._eventbus_poll_now()

    def _on_connection_disconnect(self, connection: Any) -> None:
        super()._on_connection_disconnect(connection)
        if self._eventbus_wake is not None:
            self._eventbus_wake.lost(connection)

    def _poll_error(self, type: str, **options: Any) -> Any:
        if type == WAKE:  # (drain_events without an event loop: an error event)
            self.eventbus_notified()
            return None
        return super()._poll_error(type, **options)

    def _eventbus_deliver(self, key: str, item: bytes, tag: bytes | None) -> None:
        dest = key.rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(dest)
        recorded: set[str] = self.connection.eventbus_recorded
        delivery_tag = bytes_to_str(tag) if tag is not None else None
        if delivery_tag is not None:
            recorded.add(delivery_tag)
        try:
            try:
                payload = loads(bytes_to_str(item))
            except (ValueError, RecursionError):
                # Redis could read it (or it would be a stand-in), Python cannot:
                # deeper than Python's recursion limit lets json go.
                payload = None
            if payload is None:
                payload = self._eventbus_stand_in(item, delivery_tag, dest)
            self._eventbus_taken = (item, delivery_tag, dest)
            self.connection._deliver(payload, dest)
        finally:
            self._eventbus_taken = None
            # Not seen by QoS.append (delivering it raised first): its record
            # stays in Redis, and kombu's restore brings it back after
            # visibility_timeout, as for a consumer that died holding it.
            if delivery_tag is not None:
                recorded.discard(delivery_tag)

    def _eventbus_stand_in(self, item: bytes, delivery_tag: str | None, queue: str) -> Any:
        """An undecodable element's stand-in, under its record's tag (if it has one)."""
        tag = delivery_tag or uuid()
        return stand_in(item, reason="undecodable", delivery_tag=tag, queue=queue)

    def _eventbus_message(self, raw_message: Any, queue: str) -> Any:
        """kombu's message from what was taken, or the stand-in of an element it cannot read.

        The message class hears which ``queue`` it was taken from (a guard of
        :mod:`eventbus.celery.internals.compression` keys on it; kombu's ignores it).
        """
        try:
            return self.Message(raw_message, channel=self, eventbus_taken_from=queue)
        except Exception as exc:  # RecursionError too: whatever the element holds
            if self._eventbus_taken is None:
                raise  # not taken by the script (a fanout message): kombu's own behaviour
            item, delivery_tag, dest = self._eventbus_taken
            logger.warning(
                "an element of %r is not a kombu message (%s: %.200s): delivered as a stand-in",
                dest,
                type(exc).__name__,
                exc,
            )
            stand_in = self._eventbus_stand_in(item, delivery_tag, dest)
            return self.Message(stand_in, channel=self, eventbus_taken_from=queue)

    def _eventbus_idle(self, seconds: float) -> None:
        """Poll again in ``seconds``: at once when the hub timer fires, or when due."""
        self.eventbus_idle_until = monotonic() + seconds
        self._eventbus_cancel_timer()
        # (no connection: the channel is closing)
        call_later = getattr(getattr(self.connection, "cycle", None), "call_later", None)
        if call_later is not None:
            self._eventbus_timer = call_later(seconds, self._eventbus_due)

    def _eventbus_due(self) -> None:
        self._eventbus_timer = None
        self.eventbus_idle_until = 0.0

    def _eventbus_poll_now(self) -> None:
        """End the idle wait: the next turn of the event loop polls."""
        self.eventbus_idle_until = 0.0
        self._eventbus_cancel_timer()

    def _eventbus_cancel_timer(self) -> None:
        timer, self._eventbus_timer = self._eventbus_timer, None
        if timer is not None:
            timer.cancel()


class Transport(_kombu("Transport")):  # type: ignore[misc]
    """kombu's Redis transport whose consumers take and record each message atomically."""

    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        problem = transport_problem()
        if problem:
            raise IncompatibleDependency(problem)
        super().__init__(*args, **kwargs)
        self.cycle = MultiChannelPoller()
        #: Delivery tags the script recorded, not yet seen by QoS.append.
        self.eventbus_recorded: set[str] = set()
        #: Queue name -> bytes an element may have to be read (see :meth:`eventbus_limit`).
        self.eventbus_element_limits: dict[str, int] = {}
        #: Channels with acks waiting, and the event loop's timer that sends them.
        self.eventbus_ack_channels: set[Channel] = set()
        self.eventbus_ack_timer: Any = None
        #: Redis refused the take script or the restore, and the log said so.
        self.eventbus_refusing = False

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        self.cycle.call_later = loop.call_later
        if self.eventbus_ack_timer is not None:  # registered again after a reconnect
            self.eventbus_ack_timer.cancel()
            self.eventbus_ack_timer = None
        options = self.client.transport_options
        interval = float(options.get("eventbus_ack_interval", DEFAULT_ACK_INTERVAL) or 0)
        if interval > 0:
            self.eventbus_ack_timer = loop.call_repeatedly(interval, self.eventbus_send_acks)

    def eventbus_send_acks(self) -> None:
        for channel in list(self.eventbus_ack_channels):
            channel.eventbus_send_acks()

    def eventbus_refused(self, what: str, exc: BaseException) -> None:
        """Redis refused ``what`` (out of memory, say): a warning once, DEBUG while it goes on.

        A take script that Redis runs again ends it (:meth:`eventbus_taken`):
        not one traceback per poll or restore while Redis is full.
        """
        if self.eventbus_refusing:
            logger.debug("Redis refused %s: %s", what, exc)
            return
        self.eventbus_refusing = True
        logger.warning(
            "Redis refused %s: %s (said once more when it works again; DEBUG meanwhile)",
            what,
            exc,
        )

    def eventbus_taken(self) -> None:
        """Redis ran the take script: if it refused eventbus before, say once that it is over."""
        if self.eventbus_refusing:
            self.eventbus_refusing = False
            logger.warning("Redis takes eventbus's take script again")

    def eventbus_limit(self, queues: Iterable[str], max_bytes: int) -> None:
        """Take elements of ``queues`` over ``max_bytes`` unread, as stand-ins (0: no limit).

        Such an element is never decoded, by Redis or by the consumer: it is
        delivered as a stand-in (:mod:`eventbus.celery.refused`) with its
        first bytes and its size. A worker of an
        :class:`~eventbus.EventBus` sets this for its handler queues.
        """
        for queue in queues:
            self.eventbus_element_limits[queue] = max(0, int(max_bytes))


# Connection.as_uri() names a transport by its URL scheme through this map (the
# worker's banner, Flower's broker page): show a redis:// URL, not the class path.
# (Without the map, kombu's own name shows: a cosmetic loss, checked with the rest.)
_aliases: dict[Any, str] = getattr(kombu_connection, "resolve_aliases", {})
for _name in (f"{__name__}:Transport", Transport):
    _aliases.setdefault(_name, "redis")


class SecureTransport(Transport):
    """eventbus's transport for ``rediss://`` URLs: TLS also without SSL options.

    kombu gives its own ``rediss`` transport TLS without certificate checks
    (``ssl_cert_reqs=CERT_NONE``, and a warning) when neither
    ``broker_use_ssl`` nor ``ssl_*`` options in the URL are set
    (``Connection._init_params``); a transport named by its path gets nothing,
    and would speak plain TCP to the TLS port. This one does what kombu's
    does. :mod:`eventbus.celery.transport_selection` picks it for ``rediss://``.
    """

    def __init__(self, client: Any, *args: Any, **kwargs: Any) -> None:
        if not client.ssl:
            global _unverified_tls_warned
            if not _unverified_tls_warned:
                _unverified_tls_warned = True
                logger.warning(
                    "rediss:// broker with no SSL options: TLS without checking the "
                    "server's certificate (as kombu does); set broker_use_ssl, or "
                    "ssl_cert_reqs=required and ssl_ca_certs in the URL, to check it"
                )
            client.ssl = {"ssl_cert_reqs": ssl.CERT_NONE}
        super().__init__(client, *args, **kwargs)


_unverified_tls_warned = False
_aliases.setdefault(f"{__name__}:SecureTransport", "rediss")
_aliases.setdefault(SecureTransport, "rediss")
