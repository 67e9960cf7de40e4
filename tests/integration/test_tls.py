"""eventbus end to end over TLS: a ``rediss://`` broker, its state and its dead letters (issue 13).

A private ``redis-server`` listens on a TLS port only, with a self-signed
certificate made by openssl for the test (:class:`~tests.brokers.PrivateRedis`,
``tls=True``): every client that gets an answer spoke TLS. The app is given
the ``rediss://`` URL and the certificate to check the server against, either
in the URL (``ssl_cert_reqs``, ``ssl_ca_certs``) or in ``broker_use_ssl``, and
nothing else: the worker's transport, the idempotency and ordering state and
the dead-letter queue all go over TLS to that server.
"""

from __future__ import annotations

import contextlib
import ssl
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from eventbus import EventBus, create_event
from eventbus.celery.internals.redis_transport import SecureTransport
from tests.brokers import PrivateRedis
from tests.support import make_app, running_worker, wait_for

from .helpers import OrderPlaced, Recorder

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def tls_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis(persistent=False, tls=True)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("where", ["url", "broker_use_ssl"])
def test_every_guarantee_over_tls(tls_redis: PrivateRedis, where: str) -> None:
    # Given an app on the TLS-only Redis, the server's certificate checked (named in
    # the URL, or in broker_use_ssl), no transport and no state URL of its own
    uid = uuid.uuid4().hex[:10]
    settings: dict[str, Any] = {}
    url = tls_redis.url
    if where == "broker_use_ssl":
        url = tls_redis.bare_url
        settings["broker_use_ssl"] = {
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
            "ssl_ca_certs": str(tls_redis.certificate),
        }
    app = make_app(url, broker_transport=None, eventbus_redis_transport=None, **settings)
    app.conf.eventbus_redis_url = None  # the state: on the broker, over TLS too
    queue = f"it.tls.{uid}"
    bus = EventBus(app, default_queue=queue, dead_letter_queue=f"{queue}.dlq")
    recorder = Recorder()
    failing = {"on": True}
    names = {short: f"it.{uid}.{short}" for short in ("idem", "ordered", "failing")}
    bus.subscribe(
        OrderPlaced, handler=recorder.handler(names["idem"]), name=names["idem"], idempotent=True
    )
    bus.subscribe(
        OrderPlaced, handler=recorder.handler(names["ordered"]), name=names["ordered"], ordered=True
    )
    bus.subscribe(
        OrderPlaced,
        handler=recorder.handler(
            names["failing"], lambda call: ValueError("broken") if failing["on"] else None
        ),
        name=names["failing"],
        max_retries=0,
    )
    try:
        with running_worker(app, bus.queues, concurrency=2) as worker:
            # When events of one aggregate are published, the first one twice
            published = [
                bus.publish(
                    create_event(OrderPlaced, {"order_id": "o", "quantity": n}, aggregate_id="a")
                )
                for n in (1, 2, 3)
            ]
            bus.publish(published[0])
            # Then the worker runs eventbus's transport over TLS, and every guarantee holds
            assert isinstance(worker.consumer.connection.transport, SecureTransport)
            wait_for(
                lambda: (
                    len(bus.dead_letters.list()) == 4
                    and recorder.count(names["idem"]) == recorder.count(names["ordered"]) == 3
                ),
                message=lambda: f"runs {recorder.pairs()}",
            )
            ordered = [c.envelope.sequence for c in recorder.calls(names["ordered"])]
            assert ordered == [1, 2, 3]
            failing["on"] = False
            assert bus.dead_letters.replay_all() == 4
            wait_for(
                lambda: recorder.count(names["failing"]) == 8,
                message=lambda: f"{recorder.count(names['failing'])}/8 failing runs",
            )
            assert bus.dead_letters.list() == []
            assert recorder.count(names["idem"]) == recorder.count(names["ordered"]) == 3
        # (the state on the TLS server, under the app's prefix; takes by the script)
        with contextlib.closing(tls_redis.client()) as client:
            assert list(client.scan_iter(match=f"{app.conf.eventbus_redis_prefix}*"))
            stats = client.info("commandstats")
        assert "cmdstat_brpop" not in stats and "cmdstat_evalsha" in stats
    finally:
        app.close()
