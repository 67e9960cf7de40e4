"""bench.raw_models equals the example handlers' event models (handlers/events.py).

bench_rss compares a worker running the example handlers with a raw Celery
worker validating the same payloads with the same models; the raw side
cannot import eventbus, so its models are a copy on plain ``BaseModel``.
These checks fail when the copy drifts: run ``pytest bench/test_raw_models.py``
(bench/ is not in the suite's testpaths).
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from bench import raw_models
from eventbus import Event
from handlers import events as handler_events

HANDLER_MODELS = {
    name: cls
    for name, cls in vars(handler_events).items()
    if inspect.isclass(cls) and issubclass(cls, Event) and cls is not Event
}
RAW_MODELS = {
    name: cls
    for name, cls in vars(raw_models).items()
    if inspect.isclass(cls)
    and issubclass(cls, BaseModel)
    and not name.startswith("_")
    and cls is not BaseModel
}
PAIRS = [(HANDLER_MODELS[name], RAW_MODELS[name]) for name in sorted(HANDLER_MODELS)]

# Valid and invalid data for every model: both sides must give the same verdict.
SAMPLES: dict[str, list[Any]] = {
    "UserRegistered": [
        {"user_id": "u1", "email": "a@example.com", "name": "Ann"},
        {"user_id": "u1", "email": "not-an-email", "name": "Ann"},
        {"user_id": "u1", "email": "a b@example.com", "name": ""},
        {"user_id": 1, "email": "a@example.com", "name": "Ann"},
        {"user_id": "u1", "email": "a@example.com"},
        {"user_id": "u1", "email": "a@example.com", "name": "Ann", "extra": 1},
        {},
        "not a dict",
    ],
    "TodoCreated": [
        {"title": "Buy milk"},
        {"title": "Buy milk", "priority": "high", "assignee": "u1"},
        {"title": "Buy milk", "priority": "urgent"},
        {"title": ""},
        {"title": "x" * 200},
        {"title": "x" * 201},
        {"title": "Buy milk", "assignee": None},
        {"title": "Buy milk", "assignee": 3},
        {"title": "Buy milk", "done": True},
        {"priority": "low"},
    ],
    "TodoCompleted": [
        {"completed_by": "u1"},
        {"completed_by": None},
        {},
        {"completed_by": "u1", "at": "now"},
    ],
}


def verdict(model: type[BaseModel], data: Any) -> Any:
    """The validated values, or where and why validation failed."""
    try:
        return ("ok", model.model_validate(data).model_dump(mode="json"))
    except ValidationError as exc:
        return ("invalid", [(err["loc"], err["type"]) for err in exc.errors()])


def test_same_models() -> None:
    assert sorted(HANDLER_MODELS) == sorted(RAW_MODELS)
    assert sorted(SAMPLES) == sorted(HANDLER_MODELS)


def test_raw_models_keyed_by_the_handlers_event_types() -> None:
    assert {cls.event_type: name for name, cls in HANDLER_MODELS.items()} == {
        event_type: cls.__name__ for event_type, cls in raw_models.MODELS.items()
    }


@pytest.mark.parametrize(("handler_model", "raw_model"), PAIRS, ids=sorted(HANDLER_MODELS))
def test_same_json_schema(handler_model: type[Event], raw_model: type[BaseModel]) -> None:
    assert raw_model.model_json_schema() == handler_model.model_json_schema()


@pytest.mark.parametrize(("handler_model", "raw_model"), PAIRS, ids=sorted(HANDLER_MODELS))
def test_same_config_and_validators(handler_model: type[Event], raw_model: type[BaseModel]) -> None:
    assert raw_model.model_config == handler_model.model_config
    for kind in ("validators", "field_validators", "root_validators", "model_validators"):
        assert (
            getattr(raw_model.__pydantic_decorators__, kind).keys()
            == getattr(handler_model.__pydantic_decorators__, kind).keys()
        ), kind


@pytest.mark.parametrize(("handler_model", "raw_model"), PAIRS, ids=sorted(HANDLER_MODELS))
def test_same_verdicts(handler_model: type[Event], raw_model: type[BaseModel]) -> None:
    for data in SAMPLES[handler_model.__name__]:
        assert verdict(raw_model, data) == verdict(handler_model, data), data
