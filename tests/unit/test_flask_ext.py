"""The Flask extension: init_app, the application factory, the app context, ``flask eventbus``.

Handlers run eagerly (``task_always_eager``) on Celery's in-process
``memory://`` transport, through the real EventBus and its Task class.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, Task
from celery import _state as celery_state
from flask import Flask, current_app, g

from eventbus import ConfigurationError, Envelope, Event, PermanentHandlerError, SubscriptionError
from eventbus.contrib.flask import FlaskEventBus, FlaskEventBusState
from eventbus.errors import UnknownEventType
from tests.support import unique


class NoteAdded(Event):
    event_type = "test.flask.note_added"
    text: str


@pytest.fixture(autouse=True)
def keep_celery_default_app() -> Iterator[None]:
    """init_app makes its Celery app the process default (for @shared_task): undo that."""
    previous_default = celery_state.default_app
    previous_current = getattr(celery_state._tls, "current_app", None)
    yield
    celery_state.set_default_app(previous_default)
    celery_state._set_current_app(previous_current)


def make_flask(mark: str = "a", **celery: Any) -> Flask:
    """A Flask app with an eager Celery config on the memory transport, queues of its own."""
    app = Flask(unique("flask-test"))
    app.config.update(
        MARK=mark,
        CELERY={
            "broker_url": "memory://",
            "task_always_eager": True,
            "eventbus_default_queue": unique("flask"),
            "eventbus_dead_letter_queue": unique("flask-dlq"),
            **celery,
        },
    )
    return app


def name(short: str) -> str:
    """A handler (and task) name of this test's own; its last part is a function name."""
    return f"test.flask.{short}_{uuid.uuid4().hex[:10]}"


# -- the app context ---------------------------------------------------------


def test_a_handler_subscribed_before_init_app_runs_in_the_app_context() -> None:
    # Given a handler subscribed on an extension that has no app yet
    ext = FlaskEventBus()
    seen: list[tuple[str, str]] = []

    @ext.subscribe(NoteAdded, name=name("early"))
    def early(envelope: Envelope[NoteAdded]) -> None:
        seen.append((current_app.config["MARK"], envelope.data.text))

    # When an app is created and the event published outside any app context
    app = make_flask(mark="from-config")
    ext.init_app(app)
    ext.state(app).bus.publish(NoteAdded(text="hi"))

    # Then the handler saw the app's config through current_app
    assert seen == [("from-config", "hi")]


def test_a_handler_subscribed_after_init_app_runs_in_the_app_context_too() -> None:
    ext = FlaskEventBus(make_flask(mark="late"))
    seen: list[str] = []
    ext.subscribe(
        NoteAdded, handler=lambda e: seen.append(current_app.config["MARK"]), name=name("late")
    )

    ext.state().bus.publish(NoteAdded(text="hi"))

    assert seen == ["late"]


def test_each_handler_run_gets_a_fresh_app_context_popped_afterwards() -> None:
    # Given an app that counts its app-context teardowns, and a handler using g
    app = make_flask()
    teardowns: list[object] = []
    app.teardown_appcontext(lambda exc: teardowns.append(exc))
    ext = FlaskEventBus(app)
    values: list[object] = []

    @ext.subscribe(NoteAdded, name=name("g"))
    def uses_g(envelope: Envelope[NoteAdded]) -> None:
        values.append(g.get("note"))
        g.note = envelope.data.text

    # When it runs twice, published from inside a request
    with app.test_request_context():
        g.note = "the request's"
        ext.publish(NoteAdded(text="one"))
        ext.publish(NoteAdded(text="two"))
        assert g.note == "the request's"

    # Then each run saw a g of its own, and its context was torn down (as in a worker)
    assert values == [None, None]
    assert len(teardowns) >= 2


def test_a_failing_handler_is_dead_lettered_with_an_error_raised_in_the_app_context() -> None:
    app = make_flask(mark="ctx")
    ext = FlaskEventBus(app)

    @ext.subscribe(NoteAdded, name=name("fails"), max_retries=0)
    def fails(envelope: Envelope[NoteAdded]) -> None:
        raise PermanentHandlerError(f"refused by {current_app.config['MARK']}")

    ext.state(app).bus.publish(NoteAdded(text="x"))

    [record] = list(ext.state(app).bus.dead_letters)
    assert record.exception_message == "refused by ctx"


# -- the application factory: one extension, many apps ---------------------------


def test_one_extension_serves_several_apps_each_with_its_own_celery_app_and_config() -> None:
    # Given one extension, a handler, and two apps from a factory with different config
    ext = FlaskEventBus()
    seen: list[str] = []
    ext.subscribe(
        NoteAdded, handler=lambda e: seen.append(current_app.config["MARK"]), name=name("both")
    )
    first, second = make_flask(mark="first"), make_flask(mark="second")
    ext.init_app(first)
    ext.init_app(second)

    # When each app publishes from its own context
    for app in (first, second):
        with app.app_context():
            ext.publish(NoteAdded(text="hi"))

    # Then each app's handler ran in that app's context, on its own Celery app
    assert seen == ["first", "second"]
    assert ext.state(first).celery is not ext.state(second).celery
    assert ext.state(first).bus is not ext.state(second).bus
    with first.app_context():
        assert ext.bus is ext.state(first).bus
        assert ext.celery is first.extensions["celery"]


