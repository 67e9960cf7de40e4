"""``eventbus.transport.redis:Transport``, the documented name of eventbus's Redis transport."""

from __future__ import annotations

from kombu.transport import resolve_transport

from eventbus.celery.internals import redis_transport


def test_the_documented_name_resolves_to_the_transport_in_the_seam() -> None:
    assert resolve_transport("eventbus.transport.redis:Transport") is redis_transport.Transport
    secure = resolve_transport("eventbus.transport.redis:SecureTransport")
    assert secure is redis_transport.SecureTransport
