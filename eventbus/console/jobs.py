"""Replays of a whole group, run in a thread so that the page can show their progress.

A group may hold 10,000 records: replaying it takes longer than a request
should. The replay is :meth:`DeadLetterQueue.replay_each`, the same call
``eventbus dlq replay --group`` makes (chunks of 500 in one ``bus.batch()``,
each record removed once its chunk was sent), so it goes as fast as the CLI;
its report callback counts what it did, and the job page reloads itself
until it is done.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eventbus.deadletter.queue import DeadLetterQueue
from eventbus.deadletter.record import DeadLetter
from eventbus.domain.envelope import Envelope
from eventbus.errors import ReplayError
from eventbus.redaction import redact

__all__ = ["Job", "Jobs"]

logger = logging.getLogger("eventbus.console")

KEPT_SHOWN = 20  #: kept records a job page lists (with why); the rest are counted
JOBS_KEPT = 50  #: finished jobs remembered


@dataclass
class Job:
    """One group replay: who started it, what it selects, how far it got."""

    id: str
    user: str
    what: str
    expected: int  #: records the dry run counted
    started: float = field(default_factory=time.time)
    replayed: int = 0
    kept: int = 0
    kept_reasons: list[str] = field(default_factory=list)
    finished: float | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.finished is not None

    @property
    def seconds(self) -> float:
        return (self.finished or time.time()) - self.started


class Jobs:
    """The console's group replays, running and recently finished."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def start(
        self,
        dead_letters: DeadLetterQueue,
        select: Callable[[DeadLetter], bool],
        *,
        user: str,
        what: str,
        expected: int,
        secrets: list[str],
        done: Callable[[list[str]], Any],
    ) -> Job:
        """Replay every record ``select`` accepts in a new thread; then ``done(ids replayed)``."""
        job = Job(uuid.uuid4().hex, user, what, expected)
        with self._lock:
            finished = [j for j in self._jobs.values() if j.done]
            for old in finished[: max(0, len(finished) - JOBS_KEPT)]:
                del self._jobs[old.id]
            self._jobs[job.id] = job

        replayed: list[str] = []

        def report(record: DeadLetter, outcome: Envelope[Any] | ReplayError) -> None:
            if isinstance(outcome, ReplayError):
                job.kept += 1
                if len(job.kept_reasons) < KEPT_SHOWN:
                    job.kept_reasons.append(f"{record.id}: {redact(str(outcome), secrets)}")
            else:
                job.replayed += 1
                replayed.append(record.id)

        def run() -> None:
            try:
                dead_letters.replay_each(select, report)
            except Exception as exc:  # shown on the job page; the records not sent are kept
                job.error = redact(f"{type(exc).__name__}: {exc}", secrets)
                logger.error("console: replay %s of %s failed: %s", job.id, what, job.error)
            finally:
                job.finished = time.time()
                done(replayed)
                logger.info(
                    "console: user=%s replay of %s finished: replayed %d, kept %d%s",
                    user,
                    what,
                    job.replayed,
                    job.kept,
                    f", error: {job.error}" if job.error else "",
                )

        threading.Thread(
            target=run, name=f"eventbus-console-replay-{job.id[:8]}", daemon=True
        ).start()
        return job