def test_handler_options_resolve_against_the_apps_own_celery_config() -> None:
    # Given a handler subscribed before any app, without max_retries
    ext = FlaskEventBus()
    handler_name = name("defaults")
    ext.subscribe(NoteAdded, handler=lambda e: None, name=handler_name)

    # When two apps configure different retry defaults
    strict = make_flask(eventbus_max_retries=1)
    patient = make_flask(eventbus_max_retries=9)
    ext.init_app(strict)
    ext.init_app(patient)

    # Then each app's handler task has its app's default
    assert ext.state(strict).bus.subscription(handler_name).options.max_retries == 1
    assert ext.state(patient).bus.subscription(handler_name).options.max_retries == 9
    assert ext.state(strict).bus.subscription(handler_name).task.max_retries == 1


def test_init_app_stores_its_state_in_app_extensions() -> None:
    app = make_flask()
    ext = FlaskEventBus(default_queue="notes")
    ext.init_app(app)

    state = app.extensions["eventbus"]
    assert isinstance(state, FlaskEventBusState)
    assert state.extension is ext
    assert state.bus.app is state.celery is app.extensions["celery"]
    assert state.bus.default_queue == "notes"
    assert state.celery.conf.task_always_eager is True


def test_init_app_twice_on_one_app_is_refused() -> None:
    app = make_flask()
    ext = FlaskEventBus(app)

    with pytest.raises(RuntimeError, match="already initialised"):
        ext.init_app(app)
    with pytest.raises(RuntimeError, match="already initialised"):
        FlaskEventBus().init_app(app)


def test_the_bus_outside_an_app_context_is_the_only_bound_apps() -> None:
    ext = FlaskEventBus()
    with pytest.raises(RuntimeError, match="bound to 0 apps"):
        _ = ext.bus

    one = make_flask()
    ext.init_app(one)
    assert ext.bus is ext.state(one).bus

    ext.init_app(make_flask())
    with pytest.raises(RuntimeError, match="bound to 2 apps"):
        ext.publish(NoteAdded(text="where to?"))


def test_an_app_of_another_extension_is_not_this_ones() -> None:
    ext = FlaskEventBus()
    other = make_flask()
    FlaskEventBus(other)

    with other.app_context(), pytest.raises(RuntimeError, match="not bound to this eventbus"):
        _ = ext.bus


# -- a Celery app of your own ------------------------------------------------------


def test_a_celery_app_given_is_used_and_its_tasks_run_in_the_app_context() -> None:
    # Given a Celery app of the user's, with a Task class calling its own __call__
    calls: list[str] = []

    class AuditedTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(self.name)
            return self.run(*args, **kwargs)

    celery = Celery(unique("own"), task_cls=AuditedTask, set_as_current=False)
    celery.conf.update(broker_url="memory://", task_always_eager=True)
    ext = FlaskEventBus(celery=celery, dead_letter_queue=unique("own-dlq"))
    seen: list[str] = []
    handler_name = name("own")
    ext.subscribe(
        NoteAdded, handler=lambda e: seen.append(current_app.config["MARK"]), name=handler_name
    )

    # When an app is bound and publishes (its CELERY config is not read)
    app = make_flask(mark="mine", task_always_eager=False)
    ext.init_app(app)
    ext.publish(NoteAdded(text="hi"))

    # Then the handler ran in the app context, through the user's own __call__
    assert ext.celery is celery
    assert seen == ["mine"]
    assert calls == [handler_name]


def test_a_celery_app_given_serves_one_flask_app() -> None:
    celery = Celery(unique("own"), set_as_current=False)
    celery.conf.broker_url = "memory://"
    ext = FlaskEventBus(make_flask(), celery=celery)

    with pytest.raises(RuntimeError, match="serves one Flask app"):
        ext.init_app(make_flask())


def test_celery_config_that_is_not_a_mapping_is_refused() -> None:
    app = Flask(unique("flask-test"))
    app.config["CELERY"] = "redis://localhost"

    with pytest.raises(ConfigurationError, match=r"app.config\['CELERY'\] must be a dict"):
        FlaskEventBus(app)


# -- mistakes fail at import time, before any app ------------------------------------


def test_subscribe_mistakes_fail_before_init_app() -> None:
    ext = FlaskEventBus()

    with pytest.raises(UnknownEventType):
        ext.subscribe("test.flask.no_such_event", handler=lambda e: None, name=name("x"))
    with pytest.raises(SubscriptionError, match="callable"):
        ext.subscribe(NoteAdded, handler=42)
    with pytest.raises(SubscriptionError, match="unknown subscribe option"):
        ext.subscribe(NoteAdded, handler=lambda e: None, name=name("y"), retries=3)
    with pytest.raises(SubscriptionError, match="needs at least one event type"):
        ext.subscribe()

    # and none of them is subscribed when an app comes
    app = make_flask()
    ext.init_app(app)
    assert ext.state(app).bus.subscriptions() == []


