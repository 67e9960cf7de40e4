"""``eventbus kafka``: feed Kafka topics into the app's Celery handlers.

``eventbus kafka consume`` runs one member of a consumer group
(:class:`eventbus.kafka.consumer.KafkaConsumer`): it reads the topics,
validates each record and dispatches it to the handlers subscribed to its
event type, as ``bus.publish`` would, committing offsets only once the
Celery broker accepted the handler messages. Run as many as the topics have
partitions; SIGTERM (or Ctrl-C) stops one gracefully: the batch in hand is
dispatched, what was dispatched is committed, and it leaves the group.

Settings come from the options, else the environment, else the Celery app's
configuration (``eventbus_kafka_*``). Exit codes: 0 stopped, 1 the consumer
failed, 2 usage error (no servers, no group, no topic, a bad mapping).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from eventbus.cli.context import bus_of, echo, handle_errors
from eventbus.errors import MissingDependency

if TYPE_CHECKING:
    from eventbus.kafka.settings import KafkaSettings

__all__ = ["kafka"]

#: librdkafka keys that carry credentials: KafkaSettings.security, kept out of logs.
_SECURITY_PREFIXES = ("security.", "sasl.", "ssl.", "ssl_")


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key or not item:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=option)
        pairs[key] = item
    return pairs


def _setting(bus: Any, name: str) -> Any:
    app = getattr(bus, "app", None)
    return app.conf.get(f"eventbus_kafka_{name}") if app is not None else None


def _mapping(value: object, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise click.UsageError(f"eventbus_kafka_{name} must be a dict, got {type(value).__name__}")
    return dict(value)


def _kafka_settings(
    conf: Mapping[str, Any], servers: str | None, extra: Mapping[str, str]
) -> KafkaSettings:
    """The app's ``eventbus_kafka_*`` settings, with the options' on top.

    ``--config`` takes any librdkafka setting; those that carry credentials
    go to ``security`` (kept out of logs), the others to ``consumer``.
    """
    from eventbus.kafka.settings import KafkaSettings

    security = {k: v for k, v in extra.items() if k.startswith(_SECURITY_PREFIXES)}
    consumer = {k: v for k, v in extra.items() if k not in security}
    mapping = {k: v for k, v in conf.items() if str(k).startswith("eventbus_kafka_")}
    if servers:
        mapping["eventbus_kafka_bootstrap_servers"] = servers
    for name, given in (("consumer", consumer), ("security", security)):
        if given:
            key = f"eventbus_kafka_{name}"
            mapping[key] = {**_mapping(mapping.get(key), name), **given}
    return KafkaSettings.from_mapping(mapping)


def _default_topics(bus: Any, conf: Mapping[str, Any], mapping: Mapping[str, str]) -> list[str]:
    """The topics of the subscribed event types (as a KafkaEventBus of ``conf`` names
    them), and the topics ``mapping`` maps; UsageError when that names none."""
    from eventbus.kafka.topics import TopicNaming

    naming = TopicNaming.parse(
        conf.get("eventbus_kafka_topics") or "event_type",
        prefix=conf.get("eventbus_kafka_topic_prefix") or "",
    )
    handled = {t for sub in bus.subscriptions() for t in sub.event_types}
    found = {naming.topic_for_type(t) for t in handled}
    names = sorted({name for name in found if name is not None} | set(mapping))
    if not names or (handled and None in found and not mapping):
        raise click.UsageError(
            "no topic to read: pass --topic (or --topic-type), or set "
            "eventbus_kafka_consume_topics (topics named by aggregate type cannot be "
            "told from the handlers' event types)"
        )
    return names


@click.group()
def kafka() -> None:
    """Kafka: feed topics into the app's Celery handlers."""


