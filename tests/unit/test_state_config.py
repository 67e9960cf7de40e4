"""Where idempotency and ordering state lives, from the app's configuration."""

from __future__ import annotations

import pytest

from eventbus import (
    ConfigurationError,
    EventBus,
    InMemoryEventBus,
    StateStoreError,
    SubscriptionError,
)
from eventbus.guarantees.idempotency import InMemoryIdempotencyStore, RedisIdempotencyStore
from eventbus.guarantees.state import (
    describe_state,
    redact_url,
    redis_url_from_config,
    state_from_config,
)
from tests.contract.events import ItemAdded
from tests.support import make_app


def test_the_redis_url_is_the_setting_then_a_redis_broker_then_a_redis_backend() -> None:
    assert redis_url_from_config({"eventbus_redis_url": "redis://s/1"}) == "redis://s/1"
    assert redis_url_from_config({"broker_url": "redis://b:6379/0"}) == "redis://b:6379/0"
    assert redis_url_from_config({"broker_url": "redis://b1/0;redis://b2/0"}) == "redis://b1/0"
    assert (
        redis_url_from_config({"broker_url": "amqp://r//", "result_backend": "rediss://c/2"})
        == "rediss://c/2"
    )
    assert redis_url_from_config({"broker_url": "amqp://r//"}) is None


def test_rabbitmq_without_redis_is_a_configuration_error_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="eventbus_redis_url"):
        state_from_config({"broker_url": "amqp://guest:secret@r//"}, purpose="ordering")


def test_memory_state_on_the_memory_broker_or_when_asked() -> None:
    for conf in (
        {"broker_url": "memory://"},
        {"broker_url": "amqp://r//", "eventbus_redis_url": "memory://"},
    ):
        assert isinstance(
            state_from_config(conf, purpose="t").idempotency, InMemoryIdempotencyStore
        )


def test_a_redis_state_never_shows_the_password() -> None:
    state = state_from_config({"eventbus_redis_url": "redis://:hunter2@h:6379/1"}, purpose="t")
    assert isinstance(state.idempotency, RedisIdempotencyStore)
    assert "hunter2" not in state.description
    assert redact_url("amqp://u:pw@h:5672//") == "amqp://u:***@h:5672//"
    # nor its query: redis-py takes ?password= too
    state = state_from_config(
        {"eventbus_redis_url": "redis://h:6379/1?password=hunter3"}, purpose="t"
    )
    assert state.description == "redis://h:6379/1?password=***"


def test_publishing_an_ordered_event_without_state_raises_before_sending() -> None:
    app = make_app("amqp://guest:guest@127.0.0.1:1//")
    app.conf.eventbus_redis_url = None
    bus = EventBus(app, default_queue="never-declared")
    bus.subscribe(ItemAdded, handler=lambda env: None, name="t.ordered", ordered=True)
    with pytest.raises(ConfigurationError, match="EVENTBUS_REDIS_URL"):
        bus.publish(ItemAdded(sku="A", quantity=1), aggregate_id="cart-1")


def test_options_must_be_booleans() -> None:
    bus = InMemoryEventBus()
    with pytest.raises(SubscriptionError, match="ordered must be a bool"):
        bus.subscribe(ItemAdded, handler=lambda env: None, name="t.x", ordered="yes")
    with pytest.raises(SubscriptionError, match="idempotent must be a bool"):
        bus.subscribe(ItemAdded, handler=lambda env: None, name="t.y", idempotent=1)


def test_the_global_idempotent_default_applies_unless_a_handler_says_otherwise() -> None:
    app = make_app("memory://", eventbus_idempotent=True)
    bus = EventBus(app, default_queue="q")
    on = bus.subscribe(ItemAdded, handler=lambda env: None, name="t.default")
    off = bus.subscribe(ItemAdded, handler=lambda env: None, name="t.off", idempotent=False)
    assert on is not off
    assert bus.subscription("t.default").options.idempotent is True
    assert bus.subscription("t.off").options.idempotent is False


