"""Which transport an app's broker URLs get (celery.transport_selection), without a broker."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from eventbus import ConfigurationError
from eventbus.celery.internals.redis_transport import SecureTransport, Transport
from eventbus.celery.internals.sentinel_transport import SentinelTransport
from eventbus.celery.transport_selection import (
    REDIS_TRANSPORT,
    SECURE_REDIS_TRANSPORT,
    SENTINEL_REDIS_TRANSPORT,
    TransportChoice,
    apply_transport,
    choose_transport,
    sentinel_failover_hosts,
)

#: The transport option kombu's (and eventbus's) sentinel transport needs.
MASTER = {"broker_transport_options": {"master_name": "mymaster"}}


@pytest.fixture(autouse=True)
def _no_broker_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CELERY_BROKER_URL", "CELERY_BROKER_READ_URL", "CELERY_BROKER_WRITE_URL"):
        monkeypatch.delenv(name, raising=False)


def app_with(**settings: Any) -> Celery:
    app = Celery("selection-test", set_as_current=False)
    app.conf.update(settings)
    return app


def choose(**settings: Any) -> TransportChoice:
    return choose_transport(app_with(**settings).conf)


@pytest.mark.parametrize(
    "url, transport",
    [
        ("redis://127.0.0.1:6379/0", REDIS_TRANSPORT),
        ("redis://:secret@redis:6379/1", REDIS_TRANSPORT),
        ("rediss://redis:6380/0?ssl_cert_reqs=required", SECURE_REDIS_TRANSPORT),
        ("amqp://guest:guest@rabbit:5672//", None),
        ("memory://", None),
        (None, None),  # Celery's default broker: amqp on localhost
    ],
)
def test_the_transport_follows_the_url(url: str | None, transport: str | None) -> None:
    choice = choose(broker_url=url)
    assert (choice.transport, choice.warning) == (transport, None)
    assert "secret" not in choice.description


def test_the_url_celery_connects_to_decides_environment_variable_included(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Celery's connections take CELERY_BROKER_URL over the app's setting: so does the choice
    monkeypatch.setenv("CELERY_BROKER_URL", "amqp://rabbit//")
    assert choose(broker_url="redis://localhost:6379/0").transport is None


@pytest.mark.parametrize(
    "settings, reason",
    [
        ({"broker_url": "redis+socket:///run/redis.sock"}, "redis+socket://"),
        ({"broker_url": "sentinel://s1:26379;redis://b:6379/0", **MASTER}, "different kinds"),
        ({"broker_url": "redis://a:6379/0;redis://b:6379/0"}, "fail-over"),
        ({"broker_read_url": "redis://a/0", "broker_write_url": "amqp://b//"}, "different kinds"),
        ({"broker_url": "redis://a/0", "eventbus_redis_transport": "kombu"}, "is 'kombu'"),
        ({"broker_url": "redis://a/0", "broker_transport": "redis"}, "not eventbus's"),
    ],
)
def test_a_redis_broker_without_eventbus_transport_is_named_in_a_warning(
    settings: dict[str, Any], reason: str
) -> None:
    choice = choose(**settings)
    assert choice.transport in (None, "redis")
    assert choice.warning is not None and reason in choice.warning
    assert "BRPOP" in choice.warning


@pytest.mark.parametrize(
    "url",
    ["amqp://guest:hunter2@rabbit:5672//", "sentinel://:hunter2@s1:26379", "sqs://"],
)
def test_eventbus_transport_set_for_a_url_it_cannot_serve_is_a_configuration_error(
    url: str,
) -> None:
    with pytest.raises(ConfigurationError) as err:
        choose(broker_url=url, broker_transport=REDIS_TRANSPORT)
    message = str(err.value)
    assert "broker_transport is eventbus.celery.internals.redis_transport:Transport" in message
    assert url.split("://")[0] + "://" in message and "hunter2" not in message


@pytest.mark.parametrize(
    "transport", [REDIS_TRANSPORT, Transport, "eventbus.celery.internals.redis_transport.Transport"]
)
def test_eventbus_transport_set_by_hand_for_a_redis_url_is_kept(transport: Any) -> None:
    assert choose(broker_url="redis://a/0", broker_transport=transport).transport is transport


def test_the_plain_transport_set_by_hand_for_rediss_needs_ssl_options() -> None:
    with pytest.raises(ConfigurationError, match="broker_use_ssl"):
        choose(broker_url="rediss://a/0", broker_transport=REDIS_TRANSPORT)
    for settings in (
        {"broker_url": "rediss://a/0", "broker_use_ssl": {"ssl_cert_reqs": "required"}},
        {"broker_url": "rediss://a/0?ssl_cert_reqs=required"},
    ):
        assert choose(broker_transport=REDIS_TRANSPORT, **settings).transport == REDIS_TRANSPORT
    secure = choose(broker_url="rediss://a/0", broker_transport=SecureTransport)
    assert secure.transport is SecureTransport


def test_an_unknown_eventbus_redis_transport_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"'eventbus' .* or 'kombu'"):
        choose(broker_url="redis://a/0", eventbus_redis_transport="fast")


def test_applying_sets_broker_transport_only_when_it_is_unset() -> None:
    app = app_with(broker_url="redis://a/0")
    apply_transport(app)
    assert app.conf.broker_transport == REDIS_TRANSPORT
    with app.connection_for_read() as conn:  # (no I/O)
        assert isinstance(conn.transport, Transport)
    # Another URL later on: the choice follows it (what it set is not the user's setting)
    app.conf.broker_url = "amqp://rabbit//"
    assert apply_transport(app).transport is None
    assert app.conf.broker_transport is None
    # But the user's own broker_transport for a URL it cannot serve is an error
    app.conf.broker_transport = REDIS_TRANSPORT
    with pytest.raises(ConfigurationError):
        apply_transport(app)
    amqp = app_with(broker_url="amqp://rabbit//", broker_transport="pyamqp")
    apply_transport(amqp)
    assert amqp.conf.broker_transport == "pyamqp"


@pytest.mark.parametrize(
    "url",
    [
        "sentinel://s1:26379",
        "sentinel://:hunter2@s1:26379;sentinel://:hunter2@s2:26379;sentinel://s3/1",
    ],
)
def test_a_sentinel_broker_gets_eventbus_transport(url: str) -> None:
    # Given a Redis Sentinel broker (one sentinel, or several: one broker, not fail-over servers)
    choice = choose(broker_url=url, **MASTER)
    # Then eventbus's atomic transport serves it, with no warning and no password shown
    assert (choice.transport, choice.warning) == (SENTINEL_REDIS_TRANSPORT, None)
    assert "hunter2" not in choice.description
    # And kombu's own is there when asked for, with the warning of its BRPOP
    kombu = choose(broker_url=url, eventbus_redis_transport="kombu", **MASTER)
    assert kombu.transport is None and "BRPOP" in (kombu.warning or "")


def test_a_sentinel_broker_without_master_name_is_a_configuration_error() -> None:
    for settings in ({}, {"broker_transport": SENTINEL_REDIS_TRANSPORT}):
        with pytest.raises(ConfigurationError, match="master_name"):
            choose(broker_url="sentinel://s1:26379;sentinel://s2:26379", **settings)


@pytest.mark.parametrize(
    "url, transport",
    [
        ("redis://a:6379/0", SENTINEL_REDIS_TRANSPORT),
        ("sentinel://s1:26379", REDIS_TRANSPORT),
    ],
)
def test_eventbus_transports_set_by_hand_for_the_other_kind_of_url_are_refused(
    url: str, transport: str
) -> None:
    with pytest.raises(ConfigurationError, match="Remove broker_transport"):
        choose(broker_url=url, broker_transport=transport, **MASTER)


def test_a_sentinel_worker_keeps_eventbus_transport_when_kombu_switches_sentinels() -> None:
    # Given the transport applied to an app on three sentinels (no I/O below)
    app = app_with(
        broker_url="sentinel://:pw@s1:26379/2;sentinel://:pw@s2:26380/2;sentinel://:pw@s3/2",
        **MASTER,
    )
    apply_transport(app)
    assert app.conf.broker_failover_strategy is sentinel_failover_hosts
    with app.connection_for_read() as conn:
        assert isinstance(conn.transport, SentinelTransport)
        # When kombu switches to the next sentinel (a reconnect that failed)
        conn.maybe_switch_next()
        # Then the transport, the database and the password stay, and every sentinel is known
        assert conn.transport_cls is app.conf.broker_transport
        assert isinstance(conn.transport, SentinelTransport)
        assert (conn.hostname, conn.virtual_host, conn.password) == ("s2", "2", "pw")
        assert len(conn.alt) == 3
    # And a strategy of the user's own is left alone
    mine = app_with(broker_url="sentinel://s1", broker_failover_strategy="shuffle", **MASTER)
    apply_transport(mine)
    assert mine.conf.broker_failover_strategy == "shuffle"


def test_without_the_strategy_kombu_switches_to_its_own_sentinel_transport() -> None:
    # Why the strategy: kombu's switch to a sentinel:// URL takes the transport of its scheme
    app = app_with(broker_url="sentinel://s1;sentinel://s2", **MASTER)
    app.conf.broker_transport = SENTINEL_REDIS_TRANSPORT
    with app.connection_for_read() as conn:
        conn.maybe_switch_next()
        assert conn.transport_cls == "sentinel"
