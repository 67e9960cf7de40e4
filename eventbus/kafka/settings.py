"""How eventbus reaches a Kafka cluster: :class:`KafkaSettings`, and the client library.

Both directions (the producer of :class:`~eventbus.kafka.KafkaEventBus`, the
consumer of ``eventbus kafka consume``) build their librdkafka configuration
from one :class:`KafkaSettings`::

    settings = KafkaSettings(
        bootstrap_servers="kafka-1:9092,kafka-2:9092",
        security={"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                  "sasl.username": "orders", "sasl.password": os.environ["KAFKA_PASSWORD"]},
        producer={"compression.type": "zstd"},
    )

or from the environment (:meth:`KafkaSettings.from_env`: ``EVENTBUS_KAFKA_*``)
or from Celery/Django settings (:meth:`KafkaSettings.from_mapping`:
``eventbus_kafka_*``, in Django ``CELERY_EVENTBUS_KAFKA_*``).

What publish promises rests on two producer settings, which eventbus sets and
refuses to weaken: ``acks=all`` (every in-sync replica has the record) and
``enable.idempotence`` (a retried send is never written twice, and one key's
records keep their order). ``delivery_timeout`` bounds how long a publish
waits for the broker: librdkafka's ``message.timeout.ms``.

Secrets (``sasl.password`` and any other key naming a password, secret, token
or private key) never appear in :meth:`KafkaSettings.describe`, ``repr`` or
an error eventbus raises.

confluent-kafka is an optional dependency (``pip install "eventbus[kafka]"``):
this module imports without it, and :func:`confluent_kafka_module` raises
:class:`~eventbus.errors.MissingDependency` saying what to install.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from eventbus.errors import ConfigurationError, MissingDependency
from eventbus.redaction import MASK

__all__ = [
    "DEFAULT_CLIENT_ID",
    "DEFAULT_DELIVERY_TIMEOUT",
    "INSTALL_HINT",
    "KafkaSettings",
    "confluent_kafka_module",
]

#: Seconds a publish waits for the broker's acknowledgement before it raises
#: :class:`~eventbus.errors.PublishError` (librdkafka's ``message.timeout.ms``).
DEFAULT_DELIVERY_TIMEOUT = 10.0

#: The ``client.id`` brokers log and quota by, unless told otherwise.
DEFAULT_CLIENT_ID = "eventbus"

#: What to run when confluent-kafka is missing.
INSTALL_HINT = 'pip install "eventbus[kafka]"'

#: Producer settings publish's promise rests on: set by eventbus, never weakened.
REQUIRED_PRODUCER: Mapping[str, str] = {"acks": "all", "enable.idempotence": "true"}

#: Librdkafka keys that belong in ``security`` (they carry credentials).
_SECURITY_KEY = re.compile(r"^(security\.protocol$|sasl\.|ssl\.|ssl_)")
#: Keys whose value is a secret: masked wherever settings are shown.
_SECRET_KEY = re.compile(r"pass|secret|token|credential|jaas|oauthbearer\.config|key\.pem|ssl_key")
#: Keys eventbus owns: set from the fields of :class:`KafkaSettings`.
_OWNED = {
    "bootstrap.servers": "bootstrap_servers",
    "metadata.broker.list": "bootstrap_servers",
    "client.id": "client_id",
    "message.timeout.ms": "delivery_timeout",
    "delivery.timeout.ms": "delivery_timeout",
}


def confluent_kafka_module() -> ModuleType:
    """The ``confluent_kafka`` module, or :class:`MissingDependency` naming what to install."""
    try:
        import confluent_kafka
    except ImportError as exc:
        raise MissingDependency(
            f"Kafka support needs confluent-kafka, which is not installed: {INSTALL_HINT}"
        ) from exc
    return confluent_kafka


@dataclass(frozen=True, repr=False)
class KafkaSettings:
    """Where the Kafka cluster is and how to talk to it (see the module docstring).

    ``bootstrap_servers``: ``host:port[,host:port...]``. ``security``: the
    librdkafka ``security.protocol``, ``sasl.*`` and ``ssl.*`` settings.
    ``producer`` / ``consumer``: other librdkafka settings of each direction
    (``linger.ms``, ``compression.type``...; ``acks`` and
    ``enable.idempotence`` cannot be weakened). ``delivery_timeout``: seconds
    a publish waits for the broker at most. Wrong values raise
    :class:`~eventbus.errors.ConfigurationError` naming the setting.
    """

    bootstrap_servers: str
    security: Mapping[str, Any] = field(default_factory=dict)
    producer: Mapping[str, Any] = field(default_factory=dict)
    consumer: Mapping[str, Any] = field(default_factory=dict)
    client_id: str = DEFAULT_CLIENT_ID
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT

    def __post_init__(self) -> None:
        servers = self.bootstrap_servers
        if not isinstance(servers, str) or not servers.strip():
            raise ConfigurationError(
                "Kafka bootstrap_servers is missing: host:port[,host:port...] "
                "(EVENTBUS_KAFKA_BOOTSTRAP_SERVERS, eventbus_kafka_bootstrap_servers)"
            )
        object.__setattr__(self, "bootstrap_servers", servers.strip())
        if not isinstance(self.client_id, str) or not self.client_id:
            raise ConfigurationError("Kafka client_id must be a non-empty string")
        timeout = self.delivery_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError(
                f"Kafka delivery_timeout must be a number of seconds > 0, got {timeout!r}"
            )
        for name in ("security", "producer", "consumer"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ConfigurationError(
                    f"Kafka {name} settings must be a mapping, got {type(value).__name__}"
                )
            object.__setattr__(self, name, {str(k): v for k, v in value.items()})
        for key in self.security:
            if not _SECURITY_KEY.match(key):
                raise ConfigurationError(
                    f"Kafka security settings take security.protocol, sasl.* and ssl.* keys, "
                    f"not {key!r}: put it in producer or consumer"
                )
        for name in ("producer", "consumer"):
            for key, value in getattr(self, name).items():
                if _SECURITY_KEY.match(key):
                    raise ConfigurationError(
                        f"Kafka {name} setting {key!r} belongs in security (kept out of logs)"
                    )
                if key in _OWNED:
                    raise ConfigurationError(
                        f"Kafka {name} setting {key!r} is set from KafkaSettings.{_OWNED[key]}"
                    )
                required = REQUIRED_PRODUCER.get(key) if name == "producer" else None
                if required is not None and str(value).lower() not in _same_as(required):
                    raise ConfigurationError(
                        f"Kafka producer setting {key}={value!r} is refused: eventbus needs "
                        f"{key}={required} (a publish returns once every in-sync replica has "
                        "the record, written once, in order per key)"
                    )

    # -- librdkafka configurations -------------------------------------------

    def client_config(self) -> dict[str, Any]:
        """What every client needs: the servers, the client id, the security settings."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            "client.id": self.client_id,
            **self.security,
        }

    def producer_config(self) -> dict[str, Any]:
        """The producer's librdkafka configuration (idempotent, ``acks=all``, bounded)."""
        return {
            **self.client_config(),
            # A publish waits for its record: sending at once beats librdkafka's
            # 5 ms linger (a batch() still fills batches while it produces).
            "linger.ms": 0,
            **self.producer,
            **REQUIRED_PRODUCER,
            "message.timeout.ms": max(1, round(self.delivery_timeout * 1000)),
        }

    def consumer_config(self, group_id: str) -> dict[str, Any]:
        """The client settings, ``group.id`` and the ``consumer`` settings (nothing more)."""
        if not isinstance(group_id, str) or not group_id:
            raise ConfigurationError("a Kafka consumer needs a group id (a non-empty string)")
        return {**self.client_config(), "group.id": group_id, **self.consumer}

    # -- showing -------------------------------------------------------------

    def describe(self) -> str:
        """One line for logs and errors, secrets masked."""
        parts = [f"bootstrap_servers={self.bootstrap_servers!r}"]
        if self.security:
            parts.append(f"security={_masked(self.security)}")
        if self.producer:
            parts.append(f"producer={_masked(self.producer)}")
        if self.consumer:
            parts.append(f"consumer={_masked(self.consumer)}")
        if self.client_id != DEFAULT_CLIENT_ID:
            parts.append(f"client_id={self.client_id!r}")
        parts.append(f"delivery_timeout={self.delivery_timeout}")
        return f"KafkaSettings({', '.join(parts)})"

    __repr__ = describe
    __str__ = describe

    # -- building from configuration ----------------------------------------

    @classmethod
    def from_mapping(
        cls, conf: Mapping[str, Any], *, prefix: str = "eventbus_kafka_"
    ) -> KafkaSettings:
        """Settings from a Celery app's ``conf`` (or any mapping): ``eventbus_kafka_*``.

        ``eventbus_kafka_bootstrap_servers`` (required), ``eventbus_kafka_security``,
        ``eventbus_kafka_producer``, ``eventbus_kafka_consumer`` (mappings),
        ``eventbus_kafka_client_id``, ``eventbus_kafka_delivery_timeout``.
        Missing values fall back to the environment (:meth:`from_env`).
        """
        env = _from_env(cls, os.environ, required=False)

        def get(name: str, default: Any) -> Any:
            value = conf.get(prefix + name)
            return default if value is None else value

        return cls(
            bootstrap_servers=get("bootstrap_servers", env.bootstrap_servers if env else ""),
            security=get("security", env.security if env else {}),
            producer=get("producer", {}),
            consumer=get("consumer", {}),
            client_id=get("client_id", env.client_id if env else DEFAULT_CLIENT_ID),
            delivery_timeout=_seconds(
                get("delivery_timeout", env.delivery_timeout if env else DEFAULT_DELIVERY_TIMEOUT),
                prefix + "delivery_timeout",
            ),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaSettings:
        """Settings from ``EVENTBUS_KAFKA_*`` environment variables.

        ``EVENTBUS_KAFKA_BOOTSTRAP_SERVERS`` (required),
        ``EVENTBUS_KAFKA_SECURITY_PROTOCOL``, ``EVENTBUS_KAFKA_SASL_MECHANISM``,
        ``EVENTBUS_KAFKA_SASL_USERNAME``, ``EVENTBUS_KAFKA_SASL_PASSWORD``,
        ``EVENTBUS_KAFKA_SSL_CA_LOCATION``, ``EVENTBUS_KAFKA_CLIENT_ID``,
        ``EVENTBUS_KAFKA_DELIVERY_TIMEOUT``.
        """
        settings = _from_env(cls, os.environ if environ is None else environ, required=True)
        assert settings is not None
        return settings


def _from_env(
    cls: type[KafkaSettings], env: Mapping[str, str], *, required: bool
) -> KafkaSettings | None:
    servers = env.get("EVENTBUS_KAFKA_BOOTSTRAP_SERVERS", "")
    if not servers.strip() and not required:
        return None
    # (An empty variable is no setting.)
    security = {key: env[var] for var, key in _SECURITY_ENV.items() if env.get(var)}
    timeout = env.get("EVENTBUS_KAFKA_DELIVERY_TIMEOUT")
    return cls(
        bootstrap_servers=servers,
        security=security,
        client_id=env.get("EVENTBUS_KAFKA_CLIENT_ID") or DEFAULT_CLIENT_ID,
        delivery_timeout=(
            _seconds(timeout, "EVENTBUS_KAFKA_DELIVERY_TIMEOUT")
            if timeout
            else DEFAULT_DELIVERY_TIMEOUT
        ),
    )


_SECURITY_ENV = {
    "EVENTBUS_KAFKA_SECURITY_PROTOCOL": "security.protocol",
    "EVENTBUS_KAFKA_SASL_MECHANISM": "sasl.mechanism",
    "EVENTBUS_KAFKA_SASL_USERNAME": "sasl.username",
    "EVENTBUS_KAFKA_SASL_PASSWORD": "sasl.password",
    "EVENTBUS_KAFKA_SSL_CA_LOCATION": "ssl.ca.location",
}


def _same_as(required: str) -> tuple[str, ...]:
    # librdkafka takes booleans and acks in several spellings.
    return ("all", "-1") if required == "all" else ("true", "1")


def _masked(options: Mapping[str, Any]) -> str:
    shown = {k: (MASK if _SECRET_KEY.search(k) else v) for k, v in sorted(options.items())}
    return repr(shown)


def _seconds(value: Any, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}") from None
