"""What went wrong talking to the broker, in a few words an operator can act on.

kombu lets each transport's client errors through, some wrapped in its own
``OperationalError`` (the client's error is then the ``__cause__``): py-amqp's
``AccessRefused`` (403: a refused login, or a refused queue), ``NotAllowed``
(530: no such vhost), ``NotFound`` (404: no such queue); redis-py's
``AuthenticationError``, ``ResponseError`` (``DB index is out of range``),
``ConnectionError``; plain ``OSError`` for a refused or timed-out socket.
Building a connection from a URL raises ``KeyError`` for an unknown scheme
(``No such transport: foo``), ``ValueError`` or ``TypeError`` for a URL it
cannot parse (kombu's parser passes ``password`` twice for a URL with one in
its userinfo and one in its query). Worse, py-amqp's ``AccessRefused`` and
``NotAllowed`` are *channel* errors by class: code that takes every channel
error for "no such queue" reads a refused login as an empty queue.

:func:`is_missing_queue` tells the one error that means "the queue does not
exist" (404) from the rest; :func:`describe_broker_error` names any of them,
with every secret of the broker URL masked (:mod:`eventbus.redaction`).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import Any

from kombu.exceptions import KombuError

from eventbus.redaction import redact

__all__ = [
    "URL_ERRORS",
    "broker_errors",
    "describe_broker_error",
    "is_missing_queue",
    "retrying_cannot_help",
    "url_of",
]

#: What building a kombu connection (and its transport) from a bad URL raises.
URL_ERRORS: tuple[type[BaseException], ...] = (KeyError, ValueError, TypeError, ImportError)

_AUTH_HINTS = ("login was refused", "wrongpass", "invalid username-password", "noauth", "auth ")


def broker_errors(conn: Any) -> tuple[type[BaseException], ...]:
    """What a call on this kombu connection raises when the broker is the problem.

    Its transport's connection and channel errors, sockets, and kombu's own;
    not ``KeyError``, which kombu's Redis transport lists among its connection
    errors and which is nearly always a bug, not a broker.
    """
    errors = (*conn.connection_errors, *conn.channel_errors, OSError, KombuError)
    return tuple(dict.fromkeys(e for e in errors if e is not KeyError))


def url_of(value: object) -> str:
    """A configured broker URL as text (Celery accepts a list of fail-over URLs)."""
    if isinstance(value, (list, tuple)):
        return ";".join(str(v) for v in value)
    return str(value or "")


def is_missing_queue(exc: BaseException) -> bool:
    """Whether ``exc`` says the queue does not exist (404 NOT_FOUND), and nothing worse."""
    for error in _chain(exc):
        if getattr(error, "code", None) == 404 or getattr(error, "reply_code", None) == 404:
            return True
        if type(error).__name__ == "ChannelError" and str(error).startswith("NOT_FOUND"):
            return True  # kombu's virtual transports (memory, Redis) say it in words
    return False


def retrying_cannot_help(exc: BaseException) -> bool:
    """Whether the broker answered and said no: a refused login or vhost, an error reply.

    kombu's Redis transport retries even these for the whole connect timeout;
    a broker that refused, or an address where nothing answers, is worth one
    more try, these are not.
    """
    chain = list(_chain(exc))
    lowered = " ".join(_text(e).lower() for e in chain)
    names = {type(e).__name__ for e in chain}
    return bool(
        names & {"AuthenticationError", "AccessRefused", "NotAllowed", "ResponseError"}
        or any(hint in lowered for hint in _AUTH_HINTS)
    )


def describe_broker_error(exc: BaseException, urls: Iterable[str | None] = ()) -> str:
    """``exc`` in one line: what the problem is, then the broker's own words.

    ``urls`` are the URLs involved: their passwords never appear in the text.
    """
    return redact(_describe(exc), urls).replace("\n", " ")


def _describe(exc: BaseException) -> str:
    chain = list(_chain(exc))
    root = chain[-1] if chain else exc
    # The deepest error of the chain that is not an internal leftover of the
    # client (redis-py's IndexError: pop from empty list).
    for error in reversed(chain):
        if not isinstance(error, IndexError):
            root = error
            break
    text = _text(root)
    lowered = " ".join(_text(e).lower() for e in chain)
    names = {type(e).__name__ for e in chain}
    if isinstance(exc, KeyError) and "no such transport" in lowered:
        scheme = text.rsplit(":", 1)[-1].strip(" '\"")
        return f"unknown broker URL scheme {scheme!r} (no kombu transport has that name)"
    if isinstance(exc, URL_ERRORS):
        return f"malformed broker URL ({type(exc).__name__}: {text})"
    if "AuthenticationError" in names or any(hint in lowered for hint in _AUTH_HINTS):
        return f"authentication failed: the user or password was refused ({text})"
    if "AccessRefused" in names:
        return f"access refused ({text})"
    if "NotAllowed" in names:
        return f"not allowed ({text}); is the vhost in the URL right?"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "connection refused" in lowered:
        return "connection refused: nothing answers at that address"
    if any(isinstance(e, (socket.timeout, TimeoutError)) for e in chain) or "timed out" in lowered:
        return f"timed out ({text})"
    if any(isinstance(e, socket.gaierror) for e in chain):
        return f"unknown host ({text})"
    return f"{type(root).__name__}: {text}"


def _text(exc: BaseException) -> str:
    reply = getattr(exc, "reply_text", None)
    if isinstance(reply, str) and reply:
        return reply.strip()  # py-amqp's own words, without "(0, 0): (403)"
    return (str(exc) or type(exc).__name__).strip()


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
