"""docker-compose.yml: valid, and no credential is ever a command-line argument.

Arguments of a process are visible to every user of the host in ``ps``; the
stack's passwords go to RabbitMQ, Redis, Flower and the app containers in
their environment only. Needs Debian's ``docker-compose`` (``config`` only:
no Docker engine); skipped without it, failed when CI is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.brokers import require_server

REPO = Path(__file__).resolve().parents[2]
SECRETS = {
    "RABBITMQ_PASSWORD": "rabbit-marker-7c1",
    "REDIS_PASSWORD": "redis-marker-9d2",
    "FLOWER_PASSWORD": "flower-marker-4e3",
}


def compose_config(**env: str) -> str:
    binary = shutil.which("docker-compose") or "/usr/bin/docker-compose"
    require_server(binary, "validating docker-compose.yml needs docker-compose")
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EVENTBUS_", "RABBITMQ_", "REDIS_", "FLOWER_"))
    }
    done = subprocess.run(
        [binary, "--project-directory", str(REPO), "-f", str(REPO / "docker-compose.yml"),
         "config"],
        env={**environment, **env}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def enclosing_keys(lines: list[str], index: int) -> list[str]:
    """The YAML keys a line of ``docker-compose config``'s output sits under, innermost first."""
    keys, indent = [], len(lines[index]) - len(lines[index].lstrip())
    if lines[index].lstrip().startswith("- "):
        indent += 1  # (a list item sits at its key's indentation)
    for line in reversed(lines[:index]):
        stripped = line.lstrip()
        depth = len(line) - len(stripped)
        if stripped and depth < indent and stripped.rstrip().endswith(":"):
            keys.append(stripped.rstrip()[:-1])
            indent = depth
    return keys


@pytest.mark.parametrize(
    "broker", [{}, {"EVENTBUS_BROKER": "redis"}, {"EVENTBUS_BROKER_URL": "redis://redis:6379/0"}]
)
def test_passwords_reach_the_containers_only_through_their_environment(
    broker: dict[str, str],
) -> None:
    # Given passwords of our own
    lines = compose_config(**SECRETS, FLOWER_USER="ops", **broker).splitlines()
    # Then each appears only as an environment variable, never in a command,
    # an entrypoint or a healthcheck
    seen = set()
    for index, line in enumerate(lines):
        for name, marker in SECRETS.items():
            if marker in line:
                seen.add(name)
                keys = enclosing_keys(lines, index)
                assert keys[0] == "environment", f"{name} under {' < '.join(keys)}: {line}"
    assert seen == set(SECRETS)


def test_redis_asks_every_client_for_the_password() -> None:
    config = compose_config(**SECRETS)
    assert "requirepass $${REDIS_PASSWORD" in config
    # and the app's URLs carry it (built inside the containers from their environment)
    assert "redis://:$${REDIS_PASSWORD}@redis:6379/1" in config
    assert "redis://:$${REDIS_PASSWORD}@redis:6379/0" in config
