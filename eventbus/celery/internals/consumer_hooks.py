"""Where eventbus's worker steps in on Celery's task consumer, before Celery reads a message.

What Celery does (5.7, ``celery/worker/consumer/consumer.py``): the consumer
logs and acks a message it cannot decode (``on_decode_error``), that is no
task message (``on_unknown_message``), for a task it does not know
(``on_unknown_task``) or that it finds invalid (``on_invalid_task``): the
message is gone, unrecorded. A message its task's strategy chokes on
raises out of the consumer and stops the worker (celery/celery#4308,
celery/celery#7975), and the broker hands it to the next worker. None of
these methods is documented as an extension point.

What eventbus changes, through the functions here, from a consumer step of
:mod:`eventbus.celery.worker` (its ``__init__`` runs when the blueprint is
applied, before the Tasks step reads these):

* :func:`replace_callbacks`: the four callbacks are replaced by eventbus's,
  which get Celery's own to fall back on (a message that is not the bus's);
* :func:`wrap_task_handler`: the handler Celery builds at each connection
  (``create_task_handler``) is wrapped, so that eventbus screens a message
  before Celery reads its headers or decodes its body;
* :func:`after_strategies_update`: after Celery rebuilds its strategies
  (``update_strategies``: each connection, each reload), eventbus wraps
  those of handler tasks;
* :func:`accept_json_only`: a screened message decodes as JSON only.

Every name is checked at worker start (:mod:`.compat`, feature
``message_screen``, a guarantee): a Celery without them stops the worker
with :class:`~eventbus.errors.IncompatibleDependency` rather than drop
messages unrecorded.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ConsumerCallbacks",
    "accept_json_only",
    "after_strategies_update",
    "celery_callbacks",
    "replace_callbacks",
    "wrap_task_handler",
]


@dataclass(frozen=True)
class ConsumerCallbacks:
    """Celery's consumer callbacks of messages that never become a task run."""

    decode_error: Callable[[Any, BaseException], None]  #: on_decode_error(message, exc)
    unknown_message: Callable[[Any, Any], None]  #: on_unknown_message(body, message)
    unknown_task: Callable[[Any, Any, BaseException], None]  #: (body, message, exc)
    invalid_task: Callable[[Any, Any, BaseException], None]  #: (body, message, exc)


def celery_callbacks(consumer: Any) -> ConsumerCallbacks:
    """The consumer's callbacks as they are now (Celery's own, before :func:`replace_callbacks`)."""
    return ConsumerCallbacks(
        consumer.on_decode_error,
        consumer.on_unknown_message,
        consumer.on_unknown_task,
        consumer.on_invalid_task,
    )


def replace_callbacks(consumer: Any, callbacks: ConsumerCallbacks) -> None:
    """Make ``callbacks`` the consumer's."""
    consumer.on_decode_error = callbacks.decode_error
    consumer.on_unknown_message = callbacks.unknown_message
    consumer.on_unknown_task = callbacks.unknown_task
    consumer.on_invalid_task = callbacks.invalid_task


def wrap_task_handler(
    consumer: Any, wrap: Callable[[Callable[[Any], Any]], Callable[[Any], Any]]
) -> None:
    """At each (re)connection, ``wrap`` the message handler Celery builds for the task consumer."""
    create_task_handler = consumer.create_task_handler

    def create_wrapped_task_handler(*args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        return wrap(create_task_handler(*args, **kwargs))

    consumer.create_task_handler = create_wrapped_task_handler


def after_strategies_update(
    consumer: Any, update: Callable[[MutableMapping[str, Callable[..., None]]], None]
) -> None:
    """Call ``update(strategies)`` each time Celery rebuilds the consumer's task strategies.

    ``strategies`` maps task names to the callables Celery runs for a task
    message (``strategy(message, payload, ack, reject, callbacks)``); ``update``
    may replace them.
    """
    update_strategies = consumer.update_strategies

    def update_then_ours() -> None:
        update_strategies()
        update(consumer.strategies)

    consumer.update_strategies = update_then_ours


def accept_json_only(message: Any, accept: frozenset[str]) -> None:
    """Whatever Celery decodes of ``message`` from here on, it decodes as ``accept`` only."""
    message.accept = accept
