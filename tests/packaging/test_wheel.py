"""The wheel: the ``eventbus`` package alone, and a demo that runs from a fresh install.

``pip install eventbus`` used to put top-level modules ``handlers`` and
``celeryconfig`` (the repository's example app) into site-packages: names
many Celery projects use for their own code. The wheel is built here from a
copy of the repository as it is (its handlers/ and celeryconfig.py
included), so that packaging's discovery, not the copy, decides what goes
in; it is installed into a fresh virtualenv with its dependencies from the
package index (what a user gets), and ``eventbus demo`` runs there from a
directory outside the repository, with no app named and nothing configured.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
#: What a build of the working tree must not see: VCS, caches, earlier builds, virtualenvs.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", "__pycache__", "*.egg-info", "build", "dist", ".*cache", ".venv", "venv", ".ci-venv"
)


def run(args: list[str], *, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``args`` in a clean environment: no eventbus or Celery settings, no PYTHONPATH."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EVENTBUS_", "CELERY_", "PYTHON", "VIRTUAL_ENV"))
    }
    return subprocess.run(
        args, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "eventbus"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    out = tmp_path_factory.mktemp("wheel")
    started = time.monotonic()
    pip = [sys.executable, "-m", "pip"]
    built = run([*pip, "wheel", "--no-deps", "--wheel-dir", str(out), "."], cwd=source)
    assert built.returncode == 0, built.stdout + built.stderr
    print(f"wheel: built in {time.monotonic() - started:.1f}s")
    (path,) = out.glob("eventbus-*.whl")
    return path


@pytest.fixture(scope="module")
def fresh_install(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with the wheel and its dependencies from the index: its bin/."""
    venv = tmp_path_factory.mktemp("venv")
    work = tmp_path_factory.mktemp("work")
    started = time.monotonic()
    created = run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    assert created.returncode == 0, created.stderr
    installed = run([str(venv / "bin" / "python"), "-m", "pip", "install", str(wheel)], cwd=work)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    print(f"wheel: fresh virtualenv + install in {time.monotonic() - started:.1f}s")
    return venv / "bin"


def test_the_wheel_holds_the_eventbus_package_alone(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    dist_info = {entry for entry in top if re.fullmatch(r"eventbus-[^/]+\.dist-info", entry)}
    assert len(dist_info) == 1, top
    assert top - dist_info == {"eventbus"}, f"the wheel installs more than eventbus: {top}"
    assert "eventbus/py.typed" in names
    assert "eventbus/cli/demo_app.py" in names  # the demo's own example app ships inside it
    # the console's templates and stylesheet ship as package data
    assert "eventbus/console/templates/record.html" in names
    assert "eventbus/console/static/console.css" in names


def test_the_demo_runs_from_a_fresh_install(fresh_install: Path, tmp_path: Path) -> None:
    # Given the wheel in a fresh virtualenv and a directory outside the repository,
    # when a newcomer runs the README's first command there, with nothing configured
    started = time.monotonic()
    result = run([str(fresh_install / "eventbus"), "demo"], cwd=tmp_path, timeout=180)
    print(f"wheel: eventbus demo from the fresh install in {time.monotonic() - started:.1f}s")
    # Then it tells its whole story on the embedded broker
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    assert "broker memory://" in out
    assert "→ 2 handler tasks" in out and "→ 3 handler tasks" in out  # fan-out
    assert "notify_assignee: 3 attempts" in out  # retries
    assert "reason=permanent_error attempts=1" in out  # the dead letter
    assert "replays=1; record removed: True" in out  # its replay
    assert "Done: published 3 events" in out


def test_a_fresh_install_brings_no_example_app(fresh_install: Path, tmp_path: Path) -> None:
    # Given the fresh install, then neither example module can be imported from it
    found = run(
        [
            str(fresh_install / "python"),
            "-c",
            "import importlib.util as u; "
            "print([n for n in ('handlers', 'celeryconfig') if u.find_spec(n)])",
        ],
        cwd=tmp_path,
    )
    assert (found.returncode, found.stdout.strip()) == (0, "[]"), found.stderr
    # and a command that needs an app, given none, says how to name one
    result = run([str(fresh_install / "eventbus"), "dlq", "list"], cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert "-A" in line and "EVENTBUS_APP" in line, line
    # and the console, without its extra, says what to install
    result = run([str(fresh_install / "eventbus"), "console"], cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert "pip install 'eventbus[console]'" in line, line
