"""``eventbus.transport.redis:Transport``: the documented name of eventbus's Redis transport."""

from eventbus.celery.internals.redis_transport import SecureTransport, Transport

__all__ = ["SecureTransport", "Transport"]
