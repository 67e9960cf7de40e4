"""Real ``celery worker`` subprocesses on :mod:`tests.faults.fault_app`, killed on purpose.

Each worker runs in a process group of its own (its prefork pool included),
so a test can SIGKILL one worker whole, and teardown can stop every one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]

from tests.faults.fault_app import FaultConfig
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[2]
#: What a worker logs when it finds its broker connection broken: its consumer
#: lost it (it reconnects), or a finished run's ack could not be sent (Celery's
#: own ack, or eventbus's Redis transport's batch of acks). A Redis consumer
#: whose prefetch is full polls nothing: only its acks fail.
BROKER_ERRORS = (
    "consumer: Connection to broker lost",
    "Couldn't ack",
    "acks to Redis; retrying",
)


class WorkerProcess:
    """``celery -A tests.faults.fault_app worker`` with the prefork pool, logging to a file."""

    def __init__(
        self, config: FaultConfig, log_dir: Path, *, concurrency: int, loglevel: str = "INFO"
    ) -> None:
        self.config = config
        self.loglevel = loglevel
        self.name = config.worker
        self.concurrency = concurrency
        self.log_path = log_dir / f"worker-{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("EVENTBUS_", "CELERY_", "PROMETHEUS_"))
        }
        environ.update(self.config.environ(), PYTHONPATH=str(ROOT))
        command = [
            sys.executable, "-m", "celery", "-A", "tests.faults.fault_app", "worker",
            "--pool=prefork", f"--concurrency={self.concurrency}",
            "-Q", ",".join(self.config.queues),
            "-n", f"{self.name}@%h", f"--loglevel={self.loglevel}",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def group(self) -> list[psutil.Process]:
        """The live (not zombie) processes of this worker's process group."""
        found = []
        for proc in psutil.process_iter(["status"]):
            try:
                if os.getpgid(proc.pid) == self.pid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (ProcessLookupError, psutil.Error):
                continue
        return found

    def kill(self) -> None:
        """SIGKILL the main process (its pool dies with it), then whatever is left of the group.

        Also how a test stops its workers at the end: once the figures are
        taken, nothing a warm shutdown does matters, and it can take seconds.
        """
        if self.process is None:
            return
        self.process.send_signal(signal.SIGKILL)  # nothing if it was reaped already
        self.process.wait(timeout=10)
        self._kill_group()

    def _kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(self.pid, signal.SIGKILL)
        wait_for(
            lambda: not self.group(),
            timeout=10,
            interval=0.05,
            message=lambda: f"worker {self.name}'s processes to exit: {self.group()}",
        )

    def log(self, tail: int = 6000) -> str:
        if not self.log_path.exists():
            return f"--- {self.name}: no log"
        text = self.log_path.read_text(errors="replace")
        return f"--- {self.name} ({self.log_path}):\n{text[-tail:]}"

    def broker_errors(self) -> int:
        """How many times the worker logged a broker connection failing (:data:`BROKER_ERRORS`)."""
        if not self.log_path.exists():
            return 0
        text = self.log_path.read_text(errors="replace")
        return sum(text.count(needle) for needle in BROKER_ERRORS)

    def count_in_log(self, needle: str) -> int:
        if not self.log_path.exists():
            return 0
        return self.log_path.read_text(errors="replace").count(needle)
