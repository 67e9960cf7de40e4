"""Only ``eventbus/celery/internals/`` touches the private or undocumented names of
Celery, kombu, py-amqp, redis-py and prometheus_client (issue 12).

The rule, read from the source (AST) of every module of ``eventbus/`` outside
``eventbus/celery/internals/``:

1. No import of a private name from those libraries (or billiard and vine,
   Celery's own): ``from celery import _state``, ``import kombu._x``,
   ``from amqp.x import _y``: any dotted part or imported name starting with
   ``_`` (dunders aside).
2. No access to a private attribute that eventbus does not own: ``obj._x``
   (``self._x`` too: a subclass of a Celery class reads Celery's), and
   ``getattr``/``setattr``/``hasattr``/``delattr`` with a literal ``"_x"``,
   unless ``_x`` is eventbus's own. eventbus owns a name it defines outside
   the seam: a ``def``/``class`` of that name, an assignment ``_x = ...`` or
   ``obj._x = ...`` (``self._x = ...`` in ``__init__``, say), a ``__slots__``
   entry, a keyword argument; and every ``_eventbus_*`` name. A declaration
   without a value (``_x: int`` in a class body) owns nothing. A few private
   names of other libraries' public APIs are allowed (:data:`ALLOWED`).
   Names listed in the registry (:mod:`eventbus.celery.internals.reaches`) are
   never owned: assigning one is a monkeypatch.
3. No read or assignment of an undocumented public name the registry lists
   (``consumer.update_strategies``, ``values.ValueClass``...), except the few
   too common to tell apart from eventbus's own use of public APIs
   (:data:`COMMON`: ``message.ack()``, ``consumer.connection_errors``...);
   those may still not be assigned (a monkeypatch) on anything but ``self``.

On the tree this issue started from (commit 4c9f4b8) rule 1 and 2 fail:
``celery._state`` and ``_get_active_apps``, ``_config_source``,
``queues._consume_from``, ``self._connection_errors``, ``_multiprocess``; rule
3: ``consumer.on_decode_error``... ``update_strategies``, ``ValueClass``,
``should_terminate``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from eventbus.celery.internals.reaches import REACHES

PACKAGE = Path(__file__).resolve().parents[2] / "eventbus"
SEAM = PACKAGE / "celery" / "internals"

#: The libraries whose private names only the seam touches.
LIBRARIES = ("celery", "kombu", "amqp", "prometheus_client", "billiard", "vine", "redis")

#: Private names of other libraries' documented APIs that eventbus uses.
ALLOWED = {
    "_mapping",  # SQLAlchemy's Row._mapping (documented)
    "_meta",  # Django's Model._meta (documented)
    "_get_current_object",  # Werkzeug's LocalProxy (Flask's documented way)
    "_asdict",  # namedtuple
    "_replace",  # namedtuple
    "_fields",  # namedtuple
}

#: Registry names too common to flag when read: public API eventbus uses legitimately.
COMMON = {
    "__init__",
    "ack",
    "accept",
    "acknowledge",
    "append",
    "basic_consume",
    "call_soon",
    "conn_or_acquire",
    "connection_errors",
    "cycle",
    "drain_events",
    "events",
    "flush",
    "get",
    "Message",
    "on_failure",
    "on_timeout",
    "register_with_event_loop",
    "reject",
    "write",
}

REGISTRY_NAMES = {reach.target.rpartition(".")[2].rpartition(":")[2] for reach in REACHES}


def sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if SEAM in path.parents:
            continue
        yield path, ast.parse(path.read_text(), str(path))


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def owned_names(trees: list[ast.Module]) -> set[str]:
    """The private names eventbus defines outside the seam (see the module's rule 2)."""
    owned: set[str] = set()
    for tree in trees:
        # ``_x: T`` with no value declares a name (maybe a base class's): owns nothing.
        declared = {
            id(node.target)
            for node in ast.walk(tree)
            if isinstance(node, ast.AnnAssign) and node.value is None
        }
        for node in ast.walk(tree):
            if id(node) in declared:
                continue
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                owned.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                owned.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                owned.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target = node.target
                owned.add(target.id if isinstance(target, ast.Name) else ast.unparse(target))
            elif isinstance(node, ast.keyword | ast.arg) and node.arg:
                owned.add(node.arg)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets)
                and isinstance(node.value, ast.Tuple | ast.List)
            ):
                owned |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    return {name for name in owned if private(name)} - REGISTRY_NAMES


