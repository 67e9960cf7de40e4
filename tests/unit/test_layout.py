"""The package's layout is its architecture: no import circles, and each layer imports only down.

Imports are read from the source (function-local ones included: they run too);
imports under ``if TYPE_CHECKING:`` never run and do not count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "eventbus"

#: Third-party packages of the Celery integration: only eventbus.celery, the
#: CLI, metrics, contrib and the broker error names may import them.
CELERY_FAMILY = ("celery", "kombu", "amqp", "billiard", "vine", "librabbitmq")

#: What no layer below the integrations imports.
NOT_BELOW = (*CELERY_FAMILY, "prometheus_client", "click", "eventbus.celery", "eventbus.cli")

#: Folder -> what its modules may not import (packages and eventbus folders).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "domain": (*NOT_BELOW, "redis", "sqlalchemy", "eventbus.bus", "eventbus.guarantees"),
    "bus": (*NOT_BELOW, "redis", "sqlalchemy"),
    "guarantees": (*NOT_BELOW, "sqlalchemy"),  # its state lives on Redis
    "deadletter": (*NOT_BELOW, "redis", "sqlalchemy"),
    "store": (*NOT_BELOW, "redis"),
    "outbox": (*NOT_BELOW, "redis"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def runtime_imports(path: Path) -> Iterator[str]:
    """Dotted names this module imports when it runs (``TYPE_CHECKING`` blocks skipped)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def walk(node: ast.AST) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for other in child.orelse:
                    yield from walk(other)
                continue
            if isinstance(child, ast.Import):
                yield from (alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    module = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    module = child.module or ""
                for alias in child.names:
                    full = f"{module}.{alias.name}"
                    yield full if full in MODULES else module
            yield from walk(child)

    yield from walk(ast.parse(path.read_text(), str(path)))


def eventbus_graph() -> dict[str, set[str]]:
    return {
        name: {m for m in runtime_imports(path) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_through_others() -> None:
    assert cycles(eventbus_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_a_layer_imports_only_what_it_may(folder: str) -> None:
    offenders = [
        f"{name} imports {imported}"
        for name, path in MODULES.items()
        if name == f"eventbus.{folder}" or name.startswith(f"eventbus.{folder}.")
        for imported in runtime_imports(path)
        if any(imported == f or imported.startswith(f + ".") for f in FORBIDDEN[folder])
    ]
    assert offenders == []


def test_the_top_level_holds_only_the_public_face_and_shared_leaves() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "broker_errors.py", "errors.py", "redaction.py"]


def test_only_the_kafka_package_imports_the_kafka_client() -> None:
    # confluent-kafka is an optional extra: eventbus/kafka imports it behind
    # the error that says what to install; nothing else may reach it.
    offenders = [
        f"{name} imports {imported}"
        for name, path in MODULES.items()
        if not (name == "eventbus.kafka" or name.startswith("eventbus.kafka."))
        for imported in runtime_imports(path)
        if imported == "confluent_kafka" or imported.startswith("confluent_kafka.")
    ]
    assert offenders == []
