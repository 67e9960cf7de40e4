"""eventbus's atomic Redis transport behind Redis Sentinel (``sentinel://`` URLs).

kombu's ``SentinelChannel`` is its Redis channel with one difference: its
connection pool asks the sentinels (every ``sentinel://`` URL of the broker
URL, ``;``-separated) where the master named by the ``master_name``
transport option is, and redis-py's ``SentinelManagedConnection`` connects
there, again after every reconnect. A master demoted by a fail-over answers
writes with ``READONLY``, which that connection turns into a
``ConnectionError``: the consumer reconnects, to the new master.

Here the channel is both: eventbus's :class:`~.redis_transport.Channel`
(the take-and-record script, acks in one pipeline, stand-ins) over kombu's
sentinel-managed pool. Nothing of the take changes: the script is the same,
on whichever server is master. (A demoted master's take script only reads
while the queue is empty, and is refused, ``READONLY``, at its first write:
the consumer then reconnects to the new master.)

What it leaves alone: kombu's discovery (sentinels, ``master_name``,
``min_other_sentinels``, ``sentinel_kwargs``), TLS to the master
(``broker_use_ssl``: kombu's ``SentinelManagedSSLConnection``).

A fail-over of the broker connection (``Connection.maybe_switch_next``, on a
reconnect that fails: a killed master while the sentinels still name it)
would re-read the transport from the next URL's scheme, kombu's
``sentinel``, which takes with ``BRPOP``. A worker that gets this transport
from :mod:`eventbus.celery.transport_selection` also gets a
``broker_failover_strategy`` that gives kombu host names instead of URLs:
the transport stays this one, and the channel still finds the sentinels in
the connection's full list of URLs.

It reaches into what :mod:`.redis_transport` does, and kombu's
``SentinelChannel`` and ``SentinelTransport``: every name is in
:mod:`.reaches` (feature ``redis_transport``, the same refusal).
"""

from __future__ import annotations

from typing import Any

import kombu.connection as kombu_connection

from eventbus.celery.internals.redis_transport import Channel, Transport, _kombu

__all__ = ["SentinelChannel", "SentinelTransport"]

_KombuSentinelChannel: Any = _kombu("SentinelChannel")


class SentinelChannel(Channel, _KombuSentinelChannel):  # type: ignore[misc]
    """eventbus's Redis channel (take script, batched acks) on kombu's sentinel-managed pool."""

    # Both parents extend kombu's options: take the union, in order.
    from_transport_options = tuple(
        dict.fromkeys(
            (
                *Channel.from_transport_options,
                *getattr(_KombuSentinelChannel, "from_transport_options", ()),
            )
        )
    )


class SentinelTransport(Transport):
    """eventbus's atomic Redis transport for ``sentinel://`` URLs (option ``master_name``)."""

    Channel = SentinelChannel
    default_port = getattr(_kombu("SentinelTransport"), "default_port", 26379)


# The worker's banner and Flower name the broker by scheme, not by class path.
_aliases: dict[Any, str] = getattr(kombu_connection, "resolve_aliases", {})
for _name in (f"{__name__}:SentinelTransport", SentinelTransport):
    _aliases.setdefault(_name, "sentinel")
