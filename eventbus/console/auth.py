"""Who may use the console: one user and password, or a token, from the environment.

The console acts on a broker with the app's credentials (replay publishes,
purge deletes), so it refuses to exist without authentication
(:class:`~eventbus.errors.ConfigurationError` from :func:`Credentials.require`),
unless it is explicitly built open, and then it answers loopback clients only.

- ``EVENTBUS_CONSOLE_USER`` and ``EVENTBUS_CONSOLE_PASSWORD``: the login form,
  or HTTP Basic authentication;
- ``EVENTBUS_CONSOLE_TOKEN``: the token as the password of the login form
  (any user name: the user is recorded as ``token``), or
  ``Authorization: Bearer TOKEN``.

Secrets are compared in constant time (:func:`hmac.compare_digest`) and
never logged, shown or kept in the session: the session (Flask's signed
cookie) keeps the user name and a fingerprint of the credentials it was
opened with, so changing the password or token ends every session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from eventbus.errors import ConfigurationError

__all__ = [
    "PASSWORD_VARIABLE",
    "TOKEN_USER",
    "TOKEN_VARIABLE",
    "USER_VARIABLE",
    "Credentials",
    "is_loopback",
]

USER_VARIABLE = "EVENTBUS_CONSOLE_USER"
PASSWORD_VARIABLE = "EVENTBUS_CONSOLE_PASSWORD"
TOKEN_VARIABLE = "EVENTBUS_CONSOLE_TOKEN"
TOKEN_USER = "token"  #: the user actions are recorded under when the token logged in
OPEN_USER = "anonymous (open console, loopback)"  #: the user of an open console


@dataclass(frozen=True)
class Credentials:
    """The console's credentials: a user and password, a token, or both."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise ConfigurationError(
                f"console authentication: set both {USER_VARIABLE} and {PASSWORD_VARIABLE}, "
                "or neither"
            )
        if self.user is not None and (not self.user or not self.password):
            raise ConfigurationError(
                f"console authentication: {USER_VARIABLE} and {PASSWORD_VARIABLE} must not be empty"
            )
        if self.token is not None and len(self.token) < 16:
            raise ConfigurationError(
                f"console authentication: {TOKEN_VARIABLE} must have 16 characters or more"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """The credentials the environment sets (perhaps none: see :attr:`configured`)."""
        env = os.environ if environ is None else environ
        return cls(
            user=env.get(USER_VARIABLE) or None,
            password=env.get(PASSWORD_VARIABLE) or None,
            token=env.get(TOKEN_VARIABLE) or None,
        )

    @property
    def configured(self) -> bool:
        return self.user is not None or self.token is not None

    def require(self) -> Credentials:
        """These credentials, or :class:`ConfigurationError` if there are none."""
        if not self.configured:
            raise ConfigurationError(
                "refusing to serve the eventbus console without authentication: set "
                f"{USER_VARIABLE} and {PASSWORD_VARIABLE}, or {TOKEN_VARIABLE} "
                "(or run it open, on loopback only: eventbus console --open)"
            )
        return self

    def login(self, user: str, password: str) -> str | None:
        """The user recorded for this login, or None if it is refused."""
        if self.user is not None and self.password is not None:
            user_ok = hmac.compare_digest(user.encode(), self.user.encode())
            password_ok = hmac.compare_digest(password.encode(), self.password.encode())
            if user_ok and password_ok:
                return self.user
        if self.token is not None and hmac.compare_digest(password.encode(), self.token.encode()):
            return TOKEN_USER
        return None

    def from_header(self, header: str | None) -> str | None:
        """The user an ``Authorization`` header (Basic or Bearer) proves, or None."""
        if not header:
            return None
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and self.token is not None:
            return self.login(TOKEN_USER, value.strip())
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except ValueError:
                return None
            user, sep, password = decoded.partition(":")
            return self.login(user, password) if sep else None
        return None

    def fingerprint(self, secret_key: bytes) -> str:
        """A keyed digest of the credentials: a session opened with others is not valid."""
        material = "\0".join(v or "" for v in (self.user, self.password, self.token))
        return hmac.new(secret_key, material.encode(), hashlib.sha256).hexdigest()[:32]


def is_loopback(host: str | None) -> bool:
    """Is ``host`` (an address or ``localhost``) a loopback address?"""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
