"""The Kafka record codec, topic naming and settings: what both directions build on (no broker)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from typing import Any

import pytest

from eventbus import (
    ConfigurationError,
    EnvelopeDecodeError,
    Event,
    EventRegistry,
    EventValidationError,
    EventVersionError,
    MissingDependency,
    UnknownEventType,
    create_event,
)
from eventbus.kafka import (
    HEADER_CORRELATION_ID,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_EVENT_VERSION,
    KafkaSettings,
    TopicNaming,
    decode_plain_record,
    decode_record,
    encode_record,
    header_values,
    is_envelope_record,
)
from eventbus.kafka.settings import confluent_kafka_module

REGISTRY = EventRegistry()


class OrderPlaced(Event, registry=REGISTRY):
    event_type = "shop.order_placed"

    total: int


def placed(**fields: Any) -> Any:
    return create_event(OrderPlaced, {"total": 42}, event_registry=REGISTRY, **fields)


# -- encoding ------------------------------------------------------------------


def test_a_record_carries_the_envelope_keyed_by_aggregate_with_its_headers() -> None:
    envelope = placed(aggregate_id=7, aggregate_type="Order")

    record = encode_record(envelope)

    assert record.topic == "shop.order_placed"
    assert record.key == b"7"
    assert json.loads(record.value) == envelope.to_wire()
    assert dict(record.headers) == {
        HEADER_EVENT_TYPE: b"shop.order_placed",
        HEADER_EVENT_VERSION: b"1",
        HEADER_EVENT_ID: str(envelope.event_id).encode(),
        HEADER_CORRELATION_ID: str(envelope.correlation_id).encode(),
    }


def test_an_event_without_aggregate_has_no_key() -> None:
    assert encode_record(placed()).key is None


def test_metadata_that_is_not_json_is_refused_naming_it() -> None:
    envelope = placed().with_metadata(when=object())
    with pytest.raises(EventValidationError, match="metadata: not JSON"):
        encode_record(envelope)


# -- decoding ------------------------------------------------------------------


def test_a_record_decodes_back_to_its_envelope() -> None:
    envelope = placed(aggregate_id="a-1", aggregate_type="Order")
    record = encode_record(envelope)

    decoded = decode_record(record.value, record.headers, event_registry=REGISTRY)

    assert decoded == envelope
    assert decode_record(record.value, event_registry=REGISTRY) == envelope  # headers optional


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "no value"),
        (b"\xff not json", "not JSON"),
        (b"[1, 2]", "a JSON list, not an envelope"),
        (b'{"version": 1}', "no 'event_type'"),
    ],
)
def test_a_record_that_is_not_an_envelope_says_why(value: bytes | None, message: str) -> None:
    with pytest.raises(EnvelopeDecodeError, match=message):
        decode_record(value, event_registry=REGISTRY)


def test_unknown_type_and_bad_data_are_the_cause_of_the_decode_error() -> None:
    wire = placed().to_wire()
    unknown = json.dumps({**wire, "event_type": "shop.nope"}).encode()
    with pytest.raises(EnvelopeDecodeError) as info:
        decode_record(unknown, event_registry=REGISTRY)
    assert isinstance(info.value.__cause__, UnknownEventType)

    newer = json.dumps({**wire, "version": 9}).encode()
    with pytest.raises(EnvelopeDecodeError) as info:
        decode_record(newer, event_registry=REGISTRY)
    assert isinstance(info.value.__cause__, EventVersionError)

    bad = json.dumps({**wire, "data": {"total": "many"}}).encode()
    with pytest.raises(EnvelopeDecodeError) as info:
        decode_record(bad, event_registry=REGISTRY)
    assert isinstance(info.value.__cause__, EventValidationError)


def test_headers_that_contradict_the_value_are_an_error() -> None:
    record = encode_record(placed())
    headers = [*record.headers[:2], (HEADER_EVENT_ID, str(uuid.uuid4()).encode())]
    with pytest.raises(EnvelopeDecodeError, match=f"header {HEADER_EVENT_ID}=.*contradicts"):
        decode_record(record.value, headers, event_registry=REGISTRY)


def test_headers_are_read_from_pairs_or_a_mapping() -> None:
    pairs = [(HEADER_EVENT_TYPE, b"x"), ("other", None), ("bin", b"\xff")]
    assert header_values(pairs) == {HEADER_EVENT_TYPE: "x"}
    assert header_values({HEADER_EVENT_TYPE: "y"}) == {HEADER_EVENT_TYPE: "y"}
    assert is_envelope_record(pairs)
    assert not is_envelope_record(None)
    assert not is_envelope_record([("content-type", b"application/json")])


def test_a_plain_record_becomes_an_event_with_a_stable_id() -> None:
    def read() -> Any:
        return decode_plain_record(
            b'{"total": 5}',
            "shop.order_placed",
            topic="orders",
            partition=2,
            offset=17,
            key=b"o-9",
            timestamp_ms=1_800_000_000_000,
            event_registry=REGISTRY,
        )

    envelope = read()

    assert envelope.data == OrderPlaced(total=5)
    assert envelope.aggregate_id == "o-9"
    assert envelope.metadata == {"kafka": {"topic": "orders", "partition": 2, "offset": 17}}
    assert envelope.occurred_at.timestamp() == 1_800_000_000
    assert read().event_id == envelope.event_id  # the same record is the same event


def test_a_plain_record_that_fails_its_schema_says_why() -> None:
    with pytest.raises(EnvelopeDecodeError, match=r"invalid record for 'shop\.order_placed'"):
        decode_plain_record(
            b'{"total": "x"}', "shop.order_placed", topic="t", partition=0, offset=0,
            event_registry=REGISTRY,
        )  # fmt: skip
    with pytest.raises(EnvelopeDecodeError, match="not an object"):
        decode_plain_record(b"3", "shop.order_placed", topic="t", partition=0, offset=0)


# -- topics --------------------------------------------------------------------


def test_topics_are_named_by_event_type_by_default_with_a_prefix() -> None:
    envelope = placed(aggregate_type="Order")
    assert TopicNaming().topic_for(envelope) == "shop.order_placed"
    assert TopicNaming.per_event_type("prod.").topic_for(envelope) == "prod.shop.order_placed"
    assert TopicNaming.per_aggregate_type("prod.").topic_for(envelope) == "prod.Order"
    assert TopicNaming.fixed("all-events").topic_for(envelope) == "all-events"
    assert TopicNaming.per_event_type().topic_for_type("shop.order_placed") == "shop.order_placed"
    assert TopicNaming.per_aggregate_type().topic_for_type("shop.order_placed") is None


def test_per_aggregate_type_needs_one_or_a_default() -> None:
    assert TopicNaming.per_aggregate_type(default="misc").topic_for(placed()) == "misc"
    with pytest.raises(EventValidationError, match=r"aggregate_type: .*has none"):
        TopicNaming.per_aggregate_type().topic_for(placed())


def test_an_aggregate_type_that_cannot_name_a_topic_is_refused() -> None:
    with pytest.raises(EventValidationError, match="aggregate_type: cannot name a Kafka topic"):
        TopicNaming.per_aggregate_type().topic_for(placed(aggregate_type="Order Line"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("event_type", TopicNaming()),
        ("aggregate_type", TopicNaming.per_aggregate_type()),
        ("topic:events", TopicNaming.fixed("events")),
    ],
)
def test_a_naming_parses_from_a_setting(text: str, expected: TopicNaming) -> None:
    assert TopicNaming.parse(text) == expected


@pytest.mark.parametrize(
    "make",
    [
        lambda: TopicNaming.parse("by-magic"),
        lambda: TopicNaming.fixed("has space"),
        lambda: TopicNaming.fixed("x" * 250),
        lambda: TopicNaming.per_event_type("bad/prefix"),
        lambda: TopicNaming("fixed"),
    ],
)
def test_a_wrong_naming_is_a_configuration_error(make: Any) -> None:
    with pytest.raises(ConfigurationError):
        make()


# -- settings ------------------------------------------------------------------


def test_the_producer_is_idempotent_acks_all_and_bounded() -> None:
    settings = KafkaSettings("k1:9092,k2:9092", producer={"compression.type": "zstd"},
                             delivery_timeout=2.5)  # fmt: skip
    config = settings.producer_config()
    assert config["bootstrap.servers"] == "k1:9092,k2:9092"
    assert config["acks"] == "all"
    assert config["enable.idempotence"] == "true"
    assert config["message.timeout.ms"] == 2500
    assert config["compression.type"] == "zstd"
    consumer = settings.consumer_config("g1")
    assert consumer["group.id"] == "g1"
    assert "acks" not in consumer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bootstrap_servers": ""}, "bootstrap_servers is missing"),
        ({"producer": {"acks": 1}}, "acks=1 is refused"),
        ({"producer": {"enable.idempotence": False}}, "enable.idempotence=False is refused"),
        ({"producer": {"message.timeout.ms": 5}}, "delivery_timeout"),
        ({"producer": {"sasl.password": "x"}}, "belongs in security"),
        ({"security": {"linger.ms": 1}}, "not 'linger.ms'"),
        ({"delivery_timeout": 0}, "delivery_timeout must be"),
        ({"producer": "acks=all"}, "must be a mapping"),
    ],
)
def test_wrong_settings_say_which(kwargs: dict[str, Any], message: str) -> None:
    kwargs = {"bootstrap_servers": "k:9092", **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        KafkaSettings(**kwargs)


def test_secrets_never_show() -> None:
    settings = KafkaSettings(
        "k:9092",
        security={"sasl.username": "orders", "sasl.password": "hunter22secret",
                  "ssl.key.password": "keypass-77"},
    )  # fmt: skip
    for text in (repr(settings), str(settings), settings.describe()):
        assert "hunter22secret" not in text and "keypass-77" not in text
        assert "orders" in text


def test_settings_from_the_environment_and_from_celery_conf() -> None:
    env = {
        "EVENTBUS_KAFKA_BOOTSTRAP_SERVERS": "k:9092",
        "EVENTBUS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "EVENTBUS_KAFKA_SASL_PASSWORD": "pw-from-env",
        "EVENTBUS_KAFKA_DELIVERY_TIMEOUT": "3",
    }
    settings = KafkaSettings.from_env(env)
    assert settings.security == {"security.protocol": "SASL_SSL", "sasl.password": "pw-from-env"}
    assert settings.delivery_timeout == 3.0
    with pytest.raises(ConfigurationError, match="bootstrap_servers is missing"):
        KafkaSettings.from_env({})
    conf = {"eventbus_kafka_bootstrap_servers": "c:9092", "eventbus_kafka_delivery_timeout": 4}
    assert KafkaSettings.from_mapping(conf) == KafkaSettings("c:9092", delivery_timeout=4)
    with pytest.raises(ConfigurationError, match="eventbus_kafka_delivery_timeout"):
        KafkaSettings.from_mapping({**conf, "eventbus_kafka_delivery_timeout": "soon"})


def test_without_confluent_kafka_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # an import of it fails
    with pytest.raises(MissingDependency, match=r'pip install "eventbus\[kafka\]"') as info:
        confluent_kafka_module()
    assert isinstance(info.value, ConfigurationError)
    assert isinstance(info.value, ImportError)


def test_importing_the_kafka_bus_without_confluent_kafka_says_what_to_install() -> None:
    # A process of its own: this one has imported confluent-kafka already.
    code = (
        "import sys; sys.modules['confluent_kafka'] = None\n"
        "import eventbus.kafka.records, eventbus.kafka.settings  # no client needed\n"
        "from eventbus.kafka import KafkaEventBus\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        "eventbus.errors.MissingDependency: Kafka support needs confluent-kafka, which is not "
        'installed: pip install "eventbus[kafka]"'
    )
