"""Flask integration: the :class:`FlaskEventBus` extension, with ``init_app``.

::

    # myapp/extensions.py
    from eventbus.contrib.flask import FlaskEventBus
    bus = FlaskEventBus()

    # myapp/todos.py: subscribed at import time, before any app exists
    @bus.subscribe(TodoCreated)
    def notify(envelope: Envelope[TodoCreated]) -> None:
        send(current_app.config["NOTIFY_URL"], envelope.data.title)

    # myapp/__init__.py
    def create_app() -> Flask:
        app = Flask(__name__)
        app.config.from_mapping(CELERY={"broker_url": "redis://localhost:6379/0"})
        bus.init_app(app)
        return app

    # in a view
    bus.publish(TodoCreated(title="Buy milk"), aggregate_id=todo.id, aggregate_type="Todo")

For each app, ``init_app`` builds a Celery app configured from
``app.config["CELERY"]`` (a dict of Celery's lowercase settings, ``eventbus_*``
ones included: Flask 3's documented Celery pattern), makes its Task class run
every task inside ``app.app_context()``, and puts an :class:`~eventbus.EventBus`
on it. The state lands in ``app.extensions["eventbus"]``
(:class:`FlaskEventBusState`); the Celery app also in ``app.extensions["celery"]``
unless something else is there.

Handlers subscribed on the extension, before or after ``init_app``, are
subscribed on the bus of every app it is bound to. Before ``init_app`` they
are checked at once (event types, handler, name, options: a mistake fails at
import time) and kept; ``init_app`` subscribes them in order. They cannot go
on a bus earlier: a handler's task options (retry defaults, its queue's
declaration on RabbitMQ, the ``visibility_timeout`` check) depend on the
app's configuration.

``flask eventbus ...`` runs the ``eventbus`` commands (``events``, ``publish``,
``dlq list|show|stats|replay|edit|purge``, ``schema export``) on the app's bus.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, overload

try:
    from flask import Flask, current_app, has_app_context
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("eventbus.contrib.flask needs Flask: pip install 'eventbus[flask]'") from exc

import click
from celery import Celery
from celery.app.task import Task

from eventbus.bus.memory import InMemoryEventBus
from eventbus.celery.bus import EventBus
from eventbus.cli.context import BusContext
from eventbus.cli.dlq import dlq
from eventbus.cli.main import events, publish
from eventbus.cli.schema import schema
from eventbus.domain.envelope import Envelope
from eventbus.domain.events import Event, EventRegistry, EventTypeRef
from eventbus.errors import ConfigurationError

__all__ = ["CONFIG_KEY", "EXTENSION_KEY", "FlaskEventBus", "FlaskEventBusState"]

EXTENSION_KEY = "eventbus"  #: ``app.extensions[EXTENSION_KEY]`` holds the app's state
CONFIG_KEY = "CELERY"  #: ``app.config[CONFIG_KEY]``: the Celery settings, a dict

H = TypeVar("H")


@dataclass(frozen=True)
class FlaskEventBusState:
    """What ``init_app`` stores in ``app.extensions["eventbus"]``: one app's bus."""

    extension: FlaskEventBus
    bus: EventBus
    celery: Celery


@dataclass(frozen=True)
class _Subscribe:
    """One ``subscribe`` call, kept to be made again on each app's bus."""

    event_types: tuple[EventTypeRef, ...]
    handler: object
    name: str | None
    options: Mapping[str, Any]

    def on(self, bus: EventBus | InMemoryEventBus) -> None:
        bus.subscribe(*self.event_types, handler=self.handler, name=self.name, **self.options)


