"""Stable import paths of eventbus's kombu transports.

``broker_transport = "eventbus.transport.redis:Transport"`` names eventbus's
Redis transport (``SecureTransport`` for ``rediss://``). eventbus selects it by
itself from the app's broker URL (:mod:`eventbus.celery.transport_selection`);
the name is for apps that set ``broker_transport`` explicitly. The code lives
in the one package allowed to touch kombu's internals,
:mod:`eventbus.celery.internals.redis_transport`.
"""
