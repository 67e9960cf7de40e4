"""The console's WSGI application: :func:`create_app` builds it for one bus.

Built on Flask (with Jinja2 templates, autoescaped) because Flask is already
eventbus's optional web integration (``eventbus[flask]``), is small and
well kept (Pallets), and serves server-rendered HTML with no build step;
the console needs no JavaScript at all (confirmations are pages, progress
reloads itself). CSRF protection is Flask-WTF's ``CSRFProtect`` (Pallets-eco,
the usual choice for Flask): every POST carries a token tied to the session,
and one without is refused (400) before any view runs.

The object returned is a plain WSGI application, so it mounts anywhere WSGI
does: under a Flask app or a Django project with werkzeug's
``DispatcherMiddleware`` (the README shows both), or alone behind any WSGI
server (``eventbus console`` uses waitress).
"""

from __future__ import annotations

import logging
import os
import secrets

from flask import Flask, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect

from eventbus.bus.base import BaseEventBus
from eventbus.console import actions, views  # noqa: F401 - their routes join the blueprint
from eventbus.console.auth import Credentials, is_loopback
from eventbus.console.blueprint import console as blueprint
from eventbus.console.broker import dead_letter_readers
from eventbus.console.cache import SnapshotCache
from eventbus.console.snapshot import DEFAULT_MAX_AGE
from eventbus.console.state import Console, console_of
from eventbus.errors import ConfigurationError

__all__ = ["DEFAULT_PAGE_SIZE", "create_app"]

logger = logging.getLogger("eventbus.console")

DEFAULT_PAGE_SIZE = 50  #: records per page of the records page
SECRET_KEY_VARIABLE = "EVENTBUS_CONSOLE_SECRET_KEY"
#: Pages anyone may see: the login form and the stylesheet.
PUBLIC_ENDPOINTS = frozenset({"console.login", "static"})


def create_app(
    bus: BaseEventBus,
    *,
    credentials: Credentials | None = None,
    open: bool = False,
    flower_url: str | None = None,
    secret_key: str | bytes | None = None,
    max_age: float = DEFAULT_MAX_AGE,
    page_size: int = DEFAULT_PAGE_SIZE,
    secure_cookies: bool = False,
) -> Flask:
    """The console of ``bus`` as a Flask (WSGI) application.

    ``credentials`` default to the environment (:meth:`Credentials.from_env`);
    with none, :class:`~eventbus.errors.ConfigurationError` is raised, unless
    ``open`` is set: then no login is asked and only loopback clients are
    answered (others get 403). ``secret_key`` signs the session cookie and the
    CSRF tokens: default ``EVENTBUS_CONSOLE_SECRET_KEY``, else a random key
    (sessions then end when the process does, and several processes behind
    one address need the variable). ``flower_url`` makes task ids links to
    Flower's task page. ``max_age``: seconds a snapshot of the queue is
    served before it is read again. ``secure_cookies``: mark the session
    cookie ``Secure`` (serve over HTTPS).
    """
    if not isinstance(bus, BaseEventBus):
        raise ConfigurationError(f"create_app needs an EventBus, not {type(bus).__name__}")
    if page_size < 1 or max_age < 0:
        raise ConfigurationError("page_size must be >= 1 and max_age >= 0")
    creds = credentials if credentials is not None else Credentials.from_env()
    if not open:
        creds.require()
    app = Flask("eventbus.console", root_path=os.path.dirname(__file__))
    app.config.update(
        SECRET_KEY=secret_key or os.environ.get(SECRET_KEY_VARIABLE) or secrets.token_bytes(32),
        SESSION_COOKIE_NAME="eventbus_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies,
        WTF_CSRF_TIME_LIMIT=None,  # tied to the session, which ends with the browser
        MAX_CONTENT_LENGTH=2 * 1024 * 1024,  # an edited payload, at most
    )
    app.jinja_env.autoescape = True  # every template, whatever its name
    app.extensions["eventbus_console"] = Console(
        bus=bus,
        credentials=creds,
        open=open,
        flower_url=flower_url.rstrip("/") if flower_url else None,
        cache=SnapshotCache(
            bus.dead_letter_store, max_age=max_age, readers=lambda: dead_letter_readers(bus)
        ),
        page_size=page_size,
    )
    CSRFProtect(app)

    app.register_blueprint(blueprint)
    app.before_request(_authenticate)
    app.register_error_handler(CSRFError, _csrf_refused)
    return app


def _authenticate() -> ResponseReturnValue | None:
    console = console_of()
    if console.open and not is_loopback(request.remote_addr):
        return "this console runs open: it answers loopback clients only", 403
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    user = console.user()
    if user is None:
        if request.headers.get("Authorization"):
            logger.warning("console: refused credentials from %s", request.remote_addr)
            return "authentication failed", 401, {"WWW-Authenticate": 'Basic realm="eventbus"'}
        # With the script root: mounted under /console, the page is /console/...
        return redirect(url_for("console.login", next=request.script_root + request.full_path))
    g.user = user
    return None


def _csrf_refused(error: CSRFError) -> ResponseReturnValue:
    logger.warning(
        "console: refused a POST to %s without a valid CSRF token (%s)",
        request.path,
        error.description,
    )
    return render_template("error.html", title="Refused", message=error.description), 400