@kafka.command()
@click.option(
    "--bootstrap-servers",
    envvar="EVENTBUS_KAFKA_BOOTSTRAP_SERVERS",
    default=None,
    help="host:port[,host:port] of the Kafka brokers (default: EVENTBUS_KAFKA_BOOTSTRAP_SERVERS, "
    "else eventbus_kafka_bootstrap_servers).",
)
@click.option(
    "--group",
    envvar="EVENTBUS_KAFKA_GROUP",
    default=None,
    help="Consumer group id (default: EVENTBUS_KAFKA_GROUP, else eventbus_kafka_group_id).",
)
@click.option(
    "--topic",
    "topics",
    multiple=True,
    help="A topic to read (repeatable; default: eventbus_kafka_consume_topics, else the "
    "topics of the subscribed event types, as eventbus_kafka_topics names them, and of "
    "--topic-type).",
)
@click.option(
    "--topic-type",
    "topic_types",
    multiple=True,
    metavar="TOPIC=EVENT_TYPE",
    help="Records of TOPIC without eventbus headers (plain JSON from another producer) are "
    "EVENT_TYPE data (repeatable; added to eventbus_kafka_topic_types).",
)
@click.option(
    "--config",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="A librdkafka consumer setting, e.g. security.protocol=SSL (repeatable; added to "
    "eventbus_kafka_consumer).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Records dispatched together (one broker round trip, one commit).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=1, max=65535),
    default=None,
    help="Serve Prometheus metrics (lag per partition) on this port.",
)
@click.option(
    "--metrics-addr", default="0.0.0.0", show_default=True, help="Address of --metrics-port."
)
@click.pass_context
@handle_errors
def consume(
    ctx: click.Context,
    bootstrap_servers: str | None,
    group: str | None,
    topics: tuple[str, ...],
    topic_types: tuple[str, ...],
    options: tuple[str, ...],
    batch_size: int,
    metrics_port: int | None,
    metrics_addr: str,
) -> None:
    """Read Kafka topics as a consumer-group member; dispatch each record to its handlers.

    Offsets are committed only after the Celery broker accepted the handler
    messages. A record that cannot be decoded (or names an unknown type or
    version) becomes a dead letter with its topic, partition and offset.
    """
    mapping = _pairs(topic_types, "--topic-type")
    extra = _pairs(options, "--config")
    bus = bus_of(ctx)
    app = getattr(bus, "app", None)
    conf: Mapping[str, Any] = app.conf if app is not None else {}
    mapping = {**_mapping(_setting(bus, "topic_types"), "topic_types"), **mapping}
    if not (bootstrap_servers or conf.get("eventbus_kafka_bootstrap_servers")):
        raise click.UsageError(
            "no Kafka servers: pass --bootstrap-servers, set EVENTBUS_KAFKA_BOOTSTRAP_SERVERS, "
            "or set eventbus_kafka_bootstrap_servers"
        )
    kafka_settings = _kafka_settings(conf, bootstrap_servers, extra)
    group = group or _setting(bus, "group_id")
    if not group:
        raise click.UsageError(
            "no consumer group: pass --group, set EVENTBUS_KAFKA_GROUP, or set "
            "eventbus_kafka_group_id"
        )
    for topic, event_type in mapping.items():
        if event_type not in bus.event_registry:
            raise click.BadParameter(
                f"topic {topic!r} maps to {event_type!r}, which is no registered event type",
                param_hint="--topic-type",
            )
    names = (
        list(topics)
        or list(_setting(bus, "consume_topics") or [])
        or _default_topics(bus, conf, mapping)
    )

    from eventbus.cli.outbox import stop_on_signals
    from eventbus.kafka.consumer import KafkaConsumer

    metrics = None
    if metrics_port is not None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise MissingDependency(
                '--metrics-port needs prometheus-client: pip install "eventbus[metrics]"'
            ) from None

        from eventbus.kafka.consumer_metrics import ConsumerMetrics

        registry = CollectorRegistry()
        metrics = ConsumerMetrics(str(group), registry)
        start_http_server(metrics_port, addr=metrics_addr, registry=registry)
    consumer = KafkaConsumer(
        bus,
        topics=names,
        group_id=str(group),
        settings=kafka_settings,
        topic_types=mapping,
        batch_size=batch_size,
        metrics=metrics,
    )
    echo(f"consuming {', '.join(names)} as group {group} (SIGTERM or Ctrl-C stops)")
    with stop_on_signals() as stop:
        totals = consumer.run(stop)
    echo(
        f"stopped: dispatched {totals['dispatched']}, dead-lettered {totals['dead_lettered']}, "
        f"failed batches {totals['failed_batches']} in this run; offsets committed"
    )