def owned_public_names(trees: list[ast.Module]) -> set[str]:
    """Public names eventbus's own classes define (``self.events = 0``, ``__slots__``)."""
    owned: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            ):
                owned.add(node.attr)
            elif (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets)
                and isinstance(node.value, ast.Tuple | ast.List)
            ):
                owned |= {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    return {name for name in owned if not private(name)}


def violations(
    path: Path, tree: ast.Module, owned: set[str], owned_public: frozenset[str] = frozenset()
) -> Iterator[str]:
    where = path.relative_to(PACKAGE.parent)

    def ours(name: str) -> bool:
        return name.startswith("_eventbus") or name in ALLOWED or name in owned

    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = node.module or "" if isinstance(node, ast.ImportFrom) else ""
            names = [alias.name for alias in node.names]
            dotted = [module] if isinstance(node, ast.ImportFrom) else names
            for full in dotted:
                parts = full.split(".")
                if node_level(node) or parts[0] not in LIBRARIES:
                    continue
                if any(private(p) for p in parts):
                    yield f"{line}: imports private module {full}"
                if isinstance(node, ast.ImportFrom):
                    for name in names:
                        if private(name):
                            yield f"{line}: imports {name} from {full}"
        elif isinstance(node, ast.Attribute):
            name = node.attr
            if private(name) and not ours(name):
                yield f"{line}: private attribute {ast.unparse(node)}"
            elif name in REGISTRY_NAMES and not private(name) and name not in owned_public:
                stored = isinstance(node.ctx, ast.Store | ast.Del)
                on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                if (stored and not on_self) or (not stored and name not in COMMON):
                    yield f"{line}: undocumented {ast.unparse(node)} (a reach: internals only)"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            name = node.args[1].value
            if (private(name) and not ours(name)) or (
                name in REGISTRY_NAMES and not private(name) and name not in COMMON
            ):
                yield f"{line}: {node.func.id}(..., {name!r})"


def node_level(node: ast.Import | ast.ImportFrom) -> int:
    return node.level if isinstance(node, ast.ImportFrom) else 0


def test_no_private_name_of_celery_kombu_amqp_or_prometheus_outside_the_seam() -> None:
    found = list(sources())
    trees = [tree for _, tree in found]
    owned, public = owned_names(trees), frozenset(owned_public_names(trees))
    offenders = [v for path, tree in found for v in violations(path, tree, owned, public)]
    assert offenders == [], "\n".join(offenders)


def test_the_rule_catches_each_kind_of_reach() -> None:
    # Given code that reaches in each way the rule names
    code = ast.parse(
        "from celery import _state\n"
        "import kombu._private\n"
        "apps = _state._get_active_apps()\n"
        "queues._consume_from\n"
        "self._connection_errors\n"
        "getattr(values.ValueClass, '_multiprocess', False)\n"
        "consumer.update_strategies = wrapped\n"
        "worker_state.should_terminate = 0\n"
        "message.ack()\n"
        "self._mine\n"
        "class Request(CeleryRequest):\n"
        "    _declared: tuple[type, ...]\n"
        "    def f(self):\n"
        "        return self._declared\n"
    )
    # When it is checked, with ``_mine`` eventbus's own
    found = list(violations(PACKAGE / "x.py", code, {"_mine", *owned_names([code])}))
    # Then every reach is named, and nothing else
    text = "\n".join(found)
    for reach in (
        "_state",
        "kombu._private",
        "_get_active_apps",
        "_consume_from",
        "_connection_errors",
        "_multiprocess",
        "update_strategies",
        "should_terminate",
        "ValueClass",
        "_declared",
    ):
        assert reach in text, text
    assert "ack" not in text.replace("_ack", "") and "_mine" not in text
