"""The writes of one confirm block, sent to RabbitMQ together instead of one ``sendall`` each.

py-amqp writes each message (its method, header and body frames) with a
``sendall`` of its own: an event with 5 handlers is 6 writes (its task-sent
events' message included), and on loopback each write also runs the
receiving side's TCP path in the writing thread. In a confirm block
(:mod:`.confirms`) nothing needs those bytes on the wire before the block's
wait for its confirms, so the writes of the block's thread are kept, whole
frames in order, and sent as one: before any read of that thread that waits
for an answer (a queue declare's, py-amqp's own per-message confirm), when
:data:`FLUSH_BYTES` are kept (a batch), and when the block ends, before its
confirm wait. Other threads' writes on the connection go at once, between the
block's whole frames (AMQP lets frames of other channels come between them).

A write that fails now fails when the block's writes go out, after kombu's
publish call returned, not inside it: the block raises the connection error
(``OSError``, py-amqp marks the transport disconnected) and the publisher
retries the whole event, then raises :class:`~eventbus.errors.PublishError`.
kombu no longer reconnects and publishes the rest on a new channel outside
confirm mode (which :func:`.confirms.confirmed` had to refuse).

It replaces py-amqp's ``_write`` (the socket's ``sendall``, read by
``Transport.write`` at every call) on the transport instance for the block:
checked once (:mod:`.compat`, feature ``coalesced_writes``, an optimisation).
Off (or with ``eventbus_optimizations = False``), each message is written as
py-amqp writes it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from amqp import Connection as AmqpConnection  # type: ignore[import-untyped]

__all__ = ["FLUSH_BYTES", "Coalesced", "coalesced"]

#: Kept bytes that are sent at once (a batch of ~2.5 KB messages: a write per ~50).
FLUSH_BYTES = 128 * 1024

_ACTIVE = "_eventbus_coalesced"  # attribute of the transport: its Coalesced, in a block


class Coalesced:
    """Stands in for a py-amqp transport's ``_write``: keeps one thread's writes."""

    __slots__ = ("_flushing", "_kept", "_lock", "_send", "flushes", "owner", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.owner = threading.get_ident()
        self._send = transport._write  # the socket's sendall (TCP), or SSL's own loop
        self._kept = bytearray()
        self.flushes = 0  #: how many times kept writes went out
        # Kept bytes and any direct write never reach the socket at the same time.
        self._lock = threading.Lock()
        self._flushing = False

    def write(self, data: Any) -> None:
        if not self._flushing and threading.get_ident() == self.owner:
            # A copy: py-amqp hands a view of the frame buffer it reuses.
            self._kept += data
            if len(self._kept) >= FLUSH_BYTES:
                self.flush()
            return
        with self._lock:
            self._send(data)

    def flush(self) -> None:
        """Send what was kept, in one write (through py-amqp's, which notes a dead socket)."""
        if not self._kept:
            return
        kept, self._kept = self._kept, bytearray()
        self._flushing = True
        try:
            self.transport.write(kept)
        finally:
            self._flushing = False
            self.flushes += 1


@contextmanager
def coalesced(connection: Any) -> Iterator[Coalesced | None]:
    """In the block, the calling thread's writes on ``connection`` go out together.

    Yields the :class:`Coalesced` (None: not a connected py-amqp connection, or
    another block coalesces on it already; then writes go as py-amqp's). On
    exit what was kept is sent, also when the block raised (as it would have
    been, a write at a time; a write error then gives way to the block's).
    """
    # (py-amqp connects when ``transport`` is read on a connection that is not.)
    connected = isinstance(connection, AmqpConnection) and connection.connected
    transport = connection.transport if connected else None
    if transport is None or getattr(transport, _ACTIVE, None) is not None:
        yield None
        return
    writes = Coalesced(transport)
    own = vars(transport).get("_write")  # TCP: the socket's sendall; SSL: the class's method
    transport._write = writes.write
    setattr(transport, _ACTIVE, writes)
    try:
        try:
            yield writes
        except BaseException:
            with suppress(OSError):
                writes.flush()
            raise
        writes.flush()
    finally:
        if own is None:
            vars(transport).pop("_write", None)
        else:
            transport._write = own
        vars(transport).pop(_ACTIVE, None)
