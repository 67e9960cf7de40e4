"""``eventbus schema export``: the wire format, documented from the registered event types.

Two documents, built from the bus's event registry (import the app with
``-A`` so its event classes are defined):

* JSON Schema (the default): the envelope's schema, and the schema of every
  event type's ``data`` keyed by type name and version::

      {"envelope": {...}, "events": {"todo.created": {"2": {...}}}}

  A consumer looks a message up as ``events[event_type][str(version)]``;
  older versions are not there (the code upcasts them, see
  ``x-upcast-from``).
* AsyncAPI 3.0 (``--asyncapi``): one channel per event type, its message
  (the envelope, ``data`` typed), a ``send`` operation per type and a
  ``receive`` operation per subscribed handler (with its Celery queue).

Exit codes: 0 ok, 1 the app's bus could not be used, 2 usage error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from eventbus.bus.base import BaseEventBus
from eventbus.cli.context import bus_of, handle_errors
from eventbus.domain.events import Event, EventRegistry

__all__ = ["asyncapi_document", "envelope_schema", "json_schema_document", "schema"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_VERSION = "3.0.0"


def envelope_schema(data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema of an envelope on the wire; ``data`` is the payload's, if known."""
    nullable_string = {"type": ["string", "null"]}
    return {
        "title": "eventbus envelope",
        "description": (
            "One event on the wire (JSON). Each subscribed handler's Celery task message "
            "carries it as its single positional argument."
        ),
        "type": "object",
        "required": ["event_id", "event_type", "version", "occurred_at", "data"],
        "properties": {
            "event_id": {
                "type": "string",
                "format": "uuid",
                "description": "Stable across retries and replays.",
            },
            "event_type": {"type": "string"},
            "version": {
                "type": "integer",
                "minimum": 1,
                "description": "Schema version of data; readers upcast older versions.",
            },
            "occurred_at": {"type": "string", "format": "date-time"},
            "aggregate_id": nullable_string,
            "aggregate_type": nullable_string,
            "sequence": {
                "type": ["integer", "null"],
                "description": "Position of the event in its aggregate, when known.",
            },
            "correlation_id": nullable_string,
            "causation_id": nullable_string,
            "metadata": {"type": "object"},
            "data": data if data is not None else {"type": "object"},
        },
    }


def _data_schema(cls: type[Event], registry: EventRegistry, **options: Any) -> dict[str, Any]:
    schema = cls.model_json_schema(**options)
    schema["x-event-type"] = cls.event_type
    schema["x-event-version"] = cls.event_version
    schema["x-python-class"] = f"{cls.__module__}.{cls.__qualname__}"
    upcast_from = registry.upcasters.versions(cls.event_type)
    if upcast_from:
        schema["x-upcast-from"] = upcast_from
    return schema


def json_schema_document(registry: EventRegistry) -> dict[str, Any]:
    """The envelope's JSON Schema and every registered type's, by type name and version."""
    return {
        "$comment": "eventbus wire format: events[event_type][version] is the schema of data",
        "envelope": {"$schema": JSON_SCHEMA_DIALECT, **envelope_schema()},
        "events": {
            cls.event_type: {
                str(cls.event_version): {
                    "$schema": JSON_SCHEMA_DIALECT,
                    **_data_schema(cls, registry),
                }
            }
            for cls in registry
        },
    }


def _key(name: str) -> str:
    # AsyncAPI component keys must match ^[a-zA-Z0-9.\-_]+$.
    return re.sub(r"[^A-Za-z0-9.\-_]", "_", name)


def asyncapi_document(bus: BaseEventBus, *, title: str = "eventbus events") -> dict[str, Any]:
    """An AsyncAPI 3.0 document of the bus's event types and handlers."""
    from eventbus import __version__

    registry = bus.event_registry
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for cls in registry:
        key = _key(cls.event_type)
        # The data schema's own definitions become components of their own,
        # prefixed by the event so two events' "Address" models do not clash.
        data = _data_schema(cls, registry, ref_template=f"#/components/schemas/{key}.{{model}}")
        for name, definition in data.pop("$defs", {}).items():
            schemas[f"{key}.{_key(name)}"] = definition
        schemas[key] = data
        payload = envelope_schema({"$ref": f"#/components/schemas/{key}"})
        payload["properties"]["event_type"] = {"const": cls.event_type}
        payload["properties"]["version"] = {"const": cls.event_version}
        payload["title"] = f"{cls.event_type} envelope"
        schemas[f"{key}.envelope"] = payload
        doc = (cls.__doc__ or "").strip()
        messages[key] = {
            "name": cls.event_type,
            "title": cls.__name__,
            **({"summary": doc.splitlines()[0]} if doc else {}),
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{key}.envelope"},
        }
        channel_ref = {"$ref": f"#/channels/{key}"}
        message_ref = {"$ref": f"#/channels/{key}/messages/{key}"}
        channels[key] = {
            "address": cls.event_type,
            "title": cls.event_type,
            "description": (
                f"{cls.event_type} v{cls.event_version} events: one Celery task message "
                "per subscribed handler, on that handler's queue."
            ),
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
        }
        operations[_key(f"publish.{cls.event_type}")] = {
            "action": "send",
            "title": f"Publish {cls.event_type}",
            "channel": channel_ref,
            "messages": [message_ref],
        }
        for sub in bus.subscriptions(cls):
            queue = sub.options.queue or getattr(bus, "default_queue", None)
            operations[_key(f"handle.{sub.name}.{cls.event_type}")] = {
                "action": "receive",
                "title": f"{sub.name} handles {cls.event_type}",
                "channel": channel_ref,
                "messages": [message_ref],
                **({"x-celery-queue": queue} if queue else {}),
                "x-eventbus-handler": sub.describe(),
            }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title,
            "version": __version__,
            "description": "Domain events published with eventbus; JSON envelopes.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


@click.group()
def schema() -> None:
    """The wire format of the registered event types."""


@schema.command("export")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write the document to FILE (default: standard output).",
)
@click.option(
    "--asyncapi", is_flag=True, help="An AsyncAPI 3.0 document instead of the JSON Schemas."
)
@click.pass_context
@handle_errors
def export(ctx: click.Context, output: Path | None, asyncapi: bool) -> None:
    """Write the JSON Schema of every registered event type (or an AsyncAPI document)."""
    bus = bus_of(ctx)
    document = asyncapi_document(bus) if asyncapi else json_schema_document(bus.event_registry)
    if not len(bus.event_registry):
        click.echo("warning: no event type is registered (is -A your app?)", err=True)
    text = json.dumps(document, indent=2, sort_keys=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text)
    click.echo(f"wrote {output} ({len(bus.event_registry)} event type(s))", err=True)
