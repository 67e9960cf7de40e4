"""Compressed messages on handler queues: refused undecompressed, or decompressed within the limit.

What kombu does (5.7, ``kombu/message.py``). ``Message.__init__``
decompresses a body whose headers carry ``compression``
(``kombu.compression.decompress``: ``zlib.decompress``, ``bz2.decompress``,
``lzma.decompress``, ...) as the transport builds the message: before any
consumer callback, in the worker's main process, with no bound. 100 KB of
zlib is 100 MB of zeros; a few such messages exhaust the worker's memory (a
compression bomb). A decompression error goes to ``message.errors``, which
the consumer hands to its decode-error callback.

What this module changes. :func:`guard_compression` gives the message
classes of kombu's transports (py-amqp's, and the virtual transports': Redis,
memory) a base that looks at a message before kombu decompresses it. A
message that says it is compressed, on a queue an EventBus worker guards
(its handler queues; not a task of the app's own on a queue it shares with
handlers), is:

* not decompressed when the app compresses nothing (no ``task_compression``:
  eventbus's publish then never compresses). It gets a decode error,
  :class:`CompressedMessageRefused`; the worker dead-letters it
  (``undecodable``: it is never decoded) with its compressed bytes;
* decompressed with a bound when the app compresses: zlib, bz2 and lzma
  through their incremental decompressors (``max_length``), stopping past
  what ``eventbus_max_payload_bytes`` allows a body; past it the message gets
  a :class:`DecompressedTooLarge` decode error (``oversized``). A
  compression no incremental decompressor here can bound (brotli, zstd,
  unknown) is refused as above.

What it leaves alone: every other message (kombu decompresses it as before),
and compression on publish. Installed once per process by an EventBus
worker's consumer. The names it uses (the transports' ``Channel.Message``,
``Message.__init__``) are checked when the worker starts (:mod:`.compat`,
feature ``compression_guard``, a guarantee): a kombu without them stops the
worker with :class:`~eventbus.errors.IncompatibleDependency` rather than
decompress unbounded.
"""

from __future__ import annotations

import bz2
import importlib
import logging
import lzma
import sys
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kombu.message import Message

from eventbus.errors import EnvelopeDecodeError, PayloadTooLarge

__all__ = [
    "CompressedMessageRefused",
    "CompressionPolicy",
    "DecompressedTooLarge",
    "guard_compression",
    "unguard_compression",
]

logger = logging.getLogger(__name__)


class CompressedMessageRefused(EnvelopeDecodeError):
    """A compressed message a handler queue does not take: it was never decompressed."""


class DecompressedTooLarge(PayloadTooLarge):
    """A compressed message whose body, decompressed, goes past what the payload limit allows.

    Decompression stopped there: ``size`` is where it stopped, not the whole.
    """

    def __init__(self, compression: str, size: int, bound: int, limit: int) -> None:
        super().__init__(f"<{compression} compressed>", size, limit)
        self.args = (
            f"a {compression} compressed body decompresses to more than {bound} bytes, the "
            f"most a message within the limit of {limit} bytes (eventbus_max_payload_bytes) "
            "can have: decompression stopped there",
        )


@dataclass(frozen=True)
class CompressionPolicy:
    """What a guarded queue takes of compressed messages."""

    #: The app compresses its task messages (``task_compression``): decompress, bounded.
    allowed: bool
    #: Bytes a decompressed body may have; 0: no bound (the app set no payload limit).
    max_bytes: int
    #: ``eventbus_max_payload_bytes``, which ``max_bytes`` comes from (for the error).
    limit: int = 0
    #: Whether a task name is another task of the app's (not a handler): kombu's as before.
    exempt: Callable[[object], bool] = lambda task: False


#: kombu's compression names (content types and aliases) this module can bound, and
#: their incremental decompressors (``decompress(data, max_length)``, ``eof``, ``unused_data``).
_BOUNDED: dict[str, Callable[[], Any]] = {
    **dict.fromkeys(("application/x-gzip", "gzip", "zlib"), zlib.decompressobj),
    **dict.fromkeys(("application/x-bz2", "bzip2", "bzip"), bz2.BZ2Decompressor),
    **dict.fromkeys(("application/x-lzma", "lzma", "xz"), lzma.LZMADecompressor),
}
_MULTI_STREAM = (bz2.BZ2Decompressor, lzma.LZMADecompressor)  # as bz2/lzma.decompress read them

#: Guarded queue name -> its policy (an EventBus worker's handler queues).
_policies: dict[str, CompressionPolicy] = {}
_installed: list[bool] = []


def guard_compression(queues: Iterable[str], policy: CompressionPolicy) -> bool:
    """Guard ``queues`` with ``policy`` (installs the guard once); False if kombu moved it."""
    for queue in queues:
        _policies[queue] = policy
    if not _installed:
        _installed.append(_install())
    return _installed[0]


