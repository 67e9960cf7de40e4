"""The seam: the only package of eventbus that touches Celery's, kombu's, py-amqp's or
prometheus_client's private or undocumented names.

Everything else in eventbus calls the functions and classes of these modules,
never such a name (``tests/unit/test_seam.py`` walks the source and fails
otherwise). Each reach is listed, with the upstream issue it works around and
the measurement that justified it, in :mod:`.reaches`; :mod:`.compat` checks
them once per process, with the installed versions against the supported
range (pyproject.toml's), and turns each piece off, or refuses, when an
upgrade moved what it uses. ``eventbus_optimizations = False``
(``EVENTBUS_OPTIMIZATIONS=0``) runs Celery's own paths instead of every
optimisation.

Guarantees (refuse to start, :class:`~eventbus.errors.IncompatibleDependency`,
when a name is missing):

* :mod:`.redis_transport`: Redis take and record in one Lua script, acks in
  one pipeline (celery/kombu#1733). Refuses naming ``eventbus_redis_transport
  = "kombu"``, which runs kombu's own. :mod:`.sentinel_transport`: the same
  behind Redis Sentinel.
* :mod:`.consumer_hooks`: the worker's message screen and the dead-lettering
  of messages Celery would drop (celery/celery#4308).
* :mod:`.compression`: compressed messages decompressed within the payload
  limit, or refused.
* :mod:`.amqp_headers`: headers nested too deep for py-amqp become a dead
  letter, not a stopped worker (RabbitMQ).
* :mod:`.replication` (``replicated_publish``): with
  ``eventbus_redis_wait_replicas``, a Redis publish returns once replicas
  have it (``WAIT``).
* :mod:`.confirms` (``publish_confirms``): a RabbitMQ publish returns once
  confirmed; and :mod:`eventbus.celery.dead_letter_before_ack` (Celery's
  documented custom ``Request``, whose undocumented settling it checks).

Optimisations (off, Celery's own path runs, one warning):

* :mod:`.worker_loop`: no 10 s poll while late acks are queued (celery/celery#7718);
* :mod:`.acks`: a busy RabbitMQ worker's acks go out together (``multiple``);
* :mod:`.task_events`: Celery's task events sent on a timer;
* :mod:`.sent_events`: one task-sent message per event;
* :mod:`.bound_queues`: handler queues bound once per channel;
* :mod:`.confirms` (``batched_confirms``): one confirm wait per event.

Fallbacks (off, a plainer way runs, one warning): :mod:`.redis_wake` (an
idle Redis channel told of new messages by ``CLIENT TRACKING``; without it,
it polls every 0.05 s), :mod:`.worker_queues`
(handler queues for a worker without ``-Q``; Celery's header sizes),
:mod:`.celery_apps` (Django's app), :mod:`.prometheus_values` (multiprocess
metrics), :mod:`.worker_state` (``eventbus demo`` stops its worker).

Helpers that touch no private name but belong to the transports above:
:mod:`.taken` (the queue a message was taken from).
"""
