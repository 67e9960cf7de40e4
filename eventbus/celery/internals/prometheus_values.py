"""prometheus_client's value class, made the multiprocess one after it was imported.

prometheus_client picks its value class once, when first imported
(``prometheus_client.values.ValueClass``: ``MutexValue``, or the multiprocess
``MmapedValue`` when ``PROMETHEUS_MULTIPROC_DIR`` was set;
prometheus/client_python#701, #886). A worker's ``/metrics`` endpoint
(:mod:`eventbus.metrics.worker`) sets the directory at ``worker_init``, after
the import: :func:`use_multiprocess_values` swaps the module's class for the
one the environment asks for now, and the returned function swaps it back
(closing its files). Without those names the class stays as imported: set
``PROMETHEUS_MULTIPROC_DIR`` before the worker starts, or pool processes'
counts stay in those processes.
"""

from __future__ import annotations

from collections.abc import Callable

from eventbus.celery.internals.compat import available

__all__ = ["use_multiprocess_values"]


def use_multiprocess_values() -> Callable[[], None] | None:
    """Make metrics created from now on multiprocess ones; the function returned undoes it.

    None: nothing to undo (multiprocess already, or the names are missing).
    """
    from prometheus_client import values

    if getattr(values.ValueClass, "_multiprocess", False):
        return None  # multiprocess already (the directory was set before the import)
    if not available("multiprocess_metrics"):
        return None
    previous = values.ValueClass
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]

    def restore() -> None:
        values.ValueClass.close_all_files()
        values.ValueClass = previous

    return restore
