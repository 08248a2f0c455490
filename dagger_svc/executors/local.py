"""The embedded default's executor: each job attempt is a process on this host.

Attempts run the wrapper's own phases (`streamed_job.attempt.Attempt`) in-process, many
on one process pump, so no Python interpreter starts per job: only the user's command is
spawned. Lines go straight into dagger's log store; cellar is reached with the attempt's
own job token, minted the first time the attempt needs it. The image is recorded but not
used. An attempt's slow work (fetching its inputs, saving its outputs) runs on a thread of
its own, never on a pool shared with other attempts: a stalled origin server holds only
the attempts that fetch from it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from dagger_svc.core.records import Outcome
from dagger_svc.executors.base import AttemptLogs, Launch, Report, host_environment, outcome_of, run_spec
from dagger_svc.executors.procs import REPLICA_ENV, kill_leftovers
from donut_common.auth import JobTokens
from streamed_job.attempt import Attempt
from streamed_job.cellar import CellarClient
from streamed_job.files import FileProblem
from streamed_job.outcome import Ended
from streamed_job.pump import ProcessPump
from streamed_job.spec import FetchSettings, SaveSettings, attempt_key

log = logging.getLogger(__name__)

Cellar = Callable[[str], CellarClient]  # a cellar client acting with the given token


@dataclass
class _Running:
    attempt: Attempt
    launch: Launch
    token: tuple[str, str] | None = None  # (id, secret) of its job token, once minted
    threads: list[threading.Thread] = field(default_factory=list)  # its slow work


class LocalExecutor:
    def __init__(self, logs: AttemptLogs, cellar: Cellar | None = None,
                 tokens: JobTokens | None = None, kill_grace: float = 10.0, spawners: int = 2,
                 job_env: Iterable[str] = (), fetch: FetchSettings | None = None,
                 save: SaveSettings | None = None, replica: str = "") -> None:
        self.logs = logs
        self.cellar = cellar
        self.tokens = tokens
        self.report: Report = not_started
        self.pump = ProcessPump(kill_grace=kill_grace)
        self.fetch = fetch or FetchSettings()
        self.save = save or SaveSettings()
        self._spawners = ThreadPoolExecutor(max_workers=spawners, thread_name_prefix="local-spawn")
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._base_env = host_environment(os.environ, job_env)  # read once, not per launch
        if replica:  # what the reaper knows this replica's jobs by
            self._base_env[REPLICA_ENV] = replica

    def start(self, report: Report) -> None:
        self.report = report

    def launch(self, launch: Launch) -> None:
        run = run_spec(launch)
        key = run.key
        attempt = Attempt(run, pump=self.pump, output=lambda stream, lines: self._output(launch, stream, lines),
                          cellar=(lambda: self._job_cellar(key)) if self.cellar is not None else None,
                          on_end=lambda ended: self._ended(key, ended), base_env=self._base_env,
                          background=lambda work: self._thread(key, work), fetch=self.fetch, save=self.save)
        fetches = any(i.origin or i.cache for i in run.inputs)
        with self._lock:
            if key in self._running:
                return  # already launched
            self._running[key] = _Running(attempt, launch)
        # never on the caller's thread: the scheduler launches a commit's attempts one after
        # another, and spawning them in a row on its thread held back its next commit
        if fetches:
            self._thread(key, attempt.run)  # its downloads hold only this attempt
        else:
            self._spawners.submit(attempt.run)

    def _thread(self, key: str, work: Callable[[], None]) -> None:
        """Runs an attempt's slow work on a thread of its own."""
        thread = threading.Thread(target=work, name=f"local-files {key}", daemon=True)
        with self._lock:
            running = self._running.get(key)
            if running is not None:
                running.threads.append(thread)
        thread.start()

    def _job_cellar(self, key: str) -> CellarClient:
        """A cellar client acting with the attempt's own job token (minted on first use:
        jobs that touch no files cost no token)."""
        assert self.cellar is not None
        if self.tokens is None:
            raise FileProblem("no job token can be minted (no users service)")
        with self._lock:
            running = self._running[key]
            token = running.token
        if token is None:
            launch = running.launch
            token = self.tokens.mint(launch.owner, launch.workflow_id, launch.job, launch.attempt, launch.upload_id,
                                     launch.spec.timeout)
            with self._lock:
                running.token = token
        return self.cellar(token[1])

    def _output(self, launch: Launch, stream: int, lines: list[bytes]) -> None:
        self.logs.append(launch.workflow_id, launch.job, launch.attempt, [(stream, line) for line in lines])

    def _ended(self, key: str, ended: Ended) -> None:
        with self._lock:
            running = self._running.pop(key)
        if running.token is not None and self.tokens is not None:
            self.tokens.revoke(running.token[0])
        launch = running.launch
        self.report(launch.workflow_id, launch.job, launch.attempt, outcome_of(ended))
        self.logs.end(launch.workflow_id, launch.job, launch.attempt)

    def kill(self, workflow_id: str, job: str, attempt: int) -> None:
        with self._lock:
            running = self._running.get(attempt_key(workflow_id, job, attempt))
        if running is not None:
            running.attempt.kill()

    def lost(self, workflow_id: str, job: str, attempt: int) -> bool:
        with self._lock:
            if attempt_key(workflow_id, job, attempt) in self._running:
                return False
        return end_lost_attempt(self.logs, workflow_id, job, attempt)

    def close(self) -> None:
        """Stops every attempt: downloads at once, commands with SIGTERM, then SIGKILL after
        the grace; their ends are reported."""
        with self._lock:
            running = list(self._running.values())
        for each in running:
            each.attempt.kill()
        self.pump.stop_all()
        self._spawners.shutdown(wait=True, cancel_futures=True)
        for each in running:
            for thread in each.threads:
                thread.join()
        self.pump.close()


def not_started(workflow_id: str, job: str, attempt: int, outcome: Outcome) -> None:
    """The report of an executor that was not started: an attempt cannot have ended yet."""
    raise RuntimeError("the executor was not started")


def end_lost_attempt(logs: AttemptLogs, workflow_id: str, job: str, attempt: int) -> bool:
    """An attempt no executor here has (an earlier incarnation started it): whatever is left
    of it must not live on unwatched, and its log is over. Always True (it is lost)."""
    kill_leftovers({attempt_key(workflow_id, job, attempt)})
    logs.end(workflow_id, job, attempt)
    return True
