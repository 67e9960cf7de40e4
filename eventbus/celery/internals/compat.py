"""The compatibility check: are the names eventbus reaches for still there, as it expects?

Once per process (per feature, on its first use; a worker checks them all when
it starts) each :class:`~eventbus.celery.internals.reaches.Reach` is looked
up: the module imports, the owner has the name (an instance attribute: the
owner's ``__init__`` sets it), its signature has the parameters expected,
and the library's version is within :data:`~eventbus.celery.internals.reaches.SUPPORTED`.
Nothing later fails with an ``AttributeError``: a feature whose names are
not all there is off before it runs.

What a miss does depends on the feature's kind (see :mod:`.reaches`):
an optimisation or a fallback turns itself off and Celery's own path runs,
with ONE warning per process naming every name not found; a guarantee makes
:func:`require` raise :class:`~eventbus.errors.IncompatibleDependency`; the
Redis transport refuses with :func:`transport_problem`'s reason, naming the
setting that selects kombu's transport.

``eventbus_optimizations = False`` (environment: ``EVENTBUS_OPTIMIZATIONS=0``)
switches every optimisation off, whatever is installed: Celery's stock paths
run. It leaves fallbacks, guarantees and the transport choice alone.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from types import CodeType
from typing import Any

from eventbus.celery.internals.reaches import FEATURES, SUPPORTED, Feature, Reach, reaches_of
from eventbus.errors import IncompatibleDependency

__all__ = [
    "OPTIMIZATIONS_ENV",
    "OPTIMIZATIONS_SETTING",
    "announce",
    "available",
    "check_worker",
    "feature",
    "optimising",
    "optimizations_on",
    "problems",
    "require",
    "reset",
    "transport_problem",
    "version_problems",
]

logger = logging.getLogger(__name__)

#: The setting that switches every optimisation off (False), and its environment variable.
OPTIMIZATIONS_SETTING = "eventbus_optimizations"
OPTIMIZATIONS_ENV = "EVENTBUS_OPTIMIZATIONS"
_FALSE = {"0", "false", "no", "off"}

_FEATURES = {f.key: f for f in FEATURES}
_lock = threading.Lock()
_problems: dict[str, tuple[str, ...]] = {}  # feature -> what is missing (checked once)
_versions: dict[str, tuple[str, ...]] = {}  # distribution -> its version problem, if any
_feature_versions: dict[str, tuple[str, ...]] = {}  # feature -> its libraries' problems
_announced: set[str] = set()  # problems the warning named already
_switched_off_said = False


def feature(key: str) -> Feature:
    """The feature named ``key`` (KeyError: no such feature)."""
    return _FEATURES[key]


def problems(key: str) -> tuple[str, ...]:
    """What ``key``'s names lack in the installed libraries (empty: all there). Checked once."""
    with _lock:
        found = _problems.get(key)
        if found is None:
            found = _problems[key] = tuple(_check_all(reaches_of(key)))
        return found


def version_problems(key: str) -> tuple[str, ...]:
    """The installed libraries ``key`` reaches into whose version is outside the range."""
    found = _feature_versions.get(key)
    if found is None:
        found = tuple(p for lib in _libraries(key) for p in _version_problem(lib))
        _feature_versions[key] = found
    return found


def optimizations_on(conf: Mapping[str, Any] | None) -> bool:
    """Whether ``conf`` (an app's configuration) leaves optimisations on (the default)."""
    return switched_on(conf, OPTIMIZATIONS_SETTING, OPTIMIZATIONS_ENV)


def switched_on(conf: Mapping[str, Any] | None, setting: str, env: str) -> bool:
    """Whether on/off ``setting`` of ``conf`` (else environment variable ``env``) is on.

    Unset is on; ``False`` or a string such as ``"0"``, ``"off"``, ``"no"``,
    ``"false"`` is off.
    """
    value = None if conf is None else conf.get(setting)
    if value is None:
        value = os.environ.get(env)
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE
    return bool(value)


def optimising(conf: Mapping[str, Any] | None, key: str) -> bool:
    """Whether optimisation ``key`` runs: switched on, its names there, versions in range.

    Off: the caller runs Celery's own path. The first miss of the process is
    logged as one warning (:func:`announce`).
    """
    if feature(key).kind != "optimisation":
        raise ValueError(f"{key} is not an optimisation")
    if not optimizations_on(conf):
        _say_switched_off()
        return False
    if problems(key) or version_problems(key):
        announce([key])
        return False
    return True


