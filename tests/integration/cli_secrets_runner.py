"""Runs many ``eventbus`` commands in one process, as tests/integration/test_cli_secrets.py asks.

``python -m tests.integration.cli_secrets_runner JOBS RESULTS``: JOBS is a
JSON list of ``{"what", "entry", "args", "env"}``; each job runs in this
process with click's ``CliRunner`` (its ``env`` set for the job, restored
after), through ``eventbus`` (:func:`eventbus.cli.main.main`) or through
``celery -A handlers eventbus`` (Celery's own command group, which loads
the ``celery.commands`` entry point). RESULTS gets, per job, its exit code,
stdout, stderr, what it logged (every record that reached the root logger,
with its traceback) and the traceback of an exception that escaped the
command (a real process would have printed it).

The process's environment is the one a real command would run with (the
URLs under test): the example app (``-A handlers``) reads it once, when a
first command imports it. So one process serves one environment; ``demo``,
which changes the process (Celery's default app, eventbus's log level), only
runs last.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from click.testing import CliRunner


class Captured(logging.Handler):
    """Every log record, formatted as a log file would have it (traceback included)."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def run(job: dict[str, Any], captured: Captured) -> dict[str, Any]:
    if job["entry"] == "celery":
        from celery.bin.celery import celery as command

        args = ["-A", "handlers", "eventbus", *job["args"]]
    else:
        from eventbus.cli.main import main as command

        args = ["-A", "handlers", *job["args"]]
    captured.lines.clear()
    started = time.monotonic()
    result = CliRunner().invoke(command, args, env=job["env"])
    seconds = time.monotonic() - started
    escaped = ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        escaped = "".join(traceback.format_exception(result.exception))
    return {
        "what": job["what"],
        "args": job["args"],
        "returncode": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "log": "\n".join(captured.lines),
        "escaped": escaped,
        "seconds": seconds,
    }


def main() -> None:
    jobs_path, results_path = Path(sys.argv[1]), Path(sys.argv[2])
    captured = Captured()
    logging.getLogger().addHandler(captured)  # (the root keeps its level: WARNING)
    results = [run(job, captured) for job in json.loads(jobs_path.read_text())]
    results_path.write_text(json.dumps(results))


if __name__ == "__main__":
    main()