def unguard_compression(queues: Iterable[str]) -> None:
    """Stop guarding ``queues`` (a worker that stopped)."""
    for queue in queues:
        _policies.pop(queue, None)


def decompress_within(body: bytes, compression: str, max_bytes: int, limit: int = 0) -> bytes:
    """``body`` decompressed, stopping past ``max_bytes`` (0: no bound).

    Raises :class:`DecompressedTooLarge` past the bound (``limit``: the payload
    limit it comes from), :class:`CompressedMessageRefused`
    for a compression this cannot bound, and the decompressor's own error
    for data it cannot read.
    """
    make = _BOUNDED.get(compression)
    if make is None:
        raise CompressedMessageRefused(
            f"compressed with {compression!r}, which eventbus cannot decompress within a "
            "bound: never decompressed (use zlib, bz2 or lzma)"
        )
    out: list[bytes] = []
    total = 0
    data = body
    while True:
        decompressor = make()
        # One byte more than allowed: getting it means over the bound.
        chunk = (
            decompressor.decompress(data, max_bytes - total + 1)
            if max_bytes
            else (decompressor.decompress(data))
        )
        total += len(chunk)
        out.append(chunk)
        if max_bytes and total > max_bytes:
            raise DecompressedTooLarge(compression, total, max_bytes, limit or max_bytes)
        if not decompressor.eof:
            raise EnvelopeDecodeError(f"{compression} data is truncated (no end of stream)")
        data = decompressor.unused_data
        if not data or not isinstance(decompressor, _MULTI_STREAM):
            return b"".join(out)


class _CompressionGuard(Message):
    """The base, after a transport's own message class, that screens compressed messages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        parent: Any = super()  # kombu's Message (untyped)
        headers = kwargs.get("headers")
        # eventbus's Redis transport says which queue it took the message from
        # (its element's routing key is whatever its producer wrote).
        taken = kwargs.pop("eventbus_taken_from", None)
        policy = _policy_of(taken, kwargs.get("delivery_info"), headers)
        if policy is None:
            parent.__init__(*args, **kwargs)
            return
        assert isinstance(headers, Mapping)
        compression = headers.get("compression")
        body = kwargs.get("body")
        try:
            if not policy.allowed:
                raise CompressedMessageRefused(
                    f"compressed with {_name(compression)} on a handler queue of an app that "
                    "sets no task_compression (eventbus never compresses then): never "
                    "decompressed"
                )
            if not isinstance(compression, str) or not isinstance(body, bytes | str):
                raise CompressedMessageRefused(
                    f"compression {_name(compression)} of a {type(body).__name__} body: "
                    "never decompressed"
                )
            raw = body.encode("utf-8", "replace") if isinstance(body, str) else body
            decompressed = decompress_within(raw, compression, policy.max_bytes, policy.limit)
        except Exception:
            # Seen by the consumer's decode-error callback; kombu skips its own
            # decompression for a message that has errors already.
            self.errors = [sys.exc_info()]
            parent.__init__(*args, **kwargs)
            return
        # Decompressed here: kombu must not decompress it again. The headers
        # still say how it came.
        plain = {key: value for key, value in headers.items() if key != "compression"}
        parent.__init__(*args, **{**kwargs, "body": decompressed, "headers": plain})
        self.headers = headers


def _policy_of(
    taken_from: object, delivery_info: object, headers: object
) -> CompressionPolicy | None:
    """The policy for a message that says it is compressed, on a guarded queue; else None.

    The queue is the one the transport took it from, when it says; else its routing key.
    """
    if not _policies or not isinstance(headers, Mapping) or not headers.get("compression"):
        return None
    queue = taken_from
    if queue is None and isinstance(delivery_info, Mapping):
        queue = delivery_info.get("routing_key")
    policy = _policies.get(queue) if isinstance(queue, str) else None
    if policy is None or policy.exempt(headers.get("task")):
        return None
    return policy


def _name(value: object) -> str:
    return repr(value)[:100]


def _guarded(message_class: type) -> type:
    if issubclass(message_class, _CompressionGuard):
        return message_class
    return type(
        f"Guarded{message_class.__name__}",
        (message_class, _CompressionGuard),
        {"__module__": __name__},
    )


#: The channel classes whose ``Message`` class gets the guard: (module, class).
_CHANNELS = (
    ("kombu.transport.pyamqp", "Channel"),
    ("kombu.transport.virtual.base", "Channel"),
)


def _install() -> bool:
    ok = True
    for module_name, class_name in _CHANNELS:
        try:
            channel = getattr(importlib.import_module(module_name), class_name)
            message_class = channel.Message
        except (ImportError, AttributeError):
            logger.warning(
                "kombu has no %s.%s.Message: compressed messages on handler queues of "
                "that transport are decompressed by kombu, with no bound",
                module_name,
                class_name,
            )
            ok = False
            continue
        channel.Message = _guarded(message_class)
    return ok
