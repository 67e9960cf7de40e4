"""The compatibility check finds every private name missing or reshaped, once (issue 12).

Each name of the registry is taken away from the installed library
(:func:`tests.seam_support.take_away`) and the check must name it; what
follows is per kind: an optimisation is off with one warning, a guarantee
raises IncompatibleDependency, the Redis transport refuses naming the setting
that selects kombu's. The real workers on real brokers are in
``tests/integration/test_seam_fallbacks.py``.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from eventbus import ConfigurationError, IncompatibleDependency
from eventbus.celery import transport_selection
from eventbus.celery.internals import compat
from eventbus.celery.internals.reaches import FEATURES, REACHES, SUPPORTED, Reach
from tests.seam_support import take_away

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def fresh_check(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(compat.OPTIMIZATIONS_ENV, raising=False)
    compat.reset()
    yield
    compat.reset()


def test_every_name_of_the_registry_is_there_as_expected_in_the_installed_libraries() -> None:
    assert {f.key: compat.problems(f.key) for f in FEATURES} == {f.key: () for f in FEATURES}
    assert compat.transport_problem() is None


@pytest.mark.parametrize("reach", REACHES, ids=lambda r: r.target)
def test_each_name_taken_away_is_named_by_the_check(
    reach: Reach, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the name gone (or reshaped) from the installed library
    take_away(reach, monkeypatch)
    # When its feature is checked, Then the check names it (with the names the
    # same __init__ sets, for an instance attribute)
    found = compat.problems(reach.feature)
    assert any(f.startswith(reach.target + " (") for f in found), found
    assert len(found) == 1 or reach.kind == "instance attribute", found


def test_a_missing_optimisation_is_off_with_one_warning_naming_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (reach,) = [r for r in REACHES if r.target.endswith("Hub._ready")]
    take_away(reach, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="eventbus"):
        assert not compat.optimising({}, "worker_loop")
        assert not compat.optimising({}, "worker_loop")  # asked again: said once
        assert compat.optimising({}, "task_events")  # the others stay on
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "kombu.asynchronous.hub:Hub._ready" in warnings[0]
    assert "worker_loop off" in warnings[0]


@pytest.mark.parametrize("value", [False, "0", "false", "off"])
def test_the_switch_turns_every_optimisation_off_without_a_warning(
    value: object, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="eventbus"):
        for spec in FEATURES:
            if spec.kind == "optimisation":
                assert not compat.optimising({"eventbus_optimizations": value}, spec.key)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "optimisations switched off" in caplog.text


def test_the_environment_switches_them_off_and_the_setting_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(compat.OPTIMIZATIONS_ENV, "0")
    assert not compat.optimising({}, "sent_events")
    assert compat.optimising({"eventbus_optimizations": True}, "sent_events")


def test_a_library_outside_the_supported_range_turns_its_optimisations_off(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = metadata.version
    monkeypatch.setattr(
        metadata, "version", lambda name: "5.8.0" if name == "kombu" else real(name)
    )
    with caplog.at_level(logging.WARNING, logger="eventbus"):
        assert not compat.optimising({}, "bound_queues")  # kombu's
        assert compat.optimising({}, "task_events")  # Celery's only
    assert "kombu 5.8.0 is outside >=5.7,<5.8" in caplog.text


def test_a_missing_guarantee_raises_naming_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (reach,) = [r for r in REACHES if r.target.endswith("Consumer.update_strategies")]
    take_away(reach, monkeypatch)
    with pytest.raises(IncompatibleDependency) as err:
        compat.require("message_screen")
    text = str(err.value)
    assert reach.target in text and "celery>=5.7,<6" in text and "refuses to start" in text
    assert isinstance(err.value, ConfigurationError)


def test_the_redis_transport_refuses_naming_the_setting_of_kombus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (reach,) = [r for r in REACHES if r.target.endswith("Channel._brpop_start")]
    take_away(reach, monkeypatch)
    with pytest.raises(IncompatibleDependency) as err:
        transport_selection.choose_transport({"broker_url": "redis://localhost:6379/0"})
    text = str(err.value)
    assert 'eventbus_redis_transport = "kombu"' in text and "EVENTBUS_REDIS_TRANSPORT=kombu" in text
    assert reach.target in text
    # And kombu's own is still there when asked for
    chosen = transport_selection.choose_transport(
        {"broker_url": "redis://localhost:6379/0", "eventbus_redis_transport": "kombu"}
    )
    assert chosen.transport is None


def test_the_redis_transport_refuses_a_kombu_outside_the_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kombu import Connection

    from eventbus.celery.internals.redis_transport import Transport

    real = metadata.version
    monkeypatch.setattr(
        metadata, "version", lambda name: "5.8.1" if name == "kombu" else real(name)
    )
    with pytest.raises(IncompatibleDependency, match=r"kombu 5\.8\.1 is outside"):
        Transport(Connection("redis://localhost:6379/0"))


def test_pyproject_declares_the_ranges_the_check_uses() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["metrics"]]
    declared = {}
    for requirement in requirements:
        name, _, spec = requirement.partition(">=")
        name = name.split("[")[0].strip().lower()
        low, _, high = spec.partition(",<")
        declared[name] = (low.strip(), high.strip())
    for distribution, (low, high) in SUPPORTED.items():
        assert declared[distribution] == (low, high), distribution


def _reach(suffix: str) -> Reach:
    (reach,) = [r for r in REACHES if r.target.endswith(suffix)]
    return reach


def test_without_celerys_list_of_apps_django_finds_none_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from celery import Celery

    from eventbus.celery.internals.celery_apps import apps_configured_from

    app = Celery("django-like", set_as_current=False)
    app.config_from_object("tests.unit.nowhere:settings")
    assert apps_configured_from("tests.unit.nowhere:settings") == [app]
    take_away(_reach("_state:_get_active_apps"), monkeypatch)
    compat.reset()
    with caplog.at_level(logging.WARNING, logger="eventbus"):
        assert apps_configured_from("tests.unit.nowhere:settings") == []
    assert "django_app off" in caplog.text and "EVENTBUS_CELERY_APP" in caplog.text


def test_without_prometheus_values_class_the_metrics_keep_the_imported_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import values

    from eventbus.celery.internals.prometheus_values import use_multiprocess_values

    take_away(_reach("values:get_value_class"), monkeypatch)
    before = values.ValueClass
    assert use_multiprocess_values() is None
    assert values.ValueClass is before


def test_without_should_terminate_the_demo_does_not_ask(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.worker import state

    from eventbus.celery.internals.worker_state import ask_worker_loops_to_stop

    take_away(_reach("state:should_terminate"), monkeypatch)
    assert ask_worker_loops_to_stop() is False
    assert state.should_terminate is None


@pytest.mark.parametrize("selected", [False, True])
def test_without_consume_from_a_worker_without_q_is_told_from_the_public_view(
    selected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from celery import Celery

    from eventbus.celery.internals.worker_queues import consumes_every_queue

    app = Celery("queues", set_as_current=False)
    app.conf.task_queues = None
    queues = app.amqp.queues
    queues.select_add("a")
    queues.select_add("b")
    if selected:
        queues.select(["a"])  # -Q a
    take_away(_reach("Queues._consume_from"), monkeypatch)
    assert consumes_every_queue(queues) is not selected


def test_sent_events_off_leave_celery_its_own_event(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery import Celery

    from eventbus.celery.internals.sent_events import SentEvents

    app = Celery("events", set_as_current=False)
    assert "event_dispatcher" in SentEvents(app).options()
    monkeypatch.setenv(compat.OPTIMIZATIONS_ENV, "0")
    assert SentEvents(app).options() == {}
