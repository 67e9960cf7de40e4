"""What importing modules costs in memory, per module (for bench_rss).

``python -X importtime`` times every import; this weighs it. A meta path
finder wraps the loader of every module imported from then on, so each
module's import is measured from its creation to the end of its body:
*inclusive* (the module and everything it imported) and *exclusive* (minus
the modules it imported itself), as importtime's "cumulative" and "self".
Two weights: the resident set size (``/proc/self/statm``: pages the process
touched, what the worker's RSS is made of, in page-sized steps) and, with
``--tracemalloc``, the bytes Python allocated and still holds
(``tracemalloc``: precise, but blind to C libraries and to freed memory; its
own bookkeeping inflates the RSS, so the two weights come from two runs).

The process first imports every module of ``--base`` (a JSON list of module
names: what the baseline worker had loaded), then the modules of ``--extra``
not loaded yet, in the order given (what only the eventbus worker had loaded;
the first one imports most of the rest). Its stdout is one JSON object: the
RSS (and traced bytes) after each phase and one record per module imported
(its phase, its importer, the module that was importing when it started, and
its weights). Modules the interpreter had loaded before (the profiler's own)
are in neither phase. The environment is the worker's (broker URL, queue
names), so the apps the modules build are configured as in the worker.

    python -m bench.import_memory --base base.json --extra extra.json [--tracemalloc]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import sys
import tracemalloc
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_now() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def py_now() -> int:
    return tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0


class _Frame:
    __slots__ = ("children_py", "children_rss", "name", "parent", "py0", "rss0")

    def __init__(self, name: str, parent: str) -> None:
        self.name = name
        self.parent = parent
        self.rss0 = rss_now()
        self.py0 = py_now()
        self.children_rss = 0
        self.children_py = 0


class WeighingFinder:
    """Finds specs through the other finders and wraps their loaders to weigh each import."""

    def __init__(self) -> None:
        self.stack: list[_Frame] = []
        self.records: list[dict[str, Any]] = []

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        loader = spec.loader if spec is not None else None
        # Builtin and frozen modules' loaders are classes: nothing of theirs to wrap.
        if loader is None or isinstance(loader, type) or not hasattr(loader, "exec_module"):
            return spec
        create = getattr(loader, "create_module", None)
        execute = loader.exec_module

        def create_module(spec: ModuleSpec) -> ModuleType | None:
            parent = self.stack[-1].name if self.stack else ""
            self.stack.append(_Frame(name, parent))
            return create(spec) if create is not None else None

        def exec_module(module: ModuleType) -> None:
            try:
                execute(module)
            finally:
                self._done(name)

        loader.create_module = create_module
        loader.exec_module = exec_module
        return spec

    def _done(self, name: str) -> None:
        while self.stack:  # (a module whose creation failed left its frame)
            frame = self.stack.pop()
            if frame.name == name:
                break
        else:
            return
        rss, py = rss_now() - frame.rss0, py_now() - frame.py0
        if self.stack:
            self.stack[-1].children_rss += rss
            self.stack[-1].children_py += py
        self.records.append(
            {
                "module": name,
                "importer": frame.parent,
                "rss": rss - frame.children_rss,
                "py": py - frame.children_py,
                "rss_inclusive": rss,
                "py_inclusive": py,
            }
        )


def import_all(names: Sequence[str]) -> list[str]:
    """Import each module not loaded yet; the names that failed."""
    failed = []
    for name in names:
        if name in sys.modules or name in ("__main__", "__mp_main__"):
            continue
        try:
            importlib.import_module(name)
        except BaseException:  # a module that only imports in its context
            failed.append(name)
    return failed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="JSON list: modules imported, not weighed")
    p.add_argument("--extra", required=True, help="JSON list: modules imported and weighed")
    p.add_argument("--tracemalloc", action="store_true", help="weigh Python allocations too")
    args = p.parse_args()
    with open(args.base) as f:
        base = json.load(f)
    with open(args.extra) as f:
        extra = json.load(f)

    if args.tracemalloc:
        tracemalloc.start()
    finder = WeighingFinder()
    sys.meta_path.insert(0, finder)
    try:
        failed_base = import_all(base)
        gc.collect()
        rss_base, py_base, n_base = rss_now(), py_now(), len(finder.records)
        failed_extra = import_all(extra)
    finally:
        sys.meta_path.remove(finder)
    gc.collect()
    for i, record in enumerate(finder.records):
        record["phase"] = "base" if i < n_base else "extra"
    result = {
        "rss_base": rss_base,
        "rss_after": rss_now(),
        "py_base": py_base,
        "py_after": py_now(),
        "tracemalloc": args.tracemalloc,
        "failed_base": failed_base,
        "failed_extra": failed_extra,
        "modules": finder.records,
    }
    with contextlib.suppress(BrokenPipeError):
        json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
