"""Private broker servers for the benchmarks that measure the server itself.

A shared broker serves other clients too (other helpers' tests, CI), so its
``INFO cpu`` and ``INFO commandstats``, or its Erlang VM's CPU time, mix their
work with ours. :class:`PrivateRedis` is a ``redis-server`` of the run's own
(loopback, a free port, no persistence); :class:`PrivateRabbitMQ` a RabbitMQ
node of the run's own (its own node name, ports, directories and Erlang cookie,
no plugins, no config file: the same recipe as the fault tests' node). Both
are started in a session of their own and killed with it.

No pytest here: ``tests/brokers.py`` is the suite's, this is the benchmarks'.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import redis
from kombu.connection import Connection

REDIS_SERVER = os.environ.get("BENCH_REDIS_SERVER", shutil.which("redis-server") or "")
RABBITMQ_BIN = Path(os.environ.get("BENCH_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
#: Seconds a node may take to boot (about 10-20 on a loaded 2-core machine).
BOOT_TIMEOUT = 90.0


def free_port() -> int:
    """A free loopback port below the ephemeral range (no outgoing connection takes it)."""
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


def _kill_session(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


class PrivateRedis:
    """A ``redis-server`` of the run's own: no RDB snapshots, no AOF."""

    def __init__(self) -> None:
        if not (REDIS_SERVER and os.access(REDIS_SERVER, os.X_OK)):
            raise FileNotFoundError("redis-server not found (set BENCH_REDIS_SERVER)")
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        return [
            REDIS_SERVER,
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
            *("--dir", str(self.directory)),
        ]

    def start(self) -> PrivateRedis:
        with (self.directory / "redis.log").open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"private redis-server did not start:\n{self.log()}"
                    ) from None
                time.sleep(0.05)
            finally:
                client.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def close(self) -> None:
        process, self.process = self.process, None
        _kill_session(process)
        shutil.rmtree(self.directory, ignore_errors=True)


class PrivateRabbitMQ:
    """A RabbitMQ node of the run's own, on loopback and free ports."""

    def __init__(self) -> None:
        server = RABBITMQ_BIN / "rabbitmq-server"
        if not os.access(server, os.X_OK):
            raise FileNotFoundError(f"{server} not found (set BENCH_RABBITMQ_BIN)")
        self.node = f"eventbus-bench-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        while self.dist_port == self.port:
            self.dist_port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="bench-rabbitmq-"))
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.process: subprocess.Popen[bytes] | None = None

    def environ(self) -> dict[str, str]:
        d = self.directory
        for sub in ("home", "conf.d"):
            (d / sub).mkdir(exist_ok=True)
        for empty in ("enabled_plugins", "rabbitmq-env.conf"):
            (d / empty).touch()
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            # The node writes its Erlang cookie in $HOME; rabbitmqctl reads it there.
            "HOME": str(d / "home"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            # Not the machine's node: no rabbitmq-env.conf, no rabbitmq.conf.
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "none"),
            "RABBITMQ_CONFIG_FILES": str(d / "conf.d"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "none.config"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self) -> PrivateRabbitMQ:
        with (self.directory / "rabbitmq-server.out").open("ab") as out:
            self.process = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                cwd=self.directory,
                env=self.environ(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + BOOT_TIMEOUT
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private RabbitMQ node did not start:\n{self.log()}")
            time.sleep(0.2)
        return self

    def _answers(self) -> bool:
        try:
            with Connection(self.url, connect_timeout=1) as conn:
                conn.connect()
                return True
        except Exception:
            return False

    @property
    def pid(self) -> int:
        """The node's Erlang VM (``beam.smp``), a descendant of the start script."""
        assert self.process is not None
        for proc in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if proc.name().startswith("beam"):
                    return int(proc.pid)
        raise RuntimeError("the private node's beam.smp is not running")

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n <node> args``; raises with its output if it fails."""
        done = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def log(self) -> str:
        parts = [
            self.directory / "rabbitmq-server.out",
            self.directory / "log" / f"{self.node}.log",
        ]
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in parts if p.exists())

    def close(self) -> None:
        process, self.process = self.process, None
        # The whole session: the start script, beam.smp and its helpers; epmd
        # drops the node's name when beam's connection to it closes.
        _kill_session(process)
        shutil.rmtree(self.directory, ignore_errors=True)
