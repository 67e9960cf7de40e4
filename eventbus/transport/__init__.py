"""kombu transports of eventbus's own.

:mod:`eventbus.transport.redis`: kombu's Redis transport, except that a
consumer takes a message off a queue and records it as unacked in one atomic
step (``broker_transport = "eventbus.transport.redis:Transport"``).
"""