def test_describing_the_state_checks_what_building_it_would() -> None:
    """A worker's main process describes the state instead of building it: same answers."""
    for conf in (
        {"broker_url": "memory://"},
        {"eventbus_redis_url": "redis://:hunter2@h:6379/1"},
        {"eventbus_redis_url": "redis://h:6379/1?password=hunter3"},
        {"broker_url": "redis://h:6379/0"},
    ):
        assert describe_state(conf, purpose="t") == state_from_config(conf, purpose="t").description
    with pytest.raises(ConfigurationError, match="eventbus_redis_url"):
        describe_state({"broker_url": "amqp://guest:secret@r//"}, purpose="ordering")
    for check in (describe_state, state_from_config):
        with pytest.raises(StateStoreError, match="malformed URL") as raised:
            check({"eventbus_redis_url": "redis://:hunter2@h:port/1"}, purpose="t")
        assert "hunter2" not in str(raised.value)


SENTINELS = "sentinel://:hunter2@s1:26379/3;sentinel://:hunter2@s2:26380;sentinel://s3"


def test_a_sentinel_broker_keeps_its_state_behind_all_its_sentinels() -> None:
    # Given a Sentinel broker (the list of sentinels is one broker, not fail-over servers)
    conf = {"broker_url": SENTINELS, "broker_transport_options": {"master_name": "prod"}}
    assert redis_url_from_config(conf) == SENTINELS
    # Then the state's client asks every sentinel for the master "prod", with the
    # first URL's password and database (no I/O: redis-py connects on first use)
    state = state_from_config(conf, purpose="t")
    assert isinstance(state.idempotency, RedisIdempotencyStore)
    pool = state.idempotency.client.connection_pool
    assert (pool.service_name, pool.is_master) == ("prod", True)
    assert pool.connection_kwargs["password"] == "hunter2"
    assert pool.connection_kwargs["db"] == 3
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380, 26379]
    assert "hunter2" not in state.description and "hunter2" not in describe_state(conf, purpose="t")


def test_the_state_names_its_own_master_or_takes_the_brokers() -> None:
    conf = {
        "broker_url": "amqp://r//",
        "eventbus_redis_url": "sentinel://s1:26379",
        "eventbus_redis_master_name": "state",
        "broker_transport_options": {"master_name": "broker", "sentinel_kwargs": {"password": "x"}},
    }
    client = state_from_config(conf, purpose="t").idempotency.client  # type: ignore[attr-defined]
    assert client.connection_pool.service_name == "state"
    (sentinel,) = client.connection_pool.sentinel_manager.sentinels
    assert sentinel.connection_pool.connection_kwargs["password"] == "x"  # kombu's option
    del conf["eventbus_redis_master_name"]
    client = state_from_config(conf, purpose="t").idempotency.client  # type: ignore[attr-defined]
    assert client.connection_pool.service_name == "broker"


def test_a_sentinel_state_without_a_master_name_is_a_configuration_error() -> None:
    conf = {"broker_url": "amqp://r//", "eventbus_redis_url": SENTINELS}
    for check in (state_from_config, describe_state):
        with pytest.raises(ConfigurationError, match="eventbus_redis_master_name") as err:
            check(conf, purpose="ordered handlers")
        assert "hunter2" not in str(err.value) and "sentinel://" in str(err.value)


def test_state_on_a_tls_broker_checks_the_certificate_as_the_broker_does() -> None:
    # Given a rediss:// broker whose CA is named in broker_use_ssl (kombu's way)
    tls = {"ssl_cert_reqs": "required", "ssl_ca_certs": "/etc/ca.pem"}
    conf = {"broker_url": "rediss://h:6380/0", "broker_use_ssl": tls}
    # Then the state kept on the broker checks the server against that CA too
    client = state_from_config(conf, purpose="t").idempotency.client  # type: ignore[attr-defined]
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    # And a state of its own URL keeps its own options
    own = {**conf, "eventbus_redis_url": "rediss://s:6380/1"}
    client = state_from_config(own, purpose="t").idempotency.client  # type: ignore[attr-defined]
    assert client.connection_pool.connection_kwargs.get("ssl_ca_certs") is None