def test_the_decorator_returns_the_function_unchanged() -> None:
    ext = FlaskEventBus()

    def handler(envelope: Envelope[NoteAdded]) -> str:
        return "called directly"

    assert ext.subscribe(NoteAdded, name=name("plain"))(handler) is handler
    assert handler(None) == "called directly"  # type: ignore[arg-type]


# -- flask eventbus ... ----------------------------------------------------------------


@pytest.fixture
def cli_app() -> tuple[Flask, FlaskEventBus, str]:
    """An app whose one handler fails until fixed, and its handler's name."""
    app = make_flask()
    ext = FlaskEventBus(app)
    handler_name = name("cli")
    broken = {"on": True}
    app.config["BROKEN"] = broken

    @ext.subscribe(NoteAdded, name=handler_name, max_retries=0)
    def flaky(envelope: Envelope[NoteAdded]) -> None:
        if current_app.config["BROKEN"]["on"]:
            raise LookupError(f"no room for {envelope.data.text}")

    return app, ext, handler_name


def flask_cli(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=list(args))
    return result.exit_code, result.output


def test_flask_eventbus_dlq_operates_the_apps_dead_letters(
    cli_app: tuple[Flask, FlaskEventBus, str],
) -> None:
    # Given a dead letter of the app's failing handler
    app, ext, handler_name = cli_app
    ext.state(app).bus.publish(NoteAdded(text="sofa"))
    [record] = list(ext.state(app).bus.dead_letters)

    # Then list, stats and show see it
    code, out = flask_cli(app, "eventbus", "dlq", "list")
    assert code == 0
    assert record.id in out and handler_name in out
    code, out = flask_cli(app, "eventbus", "dlq", "stats")
    assert code == 0 and f"{handler_name}:LookupError" in out
    code, out = flask_cli(app, "eventbus", "dlq", "show", record.id[:8])
    assert code == 0 and "no room for sofa" in out

    # When the handler is fixed and the record replayed
    app.config["BROKEN"]["on"] = False
    code, out = flask_cli(app, "eventbus", "dlq", "replay", record.id)

    # Then it ran and the DLQ is empty
    assert code == 0, out
    code, out = flask_cli(app, "eventbus", "dlq", "list")
    assert code == 0 and "no dead letters" in out  # an empty DLQ is an answer, not an error


def test_flask_eventbus_purge_and_events(cli_app: tuple[Flask, FlaskEventBus, str]) -> None:
    app, ext, handler_name = cli_app
    ext.state(app).bus.publish(NoteAdded(text="lamp"))

    code, out = flask_cli(app, "eventbus", "dlq", "purge", "--yes")
    assert code == 0
    assert list(ext.state(app).bus.dead_letters) == []

    code, out = flask_cli(app, "eventbus", "events")
    assert code == 0
    assert f"test.flask.note_added (v1, {__name__}.NoteAdded)" in out
    assert handler_name in out


@pytest.mark.parametrize(
    "args",
    [
        ["eventbus"],
        ["eventbus", "events"],
        ["eventbus", "publish"],
        ["eventbus", "dlq"],
        *(["eventbus", "dlq", command] for command in ("list", "show", "stats", "replay")),
        *(["eventbus", "dlq", command] for command in ("edit", "purge")),
        ["eventbus", "schema", "export"],
    ],
)
def test_every_flask_eventbus_command_has_help(
    cli_app: tuple[Flask, FlaskEventBus, str], args: list[str]
) -> None:
    app, _, _ = cli_app
    code, out = flask_cli(app, *args, "--help")
    assert code == 0
    assert out.startswith(f"Usage: {app.name} {' '.join(args)}")


def test_flask_eventbus_help_lists_the_commands(cli_app: tuple[Flask, FlaskEventBus, str]) -> None:
    app, _, _ = cli_app
    _, out = flask_cli(app, "eventbus", "--help")
    for command in ("dlq", "events", "publish", "schema"):
        assert f"  {command} " in out
    _, out = flask_cli(app, "eventbus", "dlq", "--help")
    for command in ("list", "show", "stats", "replay", "edit", "purge"):
        assert f"  {command} " in out


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["eventbus", "nope"], "No such command 'nope'"),
        (["eventbus", "dlq", "show"], "Missing argument 'RECORD_ID'"),
        (["eventbus", "dlq", "list", "--since", "yesterday"], "'yesterday' is neither"),
        (["eventbus", "dlq", "replay", "--group", "nocolon"], "is not HANDLER:EXCEPTION"),
        (["eventbus", "publish", "test.flask.note_added", "[1]"], "must be a JSON object"),
    ],
)
def test_misuse_exits_2_with_a_one_line_reason(
    cli_app: tuple[Flask, FlaskEventBus, str], args: list[str], reason: str
) -> None:
    app, _, _ = cli_app
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and reason in errors[0], result.stderr


def test_an_unknown_record_id_fails_with_exit_1(cli_app: tuple[Flask, FlaskEventBus, str]) -> None:
    app, _, _ = cli_app
    result = app.test_cli_runner().invoke(args=["eventbus", "dlq", "show", "0123456789ab"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
