"""Brokers that fail on purpose: a private Redis that crashes, a private RabbitMQ that restarts.

The fault tests never break a shared broker, which other test runs use at the
same time. On Redis each test starts a :class:`~tests.brokers.PrivateRedis`
(AOF fsynced on every write, no RDB snapshots) on a free loopback port and
crashes it with SIGKILL (:func:`restart_redis`). On RabbitMQ the run starts a
node of its own, :class:`PrivateRabbitMQ` (its own node name, ports, data and
log directories, Erlang cookie, no plugins, no config file), one per pytest
session, launched at collection so that it boots while the first tests run
(``tests/faults/conftest.py``); :func:`restart_rabbitmq` stops its
application (``rabbitmqctl stop_app``) and always starts it again. The node
is killed and its directories removed at the end of the session; its epmd
registration goes with it.

A restart holds the broker down until the parties of the test have seen the
outage (``until``: a publish refused, workers that logged the lost
connection...), within :data:`HOLD_TIMEOUT`, not for a fixed time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]
from kombu.connection import Connection

from tests.brokers import PrivateRedis, free_port, require_server
from tests.support import wait_for

#: The RabbitMQ scripts run as the calling user (``/usr/sbin``'s wrappers switch
#: to the ``rabbitmq`` user and its home, hence its Erlang cookie).
RABBITMQ_BIN = Path(os.environ.get("EVENTBUS_TEST_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
RABBITMQ_SERVER = str(RABBITMQ_BIN / "rabbitmq-server")
#: Seconds a restart may hold the broker down waiting for the outage to be seen.
HOLD_TIMEOUT = 30.0
#: Seconds a private RabbitMQ node may take to boot (about 10 on a loaded 2-core machine).
RABBITMQ_BOOT_TIMEOUT = 60.0

Describe = str | Callable[[], str]


def hold_down(
    until: Callable[[], bool], waiting_for: Describe, *, timeout: float = HOLD_TIMEOUT
) -> None:
    """Keep the broker down until ``until()``; fail, naming ``waiting_for``, after ``timeout``."""

    def message() -> str:
        text = waiting_for() if callable(waiting_for) else waiting_for
        return f"the outage to be seen within {timeout:.0f}s: {text}"

    wait_for(until, timeout=timeout, interval=0.02, message=message)


def restart_redis(
    server: PrivateRedis,
    *,
    until: Callable[[], bool],
    waiting_for: Describe,
    on_down: Callable[[], None] = lambda: None,
) -> None:
    """Crash ``server`` (SIGKILL), hold it down until ``until()``, start it again on its AOF.

    ``on_down`` runs right after the crash.
    """
    server.crash()
    try:
        on_down()
        hold_down(until, waiting_for)
    finally:
        server.start()


def amqp_answers(url: str) -> bool:
    """Whether the broker at ``url`` completes an AMQP handshake."""
    try:
        with Connection(url, connect_timeout=1) as conn:
            conn.connect()
            return True
    except (OSError, *Connection(url).connection_errors):
        return False


class PrivateRabbitMQ:
    """A RabbitMQ node of this pytest run's own, on loopback and free ports.

    :meth:`launch` starts ``rabbitmq-server`` in a session of its own and
    :meth:`wait_up` waits for it to answer; :meth:`ctl` runs ``rabbitmqctl``
    against it; :meth:`close` kills the whole session.
    """

    def __init__(self, *, name: str = "eventbus-faults", cookie: str | None = None) -> None:
        require_server(RABBITMQ_SERVER, "the RabbitMQ fault tests start a node")
        uid = uuid.uuid4().hex[:8]
        self.node = f"{name}-{uid}@localhost"
        #: The Erlang cookie; nodes that are to be clustered share one. None:
        #: the node makes its own, at its first boot.
        self.cookie = cookie
        self.port = free_port()
        self.dist_port = free_port()
        while self.dist_port == self.port:
            self.dist_port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="eventbus-faults-rabbitmq-"))
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.process: subprocess.Popen[bytes] | None = None
        self.launched_at = 0.0  #: time.time() of :meth:`launch`

    def environ(self) -> dict[str, str]:
        d = self.directory
        for sub in ("home", "conf.d"):
            (d / sub).mkdir(exist_ok=True)
        for empty in ("enabled_plugins", "rabbitmq-env.conf"):
            (d / empty).touch()
        cookie_file = d / "home" / ".erlang.cookie"
        if self.cookie is not None and not cookie_file.exists():
            # Erlang refuses a cookie file that others can read.
            cookie_file.write_text(self.cookie)
            cookie_file.chmod(0o400)
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

    def launch(self) -> None:
        """Start booting the node, in a session of its own; :meth:`wait_up` waits for it."""
        assert self.process is None, "already running"
        self.launched_at = time.time()  # compared with the node's log timestamps
        with (self.directory / "rabbitmq-server.out").open("ab") as out:
            self.process = subprocess.Popen(
                [RABBITMQ_SERVER], cwd=self.directory,
                env=self.environ(), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def wait_up(self) -> float:
        """Wait until the node answers AMQP; return how long this waited, in seconds."""
        started = time.time()
        wait_for(
            self.answers,
            timeout=max(1.0, self.launched_at + RABBITMQ_BOOT_TIMEOUT - started),
            interval=0.1,
            message=lambda: f"private RabbitMQ node {self.node} up\n{self.log()}",
        )
        return time.time() - started

    def boot_seconds(self) -> float | None:
        """Seconds from :meth:`launch` to the node's "Server startup complete" (its log)."""
        path = self.directory / "log" / f"{self.node}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        for line in text.splitlines():
            if "Server startup complete" in line:
                stamp = datetime.fromisoformat(line.split(" [", 1)[0])
                return stamp.timestamp() - self.launched_at
        return None

    def answers(self) -> bool:
        """Whether it answers AMQP; raises if its process exited (it never will answer)."""
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"rabbitmq-server exited with {self.process.returncode}\n{self.log()}"
            )
        return amqp_answers(self.url)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n <node> args``; raises with its output if it fails."""
        done = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, *args],
            env=self.environ(), capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
        return done.stdout

    def start_app(self) -> None:
        self.ctl("start_app")
        wait_for(self.answers, timeout=30, interval=0.05, message="RabbitMQ back up")

    def ensure_running(self) -> None:
        """Start the application again if it does not answer (a test left it stopped)."""
        if not self.answers():
            self.start_app()

    def block_publishers(self, blocked: bool = True) -> None:
        """Raise (or clear) a memory alarm: the node stops reading a connection that publishes.

        A publish then waits, unconfirmed, until the alarm clears or the node stops.
        The setting outlives ``stop_app``/``start_app`` (the Erlang VM keeps it).
        """
        self.ctl("set_vm_memory_high_watermark", "0" if blocked else "0.4")
        if not blocked:
            # The node looks at its memory every 2.5 s: wait until the alarm is gone.
            wait_for(
                lambda: self.ctl("eval", "rabbit_alarm:get_alarms().").strip() == "[]",
                timeout=30,
                interval=0.2,
                message="the memory alarm cleared",
            )

    def blocked_connections(self) -> int:
        """Connections the node stopped reading because they published during an alarm."""
        out = self.ctl("list_connections", "-q", "--no-table-headers", "state", timeout=30)
        return sum(1 for line in out.splitlines() if line.strip() == "blocked")

    def messages(self, queue: str) -> int:
        """Messages in a queue, ready and unacknowledged (0 if it does not exist)."""
        out = self.ctl("list_queues", "-q", "--no-table-headers", "name", "messages", timeout=30)
        for line in out.splitlines():
            name, _, count = line.rpartition("\t")
            if name.strip() == queue:
                return int(count)
        return 0

    def log(self) -> str:
        parts = [
            self.directory / "rabbitmq-server.out",
            self.directory / "log" / f"{self.node}.log",
        ]
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in parts if p.exists())

    def crash(self) -> int:
        """SIGKILL the node's Erlang VM (``beam.smp``); return its pid.

        No shutdown, no goodbye to its peers: they find it gone when its
        distribution connections break. What is left of the session (the
        start script, the VM's helpers) is killed after it. :meth:`launch`
        boots the node again on its data directory.
        """
        process, self.process = self.process, None
        assert process is not None, "not running"
        beams = [
            child
            for child in psutil.Process(process.pid).children(recursive=True)
            if child.name() == "beam.smp"
        ]
        assert len(beams) == 1, f"{self.node}: one beam.smp expected, found {beams}"
        beams[0].send_signal(signal.SIGKILL)
        beams[0].wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):  # the session is gone already
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        return int(beams[0].pid)

    def close(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            # The whole session: the start script, beam.smp and its helpers.
            # epmd drops the node's name when beam's connection to it closes.
            with contextlib.suppress(ProcessLookupError):  # gone already
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def restart_rabbitmq(
    node: PrivateRabbitMQ,
    *,
    until: Callable[[], bool],
    waiting_for: Describe,
    on_down: Callable[[], None] = lambda: None,
) -> None:
    """``rabbitmqctl stop_app``, hold the node down until ``until()``, ``start_app``.

    ``on_down`` runs once the application is stopped. The application is
    started again whatever happens, and this returns only once it answers
    AMQP again.
    """
    try:
        node.ctl("stop_app")
        on_down()
        hold_down(until, waiting_for)
    finally:
        node.start_app()


class BrokerRestart:
    """A broker restart running in a thread, timed.

    Not a daemon thread: an interrupted test run still waits for it, so a
    stopped broker is always started again.
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
