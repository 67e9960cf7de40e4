"""Redis Sentinel of one test's own: a master, its replica and three sentinels, on loopback.

:class:`SentinelGroup` starts two :class:`~tests.brokers.PrivateRedis` servers
(the second ``--replicaof`` the first) and three ``redis-server --sentinel``
processes monitoring them under :data:`MASTER_NAME` (quorum 2), each on a free
port, in directories of their own. A test gives eventbus :attr:`SentinelGroup.url`
(``sentinel://...;sentinel://...``) and ``master_name``, and forces fail-overs:
:meth:`~SentinelGroup.failover` (``SENTINEL FAILOVER``: the master is still
up, and keeps taking writes until the sentinels demote it) and
:meth:`~SentinelGroup.kill_master` (SIGKILL, the sentinels elect the replica,
the old master comes back and is made a replica). The shared Redis is never
touched.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.brokers import REDIS_SERVER, PrivateRedis, free_port, require_server
from tests.support import wait_for

MASTER_NAME = "eventbus-test"  #: what the sentinels call the master (kombu's ``master_name``)
#: Milliseconds a sentinel waits for a master that does not answer before it calls it down
#: (1000 made sentinels of a loaded 2-core machine call a just promoted master down, and
#: fail over again, back to the killed one just restarted).
DOWN_AFTER_MS = 2000
#: Milliseconds a fail-over may take (also: the least time between two of them).
FAILOVER_TIMEOUT_MS = 5000
#: Seconds a fail-over (or the group's start) may take before a test fails.
SETTLE_TIMEOUT = 60.0


class PrivateSentinel:
    """One ``redis-server --sentinel`` of the group: its own port, config file and log."""

    def __init__(self, directory: Path, master_port: int, number: int) -> None:
        self.port = free_port()
        self.directory = directory
        self.config = directory / f"sentinel-{number}.conf"
        self.log_path = directory / f"sentinel-{number}.log"
        # A sentinel rewrites its config file as it learns: written once, here.
        self.config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f"dir {directory}",
                    f"logfile {self.log_path}",
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                    "",
                ]
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, str(self.config), "--sentinel"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def client(self) -> redis.Redis:
        return redis.Redis("127.0.0.1", self.port, socket_connect_timeout=1, socket_timeout=3)

    def master_port(self) -> int | None:
        """The port of the master this sentinel names now (None: it does not answer)."""
        with contextlib.closing(self.client()) as client:
            try:
                address = client.sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                return None
        return int(address[1]) if address else None

    def knows_all(self) -> bool:
        """Whether it sees the master up, one replica up and the two other sentinels."""
        with contextlib.closing(self.client()) as client:
            try:
                master = client.sentinel_master(MASTER_NAME)
                replicas = client.sentinel_slaves(MASTER_NAME)
            except redis.RedisError:
                return False
        up = [r for r in replicas if not r.get("is_sdown") and not r.get("is_odown")]
        return (
            master.get("num-other-sentinels") == 2
            and not master.get("is_sdown")
            and len(up) == 1
            and up[0].get("master-link-status") == "ok"
        )

    def log(self) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-2000:]

    def close(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)


class SentinelGroup:
    """A master, its replica and three sentinels; see the module docstring."""

    def __init__(self, *, persistent: bool = True) -> None:
        require_server(REDIS_SERVER, "the Sentinel tests start redis-server --sentinel")
        self.first = PrivateRedis(persistent=persistent)
        self.second = PrivateRedis(
            persistent=persistent, options=["--replicaof", "127.0.0.1", str(self.first.port)]
        )
        self.directory = Path(tempfile.mkdtemp(prefix="eventbus-test-sentinels-"))
        self.sentinels = [PrivateSentinel(self.directory, self.first.port, n) for n in range(3)]

    @property
    def servers(self) -> list[PrivateRedis]:
        return [self.first, self.second]

    @property
    def url(self) -> str:
        """The broker URL: every sentinel, ``;``-separated (kombu's form)."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels)

    @property
    def transport_options(self) -> dict[str, str]:
        return {"master_name": MASTER_NAME}

    def start(self) -> SentinelGroup:
        for server in self.servers:
            server.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_ready()
        return self

    def master_port(self) -> int | None:
        """The master's port, as the sentinels name it (None: they do not agree yet)."""
        ports = {sentinel.master_port() for sentinel in self.sentinels}
        return ports.pop() if len(ports) == 1 else None

    def master(self) -> PrivateRedis:
        port = wait_for(self.master_port, timeout=SETTLE_TIMEOUT, message=self._state)
        (server,) = (s for s in self.servers if s.port == port)
        return server

    def replica(self) -> PrivateRedis:
        master = self.master()
        return self.second if master is self.first else self.first

    def wait_ready(self) -> float:
        """Wait until every sentinel sees the master, its replica in sync, the other sentinels."""
        started = time.monotonic()
        wait_for(
            lambda: self.master_port() is not None and all(s.knows_all() for s in self.sentinels),
            timeout=SETTLE_TIMEOUT,
            interval=0.1,
            message=self._state,
        )
        return time.monotonic() - started

    def failover(self) -> float:
        """``SENTINEL FAILOVER``: the replica is promoted; returns the seconds until all agree.

        The old master is not stopped: it keeps answering (and taking writes)
        until the sentinels make it a replica of the new one.
        """
        old = self.master()
        started = time.monotonic()
        with contextlib.closing(self.sentinels[0].client()) as client:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        self._wait_master_is_not(old)
        return time.monotonic() - started

    def kill_master(self) -> float:
        """SIGKILL the master; returns the seconds until the sentinels agree on the replica.

        The killed server is started again on its AOF once they do: the
        sentinels make it a replica of the new master.
        """
        old = self.master()
        started = time.monotonic()
        old.crash()
        try:
            self._wait_master_is_not(old)
        finally:
            old.start()
        return time.monotonic() - started

    def wait_in_sync(self) -> float:
        """Wait until the other server is a replica of the master, with all of its data.

        (Redis's view: the sentinels see the replica's link up at their next
        look, up to 10 s later.)
        """
        started = time.monotonic()

        def in_sync() -> bool:
            master = self.master()
            replica = self.replica()
            with (
                contextlib.closing(master.client()) as m,
                contextlib.closing(replica.client()) as r,
            ):
                try:
                    info_m, info_r = m.info("replication"), r.info("replication")
                except redis.RedisError:
                    return False
            return (
                info_m.get("role") == "master"
                and info_r.get("role") == "slave"
                and info_r.get("master_port") == master.port
                and info_r.get("master_link_status") == "up"
                and info_r.get("slave_repl_offset") == info_m.get("master_repl_offset")
            )

        wait_for(in_sync, timeout=SETTLE_TIMEOUT, interval=0.1, message=self._state)
        return time.monotonic() - started

    def master_client(self) -> redis.Redis:
        """A client of the master now (it does not follow a later fail-over)."""
        return self.master().client()

    def _wait_master_is_not(self, old: PrivateRedis) -> None:
        wait_for(
            lambda: self.master_port() not in (None, old.port),
            timeout=SETTLE_TIMEOUT,
            interval=0.05,
            message=lambda: (
                f"the sentinels to name a master other than {old.port}\n" + self._state()
            ),
        )

    def _state(self) -> str:
        parts = [f"sentinels name: {[s.master_port() for s in self.sentinels]}"]
        for server in self.servers:
            parts.append(f"--- redis-server :{server.port}\n{server.log()}")
        for sentinel in self.sentinels:
            parts.append(f"--- sentinel :{sentinel.port}\n{sentinel.log()}")
        return "\n".join(parts)

    def logs(self) -> str:
        return self._state()

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.close()
        for server in self.servers:
            server.close()
        shutil.rmtree(self.directory, ignore_errors=True)
