"""Taking a private name away from the installed library, as an upgrade that moved it would.

:func:`take_away` undoes itself with the test's ``monkeypatch``. How a name
goes depends on its kind, so that the library itself keeps working (a real
release that renamed it would have renamed its own uses too):

* a method with an expected signature gets one it does not expect: a
  forwarding wrapper ``(self, *arguments, **keywords)`` (a removed
  ``mentions`` name: the same wrapper, whose code does not use it);
* an instance attribute: every ``__init__`` of the class that sets it is
  wrapped by one whose code does not, so the check finds it nowhere;
* an attribute (of a class or module) that the library reads itself
  (``Queues._consume_from``, ``AMQP._event_dispatcher``...) cannot be
  deleted without breaking Celery, not eventbus: the check is told it is
  missing (``simulated``), and everything else runs for real. A module
  attribute nothing else reads (``resolve_aliases``...) is deleted for real.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

from eventbus.celery.internals import compat
from eventbus.celery.internals.reaches import Reach

__all__ = ["take_away"]


def take_away(reach: Reach, monkeypatch: pytest.MonkeyPatch) -> str:
    """Make ``reach`` missing (or wrongly shaped) in the installed library; return how."""
    module_name, _, path = reach.target.partition(":")
    owner: Any = importlib.import_module(module_name)
    *owners, name = path.split(".")
    for part in owners:
        owner = getattr(owner, part)
    if reach.kind == "instance attribute":
        if _hide_instance_attribute(owner, name, monkeypatch):
            # A class-level default too: the library reads it, the check is told.
            _simulate_target(reach.target, monkeypatch)
            return "set by no __init__; its class default simulated"
        return "set by no __init__"
    if reach.kind == "method" and isinstance(owner, type):
        _reshape(owner, name, monkeypatch)
        return "signature changed"
    if reach.kind == "method":  # a module's function
        original = getattr(owner, name)

        def reshaped_function(*arguments: Any, **keywords: Any) -> Any:
            return original(*arguments, **keywords)

        reshaped_function.__name__ = name
        monkeypatch.setattr(owner, name, reshaped_function)
        return "signature changed"
    _simulate(reach, monkeypatch)
    return "simulated"


def _reshape(cls: type, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    defining = next(c for c in cls.__mro__ if name in vars(c))
    original = vars(defining)[name]
    if isinstance(original, classmethod | staticmethod):
        monkeypatch.setattr(defining, name, original)  # (none such in the table)
        return
    function = original

    def reshaped(self: Any, *arguments: Any, **keywords: Any) -> Any:
        return function(self, *arguments, **keywords)

    reshaped.__name__ = name
    monkeypatch.setattr(defining, name, reshaped)


def _hide_instance_attribute(cls: type, name: str, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Wrap the ``__init__`` methods that set ``name``; True if a class default remains."""
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        own = inspect.unwrap(init) if callable(init) else init  # (a decorated __init__)
        code = getattr(own, "__code__", None)
        if code is None or name not in code.co_names:
            continue
        monkeypatch.setattr(klass, "__init__", _forwarding_init(init))
    return any(name in vars(klass) for klass in cls.__mro__)


def _forwarding_init(init: Any) -> Any:
    def __init__(self: Any, *arguments: Any, **keywords: Any) -> None:
        init(self, *arguments, **keywords)

    return __init__


_simulated: set[str] = set()


def _simulate(reach: Reach, monkeypatch: pytest.MonkeyPatch) -> None:
    module_name, _, path = reach.target.partition(":")
    if "." not in path:  # a module's own attribute: nothing in the library reads it back
        module = importlib.import_module(module_name)
        if path in ("resolve_aliases", "ChannelPromise"):
            monkeypatch.delattr(module, path)
            return
    _simulate_target(reach.target, monkeypatch)


def _simulate_target(target: str, monkeypatch: pytest.MonkeyPatch) -> None:
    real = compat._check
    missing = {target}
    if hasattr(compat._check, "missing"):
        missing |= compat._check.missing  # type: ignore[attr-defined]
        real = compat._check.real  # type: ignore[attr-defined]

    def check(reach: Reach) -> str | None:
        if reach.target in missing:
            return "not found (simulated)"
        return real(reach)

    check.missing = missing  # type: ignore[attr-defined]
    check.real = real  # type: ignore[attr-defined]
    monkeypatch.setattr(compat, "_check", check)
