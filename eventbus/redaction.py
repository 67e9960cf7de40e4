"""Secrets out of what eventbus prints, logs and raises: one helper for URLs and messages.

A connection URL carries its password in the userinfo
(``amqp://user:secret@host//``) or in the query (``redis://host/0?password=secret``,
SQLAlchemy's and libpq's ``?password=``). Upstream helpers each cover part of
it: kombu's ``maybe_sanitize_url`` masks the userinfo, drops the whole query
and raises on a URL it cannot parse; SQLAlchemy's
``URL.render_as_string(hide_password=True)`` masks the userinfo and keeps
``?password=`` in clear. Drivers also echo the URL they were given into their
own errors, so a message that wraps one needs the same treatment.

:func:`redact_url` masks both places in a URL (or a ``;``-separated list of
fail-over URLs) and never raises, whatever the string; :func:`redact` does it
for every URL found in free text, and also masks the literal secrets of the
URLs the caller names wherever they appear (a driver may quote a password
out of its URL). Apply it where an error is raised or logged, and where the
CLI prints.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from urllib.parse import unquote

__all__ = ["MASK", "redact", "redact_url", "safe_cause", "url_secrets"]

MASK = "***"  #: what a secret is replaced with (SQLAlchemy's mask)

#: Query or keyword names whose value is a secret.
_SECRET_NAME = r"[\w.\-]*(?:pass|pwd|secret|token|credential)[\w.\-]*"
#: ``scheme://user:password@``: the password runs to the last ``@`` before a
#: ``/`` or whitespace (an unencoded ``@`` in a password stays masked).
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@]*:)[^\s/]*(?=@)")
#: ``?password=...`` / ``&password=...`` (and ``;``, the libpq and kombu separators).
_QUERY = re.compile(rf"(?P<head>[?&;]{_SECRET_NAME}=)[^&;#\s'\"]*", re.IGNORECASE)
#: ``password=...`` / ``password: ...`` outside a URL (libpq keywords, repr of options).
_KEYWORD = re.compile(
    rf"(?P<head>\b{_SECRET_NAME}['\"]?\s*[=:]\s*['\"]?)(?!\*\*\*)[^\s'\"&;,)}}\]]+",
    re.IGNORECASE,
)
#: Shorter literal secrets are not hunted through free text (they would mask
#: ordinary words); the URL patterns above still catch them in a URL.
MIN_LITERAL = 4


def redact_url(url: str) -> str:
    """``url`` with its passwords masked (userinfo and query); never raises."""
    return _redact_patterns(str(url))


def url_secrets(urls: Iterable[str | None]) -> set[str]:
    """The passwords held by these URLs, as written and percent-decoded."""
    found: set[str] = set()
    for url in urls:
        if not url:
            continue
        text = str(url)
        values = [m.group(0)[len(m.group("head")) :] for m in _USERINFO.finditer(text)]
        values += [m.group(0)[len(m.group("head")) :] for m in _QUERY.finditer(text)]
        for value in values:
            for form in (value, unquote(value), unquote(value.replace("+", " "))):
                if len(form) >= MIN_LITERAL:
                    found.add(form)
    return found


def redact(text: object, urls: Iterable[str | None] = ()) -> str:
    """``str(text)`` with every URL password masked, and every secret of ``urls`` too.

    ``urls`` are the URLs the message may echo (the broker's, the outbox's):
    their passwords are masked wherever they appear, even outside a URL.
    """
    result = str(text)
    for secret in _secrets_longest_first(tuple(str(url) for url in urls if url)):
        result = result.replace(secret, MASK)
    return _redact_patterns(result)


@functools.lru_cache(maxsize=64)
def _secrets_longest_first(urls: tuple[str, ...]) -> tuple[str, ...]:
    # Longest first: a secret that contains another is masked whole. Cached:
    # the CLI redacts every line it prints with the same few URLs.
    return tuple(sorted(url_secrets(urls), key=len, reverse=True))


def safe_cause(exc: BaseException, urls: Iterable[str | None] = ()) -> BaseException | None:
    """``exc``, to chain as the cause of an error raised about it, if that prints no secret.

    ``None`` (``raise ... from None``) when the message of ``exc`` or of any
    error chained to it holds a password: a traceback prints every one of
    them. Put what the cause said, redacted, into the new error's message.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if redact(text, urls) != text:
            return None
        current = current.__cause__ or current.__context__
    return exc


def _redact_patterns(text: str) -> str:
    text = _USERINFO.sub(lambda m: m.group("head") + MASK, text)
    text = _QUERY.sub(lambda m: m.group("head") + MASK, text)
    return _KEYWORD.sub(lambda m: m.group("head") + MASK, text)