def available(key: str) -> bool:
    """Whether fallback ``key``'s names are all there (else: warned once; the plain way runs)."""
    if feature(key).kind != "fallback":
        raise ValueError(f"{key} is not a fallback feature")
    if problems(key):
        announce([key])
        return False
    return True


def require(key: str) -> None:
    """Raise :class:`IncompatibleDependency` unless guarantee ``key``'s names are all there."""
    found = problems(key)
    if not found:
        return
    spec = feature(key)
    raise IncompatibleDependency(
        f"eventbus cannot keep its guarantee ({spec.what}): the installed "
        f"{_installed(key)} lack{'s' if len(_libraries(key)) == 1 else ''} "
        f"{'; '.join(found)}. eventbus supports {_ranges(key)}. {_capital(spec.without)}."
    )


def transport_problem() -> str | None:
    """Why eventbus's Redis transport cannot run with the installed kombu (None: it can).

    The names it subclasses and uses must be there, and kombu within the
    supported range: a kombu minor release renames private code.
    """
    found = (*problems("redis_transport"), *version_problems("redis_transport"))
    if not found:
        return None
    return (
        "eventbus's atomic Redis transport cannot run on the installed "
        f"{_installed('redis_transport')}: {'; '.join(found)} "
        f"(it supports {_ranges('redis_transport')}). Set "
        'eventbus_redis_transport = "kombu" (EVENTBUS_REDIS_TRANSPORT=kombu) to run kombu\'s own '
        "Redis transport, which can lose a message between its BRPOP and its unacked record "
        "(celery/kombu#1733), or install a supported kombu"
    )


def announce(keys: Iterable[str] | None = None) -> None:
    """Log ONE warning naming what the optimisations and fallbacks ``keys`` (default: all) miss.

    Guarantees and the transport are not named here: they raise. A problem
    named once is not named again by a later call.
    """
    global _announced
    chosen = [_FEATURES[k] for k in keys] if keys is not None else list(FEATURES)
    lines = []
    for spec in chosen:
        if spec.kind not in ("optimisation", "fallback"):
            continue
        missing = problems(spec.key)
        outside = version_problems(spec.key) if spec.kind == "optimisation" else ()
        new = [p for p in (*missing, *outside) if f"{spec.key}: {p}" not in _announced]
        if not new:
            continue
        _announced |= {f"{spec.key}: {p}" for p in new}
        lines.append(f"{spec.key} off ({spec.without}): {'; '.join(new)}")
    if lines:
        logger.warning(
            "eventbus: the installed libraries differ from what these features reach for; "
            "each is off and Celery's own path runs (supported: %s):\n  %s",
            ", ".join(f"{d}>={lo},<{hi}" for d, (lo, hi) in SUPPORTED.items()),
            "\n  ".join(lines),
        )


def reset() -> None:
    """Forget every check and warning (tests that take names away, then check again)."""
    global _switched_off_said
    with _lock:
        _problems.clear()
        _versions.clear()
        _feature_versions.clear()
        _announced.clear()
        _switched_off_said = False


# -- the checks -------------------------------------------------------------------


def _check_all(reaches: Iterable[Reach]) -> Iterator[str]:
    for reach in reaches:
        problem = _check(reach)
        if problem:
            yield f"{reach.target} ({problem})"


def _check(reach: Reach) -> str | None:
    """What is wrong with one name in the installed library (None: nothing)."""
    module_name, _, path = reach.target.partition(":")
    try:
        owner: Any = importlib.import_module(module_name)
    except ImportError as exc:
        return f"module not importable: {exc}"
    *owners, name = path.split(".")
    for part in owners:
        owner = getattr(owner, part, _MISSING)
        if owner is _MISSING:
            return f"no {part}"
    if reach.kind == "instance attribute":
        if not _sets(owner, name):
            return "not found"
        return None
    value = inspect.getattr_static(owner, name, _MISSING)
    if value is _MISSING:
        return "not found"
    target = getattr(owner, name)
    if reach.mentions and not _uses(target, reach.mentions):
        return f"does not use {reach.mentions}"
    if reach.params is not None:
        try:
            params = tuple(inspect.signature(target).parameters)
        except (TypeError, ValueError):
            return "no signature"
        expected = reach.params
        if reach.exact and params != expected:
            return f"signature ({', '.join(params)}), expected ({', '.join(expected)})"
        if not reach.exact and not set(expected) <= set(params):
            lacking = ", ".join(sorted(set(expected) - set(params)))
            return f"signature ({', '.join(params)}) lacks {lacking}"
    return None


