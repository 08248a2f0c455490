"""A recording executor: the scheduler's launches and kills are written down, and the test
says when and how each attempt ends. No process starts, so scheduling tests take
milliseconds per job instead of a process spawn."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from dagger_svc.core.records import Outcome
from dagger_svc.executors.base import Launch, Report

OK = Outcome(exit_code=0)
FAILED = Outcome(exit_code=1, message="exited with code 1")
KILLED = Outcome(exit_code=143, signal="SIGTERM", message="terminated (SIGTERM)")


@dataclass(frozen=True)
class Attempt:
    workflow_id: str
    job: str
    number: int


class RecordingExecutor:
    """Implements the Executor protocol. `outcome_of`, when given, ends every launch at once
    with the outcome it returns (None: leave it running); `kill` ends an attempt with KILLED
    unless `end_on_kill` is off (then the test ends it)."""

    def __init__(self, outcome_of: Callable[[Launch], Outcome | None] | None = None, end_on_kill: bool = True) -> None:
        self.outcome_of = outcome_of
        self.end_on_kill = end_on_kill
        self.launches: list[Launch] = []
        self.kills: list[Attempt] = []
        self.ended: list[tuple[Attempt, Outcome]] = []
        self.running: set[Attempt] = set()
        self.peak: dict[str, int] = {}  # workflow id -> the most of its attempts running at once
        self.closed = False
        self._report: Report | None = None
        self._changed = threading.Condition()

    # ---- the Executor protocol -------------------------------------------------------

    def start(self, report: Report) -> None:
        self._report = report

    def launch(self, launch: Launch) -> None:
        attempt = Attempt(launch.workflow_id, launch.job, launch.attempt)
        with self._changed:
            assert attempt not in self.running, f"{attempt} launched twice"
            self.launches.append(launch)
            self.running.add(attempt)
            count = sum(a.workflow_id == launch.workflow_id for a in self.running)
            self.peak[launch.workflow_id] = max(self.peak.get(launch.workflow_id, 0), count)
            self._changed.notify_all()
        outcome = self.outcome_of(launch) if self.outcome_of is not None else None
        if outcome is not None:
            self.end(attempt, outcome)

    def kill(self, workflow_id: str, job: str, attempt: int) -> None:
        killed = Attempt(workflow_id, job, attempt)
        with self._changed:
            self.kills.append(killed)
            self._changed.notify_all()
        if self.end_on_kill and killed in self.running:
            self.end(killed, KILLED)

    def lost(self, workflow_id: str, job: str, attempt: int) -> bool:
        with self._changed:
            return Attempt(workflow_id, job, attempt) not in self.running

    def close(self) -> None:
        self.closed = True

    # ---- for the test ----------------------------------------------------------------

    def end(self, attempt: Attempt, outcome: Outcome = OK) -> None:
        """Ends a running attempt and reports it, as an executor does when its process ends."""
        with self._changed:
            self.running.discard(attempt)
            self.ended.append((attempt, outcome))
            self._changed.notify_all()
        assert self._report is not None, "the executor was not started"
        self._report(attempt.workflow_id, attempt.job, attempt.number, outcome)

    def finish(self, workflow_id: str, job: str, outcome: Outcome = OK) -> Attempt:
        """Ends the running attempt of a job (waiting for its launch first)."""
        attempt = self.wait_for(lambda: next((a for a in self.running
                                               if (a.workflow_id, a.job) == (workflow_id, job)), None),
                                f"an attempt of {job} running")
        self.end(attempt, outcome)
        return attempt

    def forget(self) -> None:
        """Forgets every running attempt without reporting it: the executor lost them
        (a restart of the machine it ran them on)."""
        with self._changed:
            self.running.clear()

    def running_jobs(self, workflow_id: str) -> set[str]:
        with self._changed:
            return {a.job for a in self.running if a.workflow_id == workflow_id}

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 10.0) -> object:
        """The first true value of `condition`, checked whenever anything changes here."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = condition()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"timed out waiting for {what}"
                self._changed.wait(min(remaining, 0.05))
