"""A RabbitMQ cluster of this pytest run's own: three private nodes, to stop and kill.

:class:`PrivateRabbitMQCluster` starts three :class:`~tests.faults.brokers.PrivateRabbitMQ`
nodes (each with its own node name, ports and directories, sharing one Erlang
cookie of their own), boots them in parallel, and clusters them the way an
operator does: ``rabbitmqctl stop_app``, ``join_cluster <first node>``,
``start_app`` on the second and third. It is launched at collection
(``tests/faults/conftest.py``) and formed in a thread, so that it boots while
other tests run; the nodes are killed and their directories removed at the
end of the session, whatever happened.

Clients reach it as Celery's failover list: :meth:`~PrivateRabbitMQCluster.url`
joins the nodes' URLs with ``;`` (kombu tries the next one when a connection
fails). A test stops a node's application (:meth:`~PrivateRabbitMQCluster.stop`)
or SIGKILLs its Erlang VM (:meth:`~PrivateRabbitMQCluster.crash`), and brings
it back with :meth:`~PrivateRabbitMQCluster.revive`, which returns once the
cluster is whole again. The machine's own RabbitMQ is never touched.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

from tests.faults.brokers import PrivateRabbitMQ
from tests.support import wait_for

#: Nodes of the cluster: a quorum queue keeps working while a majority (2 of 3) is up.
CLUSTER_SIZE = 3
#: Seconds a revived node may take to be back in the cluster (a crashed one boots again).
REJOIN_TIMEOUT = 90.0


@dataclass(frozen=True)
class QueueInfo:
    """What a cluster node says of one queue (``rabbitmqctl list_queues``)."""

    name: str
    type: str  #: ``classic`` or ``quorum``
    leader: str  #: the node that leads a quorum queue (a classic queue's: its node)
    members: tuple[str, ...]  #: the nodes holding a quorum queue's replicas
    online: tuple[str, ...]  #: of those, the ones up
    messages: int  #: ready and unacknowledged


class PrivateRabbitMQCluster:
    """Three private RabbitMQ nodes clustered together, on loopback and free ports.

    :meth:`launch` starts them booting and forms the cluster in a thread;
    :meth:`wait_formed` waits for it. :meth:`close` kills every node.
    """

    def __init__(self, size: int = CLUSTER_SIZE) -> None:
        uid = uuid.uuid4().hex[:6]
        cookie = uuid.uuid4().hex  # the nodes trust each other (and our rabbitmqctl) only
        self.nodes = [
            PrivateRabbitMQ(name=f"eventbus-cluster-{uid}-{i}", cookie=cookie) for i in range(size)
        ]
        self.formed_in = 0.0  #: seconds from launch to a formed cluster
        self.joined_in = 0.0  #: of those, the seconds the joins took
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._form, name="rabbitmq-cluster", daemon=True)

    # -- forming ---------------------------------------------------------------

    def launch(self) -> None:
        """Boot every node at once; form the cluster in a thread (:meth:`wait_formed`)."""
        for node in self.nodes:
            node.launch()
        self._thread.start()

    def _form(self) -> None:
        started = time.monotonic()
        try:
            for node in self.nodes:
                node.wait_up()
            joined = time.monotonic()
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.node)
                node.start_app()
            self.joined_in = time.monotonic() - joined
            self.wait_whole()
            self.formed_in = time.monotonic() - started
        except BaseException as exc:  # re-raised by wait_formed()
            self._error = exc

    def wait_formed(self, timeout: float = 180) -> float:
        """Wait until the cluster is formed; return how long this waited, in seconds."""
        started = time.monotonic()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the RabbitMQ cluster did not form within {timeout}s")
        if self._error is not None:
            raise AssertionError(f"the RabbitMQ cluster did not form: {self._error}")
        return time.monotonic() - started

    # -- what clients and tests see --------------------------------------------

    def url(self, first: PrivateRabbitMQ | None = None) -> str:
        """Every node's AMQP URL, ``;``-separated (Celery's failover), from ``first`` on."""
        start = self.nodes.index(first) if first is not None else 0
        ordered = self.nodes[start:] + self.nodes[:start]
        return ";".join(node.url for node in ordered)

    def up(self) -> Iterator[PrivateRabbitMQ]:
        """The nodes whose application answers AMQP now."""
        return (node for node in self.nodes if node.process is not None and node.answers())

    def ctl(self, *args: str, timeout: float = 30) -> str:
        """``rabbitmqctl`` on the first node that is up."""
        for node in self.up():
            return node.ctl(*args, timeout=timeout)
        raise RuntimeError("no node of the cluster is up")

    def running_nodes(self) -> set[str]:
        """The nodes the cluster counts as running, as the first node up sees it."""
        status = json.loads(self.ctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def queue(self, name: str) -> QueueInfo | None:
        """What the cluster says of queue ``name`` (None: it does not exist)."""
        out = self.ctl(
            "list_queues", "--formatter", "json",
            "name", "type", "leader", "members", "online", "messages",
        )  # fmt: skip
        for row in json.loads(out):
            if row["name"] == name:
                return QueueInfo(
                    name=name,
                    type=str(row["type"]),
                    leader=str(row.get("leader") or ""),
                    members=tuple(row.get("members") or ()),
                    online=tuple(row.get("online") or ()),
                    messages=int(row.get("messages") or 0),
                )
        return None

    def messages(self, queue: str) -> int:
        """Messages of a queue, ready and unacknowledged (0 if it does not exist)."""
        info = self.queue(queue)
        return 0 if info is None else info.messages

    def node(self, name: str) -> PrivateRabbitMQ:
        """The node named ``name`` (``eventbus-cluster-...@localhost``)."""
        for node in self.nodes:
            if node.node == name:
                return node
        raise KeyError(f"{name} is not a node of this cluster")

    def leader(self, queue: str) -> PrivateRabbitMQ:
        """The node that leads queue ``queue``."""
        info = self.queue(queue)
        assert info is not None and info.leader, f"queue {queue} has no leader: {info}"
        return self.node(info.leader)

    # -- faults ----------------------------------------------------------------

    def stop(self, node: PrivateRabbitMQ) -> None:
        """``rabbitmqctl stop_app``: the node closes its clients and leaves, cleanly."""
        node.ctl("stop_app")

    def crash(self, node: PrivateRabbitMQ) -> int:
        """SIGKILL the node's Erlang VM; return its pid."""
        return node.crash()

    def revive(self, node: PrivateRabbitMQ) -> float:
        """Bring ``node`` back (boot it again if it was killed); return seconds until whole."""
        started = time.monotonic()
        if node.process is None:
            node.launch()
            node.wait_up()
        elif not node.answers():
            node.start_app()
        self.wait_whole()
        return time.monotonic() - started

    def wait_whole(self, timeout: float = REJOIN_TIMEOUT) -> None:
        """Wait until every node answers and the cluster counts each one as running."""
        names = {node.node for node in self.nodes}
        wait_for(
            lambda: len(list(self.up())) == len(self.nodes) and self.running_nodes() == names,
            timeout=timeout,
            interval=0.2,
            message=lambda: f"the cluster whole again: {self.describe()}",
        )

    def wait_queue_whole(self, queue: str, timeout: float = REJOIN_TIMEOUT) -> QueueInfo:
        """Wait until every replica of quorum queue ``queue`` is online; return what it says."""

        def whole() -> QueueInfo | None:
            info = self.queue(queue)
            if info is None or len(info.members) != len(self.nodes):
                return None
            return info if set(info.online) == set(info.members) else None

        info = wait_for(
            whole,
            timeout=timeout,
            interval=0.2,
            message=lambda: f"every replica of {queue} online: {self.queue(queue)}",
        )
        assert info is not None  # (wait_for returns a true value)
        return info

    def ensure_whole(self) -> None:
        """Revive whatever node a test left stopped or killed (the next test's cluster too)."""
        for node in self.nodes:
            if node.process is None or not node.answers():
                self.revive(node)

    def describe(self) -> str:
        states = []
        for node in self.nodes:
            if node.process is None:
                states.append(f"{node.node}: killed")
            else:
                states.append(f"{node.node}: {'up' if node.answers() else 'app stopped'}")
        try:
            running = sorted(self.running_nodes())
        except RuntimeError as exc:
            running = [f"? ({exc})"]
        return f"{'; '.join(states)}; running as the cluster sees it: {running}"

    def log(self) -> str:
        return "\n".join(f"--- {node.node}:\n{node.log()}" for node in self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