_MISSING: Any = object()


def _sets(cls: Any, name: str) -> bool:
    """Whether ``cls`` has ``name`` as a class attribute, or its ``__init__`` (MRO) sets it."""
    if not isinstance(cls, type):
        return False
    if inspect.getattr_static(cls, name, _MISSING) is not _MISSING:
        return True
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if callable(init):  # a decorated __init__ (redis-py's deprecation wrappers): its own code
            init = inspect.unwrap(init)
        code = getattr(init, "__code__", None)
        if isinstance(code, CodeType) and name in code.co_names:
            return True
    return False


def _uses(target: Any, name: str) -> bool:
    """Whether the code of ``target`` (a function, its nested functions) uses ``name``."""
    code = getattr(getattr(target, "__func__", target), "__code__", None)
    stack = [code] if isinstance(code, CodeType) else []
    while stack:
        current = stack.pop()
        if name in current.co_names or name in current.co_varnames or current.co_name == name:
            return True
        stack.extend(c for c in current.co_consts if isinstance(c, CodeType))
    return False


def _version_problem(distribution: str) -> tuple[str, ...]:
    with _lock:
        found = _versions.get(distribution)
        if found is None:
            found = _versions[distribution] = _outside(distribution)
        return found


def _outside(distribution: str) -> tuple[str, ...]:
    low, high = SUPPORTED[distribution]
    try:
        version = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return ()  # not installed: its names are missing, said by the name checks
    if not _version(low) <= _version(version) < _version(high):
        return (f"{distribution} {version} is outside >={low},<{high}",)
    return ()


def _version(text: str) -> tuple[int, ...]:
    """``"5.7.0"`` -> ``(5, 7, 0)``; a pre-release counts as its release."""
    numbers = [int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))


def _libraries(key: str) -> list[str]:
    return sorted({reach.library for reach in reaches_of(key)})


def _installed(key: str) -> str:
    return ", ".join(f"{lib} {_installed_version(lib)}" for lib in _libraries(key))


def _installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _ranges(key: str) -> str:
    return ", ".join(f"{lib}>={SUPPORTED[lib][0]},<{SUPPORTED[lib][1]}" for lib in _libraries(key))


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _say_switched_off() -> None:
    global _switched_off_said
    if not _switched_off_said:
        _switched_off_said = True
        logger.info(
            "eventbus: optimisations switched off (%s / %s): Celery's own paths run",
            OPTIMIZATIONS_SETTING,
            OPTIMIZATIONS_ENV,
        )


# -- at worker start ----------------------------------------------------------------

#: Fallbacks every EventBus worker uses (checked, and warned of, at its start).
WORKER_FALLBACKS = ("consume_handler_queues", "payload_allowance")
#: Guarantees every EventBus worker needs; on RabbitMQ also :data:`AMQP_GUARANTEES`.
WORKER_GUARANTEES = ("message_screen", "compression_guard", "dead_letter_before_ack")
AMQP_GUARANTEES = ("deep_headers_guard", "publish_confirms")


def check_worker(app: Any) -> None:
    """What a worker of an EventBus checks when it is built: all at once, once.

    One warning names whatever its optimisations and fallbacks miss (they
    are off); a guarantee whose names are missing raises
    :class:`IncompatibleDependency`, which stops the worker before it consumes.
    """
    conf = app.conf
    keys = list(WORKER_FALLBACKS)
    if conf.get("eventbus_metrics_port"):
        keys.append("multiprocess_metrics")
    if optimizations_on(conf):
        keys += [f.key for f in FEATURES if f.kind == "optimisation"]
    else:
        _say_switched_off()
    announce(keys)
    guarantees = list(WORKER_GUARANTEES)
    if _on_amqp(conf):
        guarantees.append("deep_headers_guard")
        if conf.get("eventbus_publish_confirms", True):
            guarantees.append("publish_confirms")
    for key in guarantees:
        require(key)


def _on_amqp(conf: Any) -> bool:
    """Whether the app's worker consumes from RabbitMQ (py-amqp)."""
    try:
        url = getattr(conf, "broker_read_url", None) or conf.get("broker_url")
    except Exception:  # (Celery's Settings computes it)
        url = conf.get("broker_url")
    text = str(url or "amqp://").split(";")[0].strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else "amqp"
    return scheme in ("amqp", "amqps", "pyamqp")
