"""Brokers that fail on purpose: a private Redis that crashes, a RabbitMQ that restarts.

The Redis fault tests never touch the shared Redis on 6379 as a broker: each
starts a :class:`PrivateRedis` (AOF fsynced on every write, no RDB snapshots)
on a free loopback port, and crashes it with SIGKILL. RabbitMQ is shared:
:func:`restart_rabbitmq` stops its application for a moment and always
starts it again.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from kombu.connection import Connection

from tests.support import wait_for

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
RABBITMQCTL = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"


def free_port() -> int:
    """A free loopback port below the ephemeral range.

    Outgoing connections never take such a port, so it is still free when a
    crashed server starts again on it.
    """
    range_file = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(range_file.read_text().split()[0]) if range_file.exists() else 32768
    for _ in range(200):
        port = random.randrange(max(1024, low - 10000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


class PrivateRedis:
    """A redis-server of one test's own: loopback, a free port, AOF with ``fsync always``.

    :meth:`crash` kills it with SIGKILL; :meth:`start` brings it back on the
    same port and directory, where it reloads its append-only file. With
    ``appendfsync always`` Redis answers a write only after the write is on
    disk, so whatever a client was told survives the crash.
    """

    def __init__(self) -> None:
        if not os.access(REDIS_SERVER, os.X_OK):
            message = f"{REDIS_SERVER} not found: the Redis fault tests start their own server"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="eventbus-faults-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.process is None, "already running"
        command = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--logfile", "redis.log",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for(self.ping, timeout=10, message=lambda: f"private redis-server up\n{self.log()}")

    def ping(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            # Still loading its AOF, or not listening yet.
            return False
        finally:
            client.close()

    def crash(self) -> None:
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def restart(self, *, down_for: float, on_down: Callable[[], None] = lambda: None) -> None:
        """Crash, stay down ``down_for`` seconds, start again on the same port and AOF.

        ``on_down`` runs right after the crash.
        """
        self.crash()
        try:
            on_down()
            time.sleep(down_for)  # hold the broker down
        finally:
            self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=3, socket_timeout=10)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(
        [RABBITMQCTL, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
    return done.stdout


def amqp_answers(url: str) -> bool:
    """Whether the broker at ``url`` completes an AMQP handshake."""
    try:
        with Connection(url, connect_timeout=1) as conn:
            conn.connect()
            return True
    except (OSError, *Connection(url).connection_errors):
        return False


def restart_rabbitmq(
    url: str, *, down_for: float, on_down: Callable[[], None] = lambda: None
) -> None:
    """``rabbitmqctl stop_app``, stay down ``down_for`` seconds, ``start_app``.

    ``on_down`` runs once the application is stopped. The application is
    started again whatever happens, and this returns only once the broker at
    ``url`` answers AMQP again.
    """
    try:
        rabbitmqctl("stop_app")
        on_down()
        time.sleep(down_for)  # hold the broker down
    finally:
        rabbitmqctl("start_app")
        wait_for(lambda: amqp_answers(url), timeout=30, interval=0.1, message="RabbitMQ back up")


def ensure_rabbitmq_running(url: str) -> None:
    """Start the RabbitMQ application if it does not answer (a test left it stopped)."""
    if not amqp_answers(url):
        rabbitmqctl("start_app")
        wait_for(lambda: amqp_answers(url), timeout=30, interval=0.1, message="RabbitMQ back up")


def rabbitmq_messages(queue: str) -> int:
    """Messages in a RabbitMQ queue, ready and unacknowledged (0 if it does not exist)."""
    out = rabbitmqctl("list_queues", "-q", "--no-table-headers", "name", "messages", timeout=30)
    for line in out.splitlines():
        name, _, count = line.rpartition("\t")
        if name.strip() == queue:
            return int(count)
    return 0


class BrokerRestart:
    """A broker restart running in a thread, timed.

    Not a daemon thread: an interrupted test run still waits for it, so a
    stopped RabbitMQ is always started again.
    """

    def __init__(self, restart: Callable[[], None]) -> None:
        self._restart = restart
        self.error: BaseException | None = None
        self.started_at = 0.0
        self.finished_at = 0.0
        self._thread = threading.Thread(target=self._run, name="broker-restart")

    def _run(self) -> None:
        self.started_at = time.monotonic()
        try:
            self._restart()
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def start(self) -> BrokerRestart:
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def join(self, timeout: float = 90) -> float:
        """Wait for the restart; return how long it took, in seconds."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the broker restart did not finish within {timeout}s")
        if self.error is not None:
            raise AssertionError(f"the broker restart failed: {self.error!r}") from self.error
        return self.finished_at - self.started_at
