"""What the console's views share, kept on the Flask app: :class:`Console`, :func:`console_of`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app, request, session

from eventbus.bus.base import BaseEventBus
from eventbus.console.auth import OPEN_USER, Credentials
from eventbus.console.cache import SnapshotCache
from eventbus.console.jobs import Jobs

__all__ = ["Console", "console_of"]


@dataclass
class Console:
    """What the views share: the bus, who may log in, the snapshot, the running replays."""

    bus: BaseEventBus
    credentials: Credentials
    open: bool
    flower_url: str | None
    cache: SnapshotCache
    page_size: int
    jobs: Jobs = field(default_factory=Jobs)

    def user(self) -> str | None:
        """The authenticated user of this request, or None."""
        if self.open:
            return OPEN_USER
        header_user = self.credentials.from_header(request.headers.get("Authorization"))
        if header_user is not None:
            return header_user
        if session.get("auth") == self._fingerprint():
            user = session.get("user")
            return str(user) if user else None
        return None

    def _fingerprint(self) -> str:
        key = _secret_bytes()
        return self.credentials.fingerprint(key)

    def start_session(self, user: str) -> None:
        session.clear()
        session["user"] = user
        session["auth"] = self._fingerprint()


def _secret_bytes() -> bytes:
    key = current_app.secret_key
    return key if isinstance(key, bytes) else str(key).encode()


def console_of(app: Flask | None = None) -> Console:
    """The :class:`Console` of ``app`` (default: the current Flask app)."""
    target: Any = app if app is not None else current_app
    console: Console = target.extensions["eventbus_console"]
    return console