class FlaskEventBus:
    """Domain events for a Flask app: ``init_app``, ``subscribe``, ``publish``.

    ``celery``: a Celery app of your own to use (it then serves one Flask app;
    its settings are its own and ``app.config["CELERY"]`` is not read). Its
    Task class is made to run tasks inside the Flask app context too, calling
    the class's own ``__call__`` if it has one. ``default_queue``,
    ``dead_letter_queue`` and ``event_registry`` go to :class:`~eventbus.EventBus`.

    :attr:`bus`, :attr:`celery` and :meth:`publish` act on the current app's
    bus; outside an app context, on the only app the extension is bound to.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        celery: Celery | None = None,
        default_queue: str | None = None,
        dead_letter_queue: str | None = None,
        event_registry: EventRegistry | None = None,
    ) -> None:
        self._celery = celery
        self._bus_options: dict[str, Any] = {
            "default_queue": default_queue,
            "dead_letter_queue": dead_letter_queue,
            "event_registry": event_registry,
        }
        self._subscriptions: list[_Subscribe] = []
        # Takes every subscription first: it raises what a bus would (unknown
        # type, not callable, name clash, unknown option) before any app exists.
        self._checked = InMemoryEventBus(event_registry=event_registry)
        self._apps: weakref.WeakSet[Flask] = weakref.WeakSet()
        self._lock = threading.RLock()
        if app is not None:
            self.init_app(app)

    # -- binding to apps ---------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Build this app's Celery app and bus, subscribe the handlers, add ``flask eventbus``.

        Raises :class:`RuntimeError` if the app already has an eventbus
        extension, or if a Celery app given to the constructor is already
        bound to another Flask app; :class:`~eventbus.ConfigurationError` if
        ``app.config["CELERY"]`` is not a mapping.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                f"eventbus is already initialised on the Flask app {app.name!r}; "
                "call init_app once per app"
            )
        with self._lock:
            if self._celery is not None and len(self._apps):
                raise RuntimeError(
                    "the Celery app given to FlaskEventBus(celery=...) serves one Flask app; "
                    "leave celery out to get one Celery app per Flask app"
                )
            celery = self._celery if self._celery is not None else _celery_for(app)
            celery.Task = _in_app_context(celery.Task, app)
            bus = EventBus(celery, **self._bus_options)
            for subscription in self._subscriptions:
                subscription.on(bus)
            state = FlaskEventBusState(extension=self, bus=bus, celery=celery)
            app.extensions[EXTENSION_KEY] = state
            app.extensions.setdefault("celery", celery)
            self._apps.add(app)
        app.cli.add_command(_command_group(state))

    def state(self, app: Flask | None = None) -> FlaskEventBusState:
        """This extension's state on ``app``: by default the current app.

        Outside an app context, the only app the extension is bound to.
        Raises :class:`RuntimeError` when that is not one app of this extension.
        """
        if app is None:
            if has_app_context():
                app = current_app._get_current_object()  # type: ignore[attr-defined]
            else:
                bound = list(self._apps)
                if len(bound) != 1:
                    raise RuntimeError(
                        "outside a Flask app context, and the eventbus extension is bound to "
                        f"{len(bound)} apps: use 'with app.app_context():' or state(app)"
                    )
                app = bound[0]
        assert app is not None
        state = app.extensions.get(EXTENSION_KEY)
        if not isinstance(state, FlaskEventBusState) or state.extension is not self:
            raise RuntimeError(
                f"the Flask app {app.name!r} is not bound to this eventbus extension: "
                "call init_app(app) first"
            )
        return state

    @property
    def bus(self) -> EventBus:
        """The current app's :class:`~eventbus.EventBus` (see :meth:`state`)."""
        return self.state().bus

    @property
    def celery(self) -> Celery:
        """The current app's Celery app (see :meth:`state`): what ``celery -A`` runs."""
        return self.state().celery

    # -- subscribing and publishing ------------------------------------------

    @overload
    def subscribe(
        self,
        *event_types: EventTypeRef,
        handler: None = None,
        name: str | None = None,
        **options: Any,
    ) -> Callable[[H], H]: ...

    @overload
    def subscribe(
        self, *event_types: EventTypeRef, handler: H, name: str | None = None, **options: Any
    ) -> H: ...

    def subscribe(
        self,
        *event_types: EventTypeRef,
        handler: Any = None,
        name: str | None = None,
        **options: Any,
    ) -> Any:
        """Subscribe a handler on every app's bus, present and future.

        The same arguments as :meth:`eventbus.EventBus.subscribe`, and the
        same errors, raised here even before ``init_app``. The handler runs
        inside the Flask app context of the app whose bus ran it.
        """
        check = self._checked.subscribe(*event_types, name=name, **options)

        def register(target: H) -> H:
            subscription = _Subscribe(tuple(event_types), target, name, dict(options))
            with self._lock:
                check(target)
                for app in list(self._apps):
                    subscription.on(app.extensions[EXTENSION_KEY].bus)
                self._subscriptions.append(subscription)
            return target

        return register(handler) if handler is not None else register

    def publish(
        self,
        event: Event | Envelope[Any],
        *,
        aggregate_id: object = None,
        aggregate_type: str | None = None,
        correlation_id: object = None,
        causation_id: object = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Envelope[Any]:
        """Publish on the current app's bus: :meth:`eventbus.EventBus.publish`."""
        return self.bus.publish(
            event,
            aggregate_id=aggregate_id,
            aggregate_type=aggregate_type,
            correlation_id=correlation_id,
            causation_id=causation_id,
            metadata=metadata,
        )


def _celery_for(app: Flask) -> Celery:
    """A Celery app configured from ``app.config["CELERY"]``, as Flask's Celery guide does."""
    config = app.config.get(CONFIG_KEY, {})
    if not isinstance(config, Mapping):
        raise ConfigurationError(
            f"app.config[{CONFIG_KEY!r}] must be a dict of Celery settings "
            f"(e.g. {{'broker_url': 'redis://localhost:6379/0'}}), got {type(config).__name__}"
        )
    celery = Celery(app.import_name, set_as_current=False)
    celery.config_from_object(dict(config))
    # As in Flask's guide: @shared_task in the app's code binds to this app.
    celery.set_default()
    return celery


def _in_app_context(base: type[Any], app: Flask) -> type[Any]:
    """A subclass of the Task class ``base`` whose tasks run inside ``app.app_context()``."""
    # Celery's own Task.__call__ pushes a bare request (no id, no retries)
    # over the worker's: call run() as Flask's guide does, unless the base
    # class brings a __call__ of its own (e.g. the guide's FlaskTask).
    outer = base.__call__ if base.__call__ is not Task.__call__ else None

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        with app.app_context():
            if outer is not None:
                return outer(self, *args, **kwargs)
            return self.run(*args, **kwargs)

    return type(
        "FlaskAppContextTask",
        (base,),
        {"__call__": __call__, "__module__": __name__, "__doc__": base.__doc__},
    )


def _command_group(state: FlaskEventBusState) -> click.Group:
    """``flask eventbus ...``: the eventbus CLI's commands, on this app's bus."""

    @click.group(name="eventbus")
    @click.pass_context
    def eventbus(ctx: click.Context) -> None:
        """eventbus on this app's bus: events, publish, dlq (list, show, stats, replay, edit,
        purge), schema."""
        ctx.obj = BusContext(lambda: state.bus)

    for command in (events, publish, dlq, schema):
        eventbus.add_command(command)
    return eventbus
