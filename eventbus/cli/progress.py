"""How a command over many records reports: a progress bar, a line each, JSON, or a summary.

``eventbus dlq replay`` and ``purge`` may touch 100,000 records; a line each
buries the one line that matters. :func:`output_mode` picks, once per
command:

- ``json`` (``--json``): one JSON object per record on stdout, for a script;
  the summary goes to stderr, so stdout stays one object a line;
- ``lines`` (``-v``): one line per record, as these commands printed before;
- ``bar``: neither flag and stderr is a terminal: click's progress bar on
  stderr while the work goes, then the summary;
- ``summary``: neither flag, no terminal (a log, a pipe, cron): the summary only.

A failure is always visible: in ``bar`` and ``summary`` modes the first
:data:`KEPT_SHOWN` records that failed are still named on stderr, each with
its reason, then how many more there were; the summary counts them all and
the exit status says so.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, TextIO

import click

from eventbus.cli.context import echo

__all__ = ["KEPT_SHOWN", "Mode", "Progress", "output_mode", "verbosity"]

Mode = Literal["json", "lines", "bar", "summary"]

KEPT_SHOWN = 20  #: failed records named one by one without -v/--json; then a count
_REDRAW_SECONDS = 0.1  # the bar is redrawn at most this often: 100,000 redraws would cost more


def output_mode(*, verbose: bool, as_json: bool, terminal: bool) -> Mode:
    """The mode a command reports in; ``terminal``: is stderr (where a bar is drawn) a tty."""
    if as_json:
        return "json"
    if verbose:
        return "lines"
    return "bar" if terminal else "summary"


def verbosity(func: Callable[..., Any]) -> Callable[..., Any]:
    """The ``-v/--verbose`` and ``--json`` options of a command over many records."""
    func = click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="One JSON object per record on stdout (the summary goes to stderr).",
    )(func)
    return click.option(
        "-v", "--verbose", is_flag=True, help="One line per record (default: a summary)."
    )(func)


class Progress:
    """Reports one command's records in its :data:`Mode`; a context manager around the work.

    ``length`` is how many steps the work takes (for the bar); :meth:`step`
    advances it, :meth:`record` reports one record's outcome (a line, a JSON
    object, or nothing), :meth:`failed` one record kept (always shown, up to
    :data:`KEPT_SHOWN` outside ``lines`` and ``json``), :meth:`summary` the last line.
    """

    def __init__(
        self,
        mode: Mode,
        *,
        label: str,
        length: int | None,
        status: Callable[[], str] = str,
        file: TextIO | None = None,
    ) -> None:
        self.mode = mode
        self._label = label
        self._length = length
        self._status = status
        self._file = file
        self._bar: Any = None
        self._pending = 0
        self._drawn_at = 0.0
        self._failures = 0

    def __enter__(self) -> Progress:
        if self.mode == "bar":
            self._bar = click.progressbar(
                length=self._length or 0,
                label=self._label,
                file=self._file or sys.stderr,
                show_pos=True,
                show_percent=True,
                item_show_func=lambda _: self._status() or None,
            )
            self._bar.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            done = self._bar.pos + self._pending
            if exc_type is None:  # the walk is done: its bar is full, whatever copies it skipped
                done = max(done, self._bar.length)
            self._bar.update(done - self._bar.pos)
            self._bar.__exit__(exc_type, exc, tb)
            self._bar = None
        hidden = self._failures - KEPT_SHOWN
        if self.mode in ("bar", "summary") and hidden > 0:
            echo(f"... and {hidden} more kept: -v or --json names each", err=True)

    def step(self, n: int = 1) -> None:
        """The work advanced by ``n`` (a record read, a record removed)."""
        if self._bar is None:
            return
        self._pending += n
        now = time.monotonic()
        if now - self._drawn_at >= _REDRAW_SECONDS:
            self._drawn_at = now
            self._bar.update(self._pending)
            self._pending = 0

    def record(self, line: str, obj: dict[str, Any]) -> None:
        """One record's outcome: ``line`` with -v, ``obj`` with --json, else nothing."""
        if self.mode == "lines":
            echo(line)
        elif self.mode == "json":
            _json_line(obj)

    def failed(self, line: str, obj: dict[str, Any]) -> None:
        """One record kept: ``line`` on stderr (with --json: ``obj`` on stdout)."""
        self._failures += 1
        if self.mode == "json":
            _json_line(obj)
        elif self.mode == "lines" or self._failures <= KEPT_SHOWN:
            self._above_bar(lambda: echo(line, err=True))

    def summary(self, line: str) -> None:
        """The last line: stdout, but stderr with --json (stdout is JSON only)."""
        echo(line, err=self.mode == "json")

    def _above_bar(self, write: Callable[[], None]) -> None:
        if self._bar is None:
            write()
            return
        file = self._file or sys.stderr
        file.write("\r\033[K")  # clear the bar's line, print, and let the bar redraw below
        file.flush()
        write()
        # (click redraws only a changed line: the caller counted this failure
        # in its status before, so the line has changed)
        self._bar.render_progress()


def _json_line(obj: dict[str, Any]) -> None:
    # ASCII only, as every --json of the CLI: a record's text cannot drive a terminal.
    click.echo(json.dumps(obj, ensure_ascii=True))
