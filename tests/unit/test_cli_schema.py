"""``eventbus schema export``: JSON Schema per event type and version, or AsyncAPI 3."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from pydantic import BaseModel

from eventbus import Event, EventRegistry, InMemoryEventBus, create_event, registry
from eventbus.cli.main import main
from eventbus.cli.schema import asyncapi_document, json_schema_document
from tests.store.events import CURRENT

APP = ["-A", "tests.unit.cli_app"]
COMPONENT_KEY = re.compile(r"^[a-zA-Z0-9.\-_]+$")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, [*APP, "schema", "export", *args])


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_json_schema_of_every_event_type_by_name_and_version() -> None:
    result = invoke()

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    # (the process-wide registry: other tests' event types are in it too)
    assert set(document["events"]) == set(registry.names())
    assert {"contract.item_added", "contract.item_removed"} <= set(document["events"])
    added = document["events"]["contract.item_added"]["1"]
    assert added["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert set(added["required"]) == {"sku", "quantity"}
    assert added["additionalProperties"] is False  # unknown fields are refused at publish
    assert (added["x-event-type"], added["x-event-version"]) == ("contract.item_added", 1)
    # The envelope's schema documents every field a message has
    envelope = document["envelope"]
    wire = create_event("contract.item_added", {"sku": "A", "quantity": 1}).to_wire()
    assert set(wire) == set(envelope["properties"])
    assert set(envelope["required"]) <= set(wire)


def test_output_goes_to_a_file(tmp_path: Path) -> None:
    target = tmp_path / "schemas.json"

    result = invoke("--output", str(target))

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"{len(registry)} event type(s)" in result.stderr
    assert "contract.item_removed" in json.loads(target.read_text())["events"]


def test_upcast_versions_are_documented() -> None:
    document = json_schema_document(CURRENT)
    todo = document["events"]["store.todo_created"]
    assert list(todo) == ["3"]
    assert todo["3"]["x-upcast-from"] == [1, 2]
    assert "x-upcast-from" not in document["events"]["store.todo_done"]["1"]


def test_asyncapi_document_of_channels_messages_and_operations() -> None:
    result = invoke("--asyncapi")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["asyncapi"] == "3.0.0"
    assert {"title", "version"} <= set(document["info"])
    assert set(document["channels"]) == set(registry.names())
    assert document["channels"]["contract.item_added"]["address"] == "contract.item_added"
    operations = document["operations"]
    assert operations["publish.contract.item_added"]["action"] == "send"
    receivers = sorted(k for k, op in operations.items() if op["action"] == "receive")
    assert receivers == [  # the app's handlers: a type without any has none
        "handle.tests.unit.cli_app.record.contract.item_added",
        "handle.tests.unit.cli_app.release_stock.contract.item_removed",
        "handle.tests.unit.cli_app.reserve_stock.contract.item_added",
    ]
    # Every reference resolves, and message payloads are typed envelopes
    for ref in refs(document):
        resolve(document, ref)
    payload = resolve(
        document, document["components"]["messages"]["contract.item_added"]["payload"]["$ref"]
    )
    assert payload["properties"]["event_type"] == {"const": "contract.item_added"}
    data = resolve(document, payload["properties"]["data"]["$ref"])
    assert set(data["required"]) == {"sku", "quantity"}
    for section in ("messages", "schemas"):
        assert all(COMPONENT_KEY.match(key) for key in document["components"][section])


def test_asyncapi_hoists_nested_models_per_event() -> None:
    reg = EventRegistry()

    class Address(BaseModel):
        street: str

    class Moved(Event, registry=reg):
        """A customer moved."""

        event_type = "crm/customer moved"  # characters a component key cannot have
        to: Address

    document = asyncapi_document(InMemoryEventBus(event_registry=reg))

    schemas = document["components"]["schemas"]
    assert set(schemas) == {
        "crm_customer_moved",
        "crm_customer_moved.Address",
        "crm_customer_moved.envelope",
    }
    assert schemas["crm_customer_moved"]["properties"]["to"] == {
        "$ref": "#/components/schemas/crm_customer_moved.Address"
    }
    assert document["components"]["messages"]["crm_customer_moved"]["summary"] == (
        "A customer moved."
    )
    assert document["channels"]["crm_customer_moved"]["address"] == "crm/customer moved"
    for ref in refs(document):
        resolve(document, ref)


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert invoke("--bogus").exit_code == 2
    assert invoke("--output", str(tmp_path)).exit_code == 2  # a directory
    assert CliRunner().invoke(main, [*APP, "schema", "import"]).exit_code == 2
    unknown_app = ["-A", "no_such_module_here", "schema", "export"]
    assert CliRunner().invoke(main, unknown_app).exit_code == 2
