"""docker-compose.yml: valid, and no credential is ever a command-line argument.

Arguments of a process are visible to every user of the host in ``ps``; the
stack's passwords go to RabbitMQ, Redis, Flower, Grafana and the app
containers in their environment only. The ``monitoring`` profile's Prometheus
and Grafana get the repository's dashboard, alert rules and provisioning, and
scrape the port the workers serve. Needs Debian's ``docker-compose``
(``config`` only: no Docker engine); skipped without it, failed when CI is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.brokers import require_server

REPO = Path(__file__).resolve().parents[2]
SECRETS = {
    "RABBITMQ_PASSWORD": "rabbit-marker-7c1",
    "REDIS_PASSWORD": "redis-marker-9d2",
    "FLOWER_PASSWORD": "flower-marker-4e3",
    "GRAFANA_PASSWORD": "grafana-marker-5f4",
}


def compose_config(*profiles: str, **env: str) -> str:
    binary = shutil.which("docker-compose") or "/usr/bin/docker-compose"
    require_server(binary, "validating docker-compose.yml needs docker-compose")
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EVENTBUS_", "RABBITMQ_", "REDIS_", "FLOWER_", "GRAFANA_"))
    }
    selected = [arg for profile in profiles for arg in ("--profile", profile)]
    done = subprocess.run(
        [binary, "--project-directory", str(REPO), "-f", str(REPO / "docker-compose.yml"),
         *selected, "config"],
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
    lines = compose_config("monitoring", **SECRETS, FLOWER_USER="ops", **broker).splitlines()
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


def test_the_monitoring_profile_runs_prometheus_and_grafana_on_the_repositorys_files() -> None:
    config = yaml.safe_load(compose_config("monitoring"))
    services = config["services"]
    # Only with the profile: `docker compose up` alone starts neither
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
        for port in services[name]["ports"]:
            published = port if isinstance(port, str) else f"{port['host_ip']}:{port['published']}"
            assert published.startswith("127.0.0.1:"), (name, port)
    # Each gets files of this repository, read-only
    mounts = {
        (name, target): (Path(source), read_only)
        for name in ("prometheus", "grafana")
        for source, target, read_only in map(bind_mount, services[name]["volumes"])
        if source.startswith("/")
    }
    assert mounts == {
        ("prometheus", "/etc/prometheus/prometheus.yml"): (
            REPO / "deploy/prometheus/prometheus.yml",
            True,
        ),
        ("prometheus", "/etc/prometheus/rules/eventbus.yml"): (
            REPO / "deploy/prometheus/alerts.yml",
            True,
        ),
        ("grafana", "/etc/grafana/provisioning"): (REPO / "deploy/grafana/provisioning", True),
        ("grafana", "/etc/grafana/dashboards"): (REPO / "deploy/grafana/dashboards", True),
    }
    assert all(source.exists() for source, _ in mounts.values())
    # Prometheus scrapes the port the workers serve, on the stack's network
    worker = services["worker"]["environment"]
    assert worker["EVENTBUS_METRICS_ADDR"] == "0.0.0.0"
    scrape = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    [job] = scrape["scrape_configs"]
    [discovery] = job["dns_sd_configs"]
    assert discovery["names"] == ["worker"]
    assert discovery["port"] == int(worker["EVENTBUS_METRICS_PORT"])
    assert scrape["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    # and Grafana's home is the dashboard, from where it is mounted
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/etc/grafana/dashboards/eventbus.json"
    assert (REPO / "deploy/grafana/dashboards/eventbus.json").exists()


def bind_mount(volume: str | dict[str, Any]) -> tuple[str, str, bool]:
    """(source, target, read-only) of a volume as ``config`` prints it (v1: short, v2: long)."""
    if isinstance(volume, dict):
        return volume["source"], volume["target"], bool(volume.get("read_only"))
    source, target, *mode = volume.split(":")
    return source, target, mode == ["ro"]
