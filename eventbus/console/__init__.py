"""The eventbus console: dead letters in the browser, grouped, inspected, replayed, edited, purged.

``create_app(bus)`` builds the console of a bus as a WSGI application;
``eventbus console`` serves it (:mod:`eventbus.cli.console`). It needs the
``console`` extra: ``pip install 'eventbus[console]'``.

Inside: :mod:`.app` (the application, why Flask and Flask-WTF), :mod:`.auth`
(who may use it), :mod:`.snapshot` (what the list pages read, and what that
costs), :mod:`.views` and :mod:`.actions` (pages and POSTs), :mod:`.editing`
(edit-and-replay's schema check), :mod:`.jobs` (group replays with progress),
:mod:`.broker` (queue depths).
"""

from __future__ import annotations

try:
    import flask  # noqa: F401
    import flask_wtf  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        f"the eventbus console needs its extra ({exc.name} is missing): "
        "pip install 'eventbus[console]'"
    ) from exc

from eventbus.console.app import DEFAULT_PAGE_SIZE, create_app
from eventbus.console.auth import Credentials
from eventbus.console.snapshot import DEFAULT_MAX_AGE

__all__ = ["DEFAULT_MAX_AGE", "DEFAULT_PAGE_SIZE", "Credentials", "create_app"]
