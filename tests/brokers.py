"""A redis-server of one test's own, to crash or stop and start again (never the shared one).

:class:`PrivateRedis` serves the Redis fault tests (:mod:`tests.faults`), the
transport's crash tests and the outbox's broker outage; the ``private_redis``
fixture (``tests/conftest.py``) gives one to a test and removes it after.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis

from tests.support import wait_for

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


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


def require_server(path: str, what: str) -> None:
    """Skip the test if the server binary ``path`` is missing; fail instead when CI is set."""
    if os.access(path, os.X_OK):
        return
    message = f"{path} not found: {what}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class PrivateRedis:
    """A redis-server of one test's own: loopback, a free port, kept across restarts.

    :meth:`crash` kills it with SIGKILL, :meth:`stop` shuts it down (SIGTERM,
    waited for); :meth:`start` brings it back on the same port and directory.
    ``persistent`` (the default) keeps an append-only file fsynced on every
    write (``appendfsync always``): Redis answers a write only once it is on
    disk, so whatever a client was told survives a crash. Without it nothing
    survives a restart (no AOF, no RDB snapshots).
    """

    def __init__(
        self, *, persistent: bool = True, tls: bool = False, options: Sequence[str] = ()
    ) -> None:
        require_server(REDIS_SERVER, "this test starts a redis-server of its own")
        self.persistent = persistent
        self.tls = tls
        #: More command-line options of the server (``--replicaof host port``...).
        self.options = list(options)
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="eventbus-test-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        if tls:
            self._make_certificate()
            #: The server checked against the test's CA (``bare_url``: not checked).
            self.url = (
                f"rediss://127.0.0.1:{self.port}/0"
                f"?ssl_cert_reqs=required&ssl_ca_certs={self.certificate}"
            )
            self.bare_url = f"rediss://127.0.0.1:{self.port}/0"

    @property
    def certificate(self) -> Path:
        return self.directory / "server.crt"

    def _make_certificate(self) -> None:
        """A self-signed certificate for 127.0.0.1 (it is its own CA), made with openssl."""
        openssl = shutil.which("openssl") or "/usr/bin/openssl"
        require_server(openssl, "this test makes a TLS certificate with openssl")
        subprocess.run(
            [
                openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                "-keyout", str(self.directory / "server.key"), "-out", str(self.certificate),
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def start(self) -> None:
        assert self.process is None, "already running"
        persistence = ["--appendonly", "yes", "--appendfsync", "always"]
        # With TLS, only the TLS port listens: every client that gets an answer spoke TLS.
        listen = (
            [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.certificate),
                "--tls-key-file", str(self.directory / "server.key"),
                "--tls-ca-cert-file", str(self.certificate), "--tls-auth-clients", "no",
            ]
            if self.tls
            else ["--port", str(self.port)]
        )  # fmt: skip
        command = [
            REDIS_SERVER, *listen, "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--save", "", "--logfile", "redis.log",
            *(persistence if self.persistent else ["--appendonly", "no"]),
            *self.options,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
        wait_for(self.ping, timeout=10, message=lambda: f"private redis-server up\n{self.log()}")

    def ping(self) -> bool:
        """Whether it answers; raises if its process exited (it never will answer)."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}\n{self.log()}")
        client = redis.Redis(
            "127.0.0.1", self.port, socket_connect_timeout=0.5, socket_timeout=1,
            **self._tls_options(),
        )  # fmt: skip
        try:
            return bool(client.ping())
        except redis.RedisError:
            # Still loading its AOF, or not listening yet.
            return False
        finally:
            client.close()

    def crash(self) -> None:
        """SIGKILL: no shutdown, what is not in the AOF is gone."""
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        """Shut it down (SIGTERM), waited for; SIGKILL if it takes more than 10 s."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def client(self) -> redis.Redis:
        return redis.Redis(
            "127.0.0.1", self.port, socket_connect_timeout=3, socket_timeout=10,
            **self._tls_options(),
        )  # fmt: skip

    def _tls_options(self) -> dict[str, object]:
        return {"ssl": True, "ssl_ca_certs": str(self.certificate)} if self.tls else {}

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)
