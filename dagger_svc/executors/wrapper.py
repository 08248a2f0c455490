"""The wrapper executor: each attempt is a `streamed-job` process on this host, run the
way a Kubernetes job runs it, so the cluster's code path can be exercised on one machine.

Unlike the local executor, which runs the job machinery in-process, this one only starts
and watches the wrapper: the wrapper fetches inputs from cellar, streams the command's
output to dagger over PushLogs and reports the end with ReportJobStatus, all over gRPC
with the attempt's own job token. The executor reports an attempt itself only when the
wrapper could not: killed outright (SIGKILL, the OOM killer), crashed, or unable to reach
dagger. It tells these apart by the termination file the wrapper writes last, as
Kubernetes keeps a container's termination message.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from dagger_svc.core.records import Outcome
from dagger_svc.executors.base import (
    AttemptLogs,
    Launch,
    Report,
    host_environment,
    outcome_of,
    report_for_the_wrapper,
    run_spec,
    wrapper_environment,
)
from dagger_svc.executors.local import end_lost_attempt, not_started
from dagger_svc.executors.procs import job_processes, kill_leftovers, runs_module, signal_process, spec_token
from donut_common.auth import JobTokens, split_token
from streamed_job.outcome import Ended, read_termination_message
from streamed_job.pump import STDERR, ProcessPump
from streamed_job.spec import FetchSettings, SaveSettings, attempt_key

log = logging.getLogger(__name__)

REPORT_MARGIN = 5.0   # seconds the wrapper gets, after its command's kill grace, to flush logs and report
STDERR_KEPT = 5       # last lines of the wrapper's own stderr kept to explain a crash
WRAPPER_MODULE = "streamed_job.main"


@dataclass
class _Attempt:
    workflow_id: str
    job: str
    number: int
    launch: Launch | None = None  # None for a wrapper adopted from an earlier incarnation
    killed: bool = False
    started: bool = False  # handed to the pump (kills go to the process from then on)
    token_id: str = ""
    adopted_pid: int = 0
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=STDERR_KEPT))

    @property
    def key(self) -> str:
        return attempt_key(self.workflow_id, self.job, self.number)


class WrapperExecutor:
    """Starts one `python -m streamed_job.main` per attempt; logs and the end arrive over gRPC."""

    def __init__(self, logs: AttemptLogs, dagger_endpoint: str, kill_grace: float = 10.0,
                 python: str = sys.executable, tokens: JobTokens | None = None, spawners: int = 2,
                 tls_ca: str = "", state_dir: Path | None = None, job_env: Iterable[str] = (),
                 fetch: FetchSettings | None = None, save: SaveSettings | None = None) -> None:
        self.logs = logs
        self.report: Report = not_started
        self._host_env = host_environment(os.environ, job_env)
        self.dagger_endpoint = dagger_endpoint
        self.tls_ca = tls_ca
        self.kill_grace = kill_grace
        self.python = python
        self.tokens = tokens
        self.fetch = fetch or FetchSettings()
        self.save = save or SaveSettings()
        # The pump's own grace covers the wrapper's: it forwards SIGTERM, waits kill_grace
        # for the command, then needs a moment to flush the log and report.
        self.pump = ProcessPump(kill_grace=kill_grace + REPORT_MARGIN)
        # Where wrappers run and leave their termination logs; a restarted executor given the
        # same directory finds the logs of the wrappers it adopts.
        if state_dir is None:
            state_dir = Path(tempfile.mkdtemp(prefix="donut-wrapper-"))
        state_dir.mkdir(parents=True, exist_ok=True)
        self._state_dir = state_dir
        self._spawners = ThreadPoolExecutor(max_workers=spawners, thread_name_prefix="wrapper-spawn")
        self._active: dict[str, _Attempt] = {}
        self._lock = threading.Lock()
        self._closing = False

    # ---- the Executor protocol -------------------------------------------------------

    def start(self, report: Report) -> None:
        self.report = report

    def launch(self, launch: Launch) -> None:
        key = attempt_key(launch.workflow_id, launch.job, launch.attempt)
        with self._lock:
            if key in self._active or self._closing:
                return  # already launched
            attempt = self._active[key] = _Attempt(launch.workflow_id, launch.job, launch.attempt, launch)
        self._spawners.submit(self._start, attempt)  # minting a token is an RPC: not on the scheduler's thread

    def kill(self, workflow_id: str, job: str, attempt: int) -> None:
        key = attempt_key(workflow_id, job, attempt)
        with self._lock:
            running = self._active.get(key)
            if running is None:
                return
            running.killed = True
            if not running.started:
                return  # _start sees it
        if running.adopted_pid:
            signal_process(running.adopted_pid, signal.SIGTERM)
            threading.Timer(self.kill_grace + REPORT_MARGIN, kill_leftovers, args=({key},)).start()
            return
        self.pump.kill(key)  # SIGTERM to the wrapper, which forwards it; SIGKILL after the grace

    def lost(self, workflow_id: str, job: str, attempt: int) -> bool:
        """A wrapper that outlived an earlier incarnation of this executor (dagger was
        restarted) is adopted, as a cluster's job would be: its logs and report come over
        gRPC as before, and its end is watched. Without one, the attempt is lost."""
        key = attempt_key(workflow_id, job, attempt)
        with self._lock:
            if key in self._active:
                return False
        wrappers = [pid for pid in job_processes({key}) if runs_module(pid, WRAPPER_MODULE)]
        if not wrappers:
            return end_lost_attempt(self.logs, workflow_id, job, attempt)
        adopted = _Attempt(workflow_id, job, attempt, started=True, adopted_pid=wrappers[0],
                           token_id=split_token(spec_token(wrappers[0]))[0])  # revoked when it ends, as any
        with self._lock:
            self._active[key] = adopted
        threading.Thread(target=self._watch_adopted, args=(adopted,), name="wrapper-adopted", daemon=True).start()
        return False

    def _watch_adopted(self, attempt: _Attempt) -> None:
        try:
            pidfd = os.pidfd_open(attempt.adopted_pid)
        except ProcessLookupError:
            pidfd = -1
        if pidfd >= 0:
            try:
                select.select([pidfd], [], [])
            finally:
                os.close(pidfd)
        with self._lock:
            if self._closing or attempt.key not in self._active:
                return
        self._wrapper_ended(attempt, Ended(None, message="the adopted job wrapper ended without reporting"))

    def close(self) -> None:
        """Stops every attempt: SIGTERM to the wrappers, which stop their commands and
        report (SIGKILL after the grace); what is left is killed."""
        self.pump.stop_all(wait=REPORT_MARGIN)
        with self._lock:
            self._closing = True
        self._spawners.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            attempts = list(self._active.values())
        if attempts:
            kill_leftovers({a.key for a in attempts})
        self.pump.close()
        for attempt in attempts:
            self._revoke(attempt)
        shutil.rmtree(self._state_dir, ignore_errors=True)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._active)

    # ---- one attempt -----------------------------------------------------------------

    def _start(self, attempt: _Attempt) -> None:
        launch = attempt.launch
        assert launch is not None
        try:
            token = self._mint(attempt)
        except Exception as e:  # noqa: BLE001 - the attempt fails, the executor goes on
            log.warning("cannot mint the job token of %s: %s", attempt.key, e)
            self._end(attempt, Outcome(message=f"cannot mint the job token: {type(e).__name__}"))
            return
        run = run_spec(launch, dagger_endpoint=self.dagger_endpoint, token=token, tls_ca=self.tls_ca)
        env = dict(self._host_env)
        # the wrapper's settings (STREAMED_JOB_*) go to it; it does not pass them on to the command
        env.update({k: v for k, v in os.environ.items() if k.startswith("STREAMED_JOB_")})
        env.update(wrapper_environment(run, self.kill_grace, self.fetch, self.save,
                                       str(self._termination_log(attempt.key))))
        with self._lock:
            attempt.started = not attempt.killed
        if not attempt.started:
            self._end(attempt, Outcome(signal="SIGTERM", message="terminated before it started"))
            return
        try:
            self.pump.start(attempt.key, [self.python, "-m", WRAPPER_MODULE], str(self._state_dir), env,
                            on_output=self._on_output, on_exit=self._on_exit)
        except Exception as e:
            log.exception("cannot start the wrapper of %s", attempt.key)
            self._end(attempt, Outcome(message=f"cannot start the job wrapper: {e!r}"))

    def _mint(self, attempt: _Attempt) -> str:
        if self.tokens is None:
            return ""  # a dagger without users: no tokens are checked
        launch = attempt.launch
        assert launch is not None
        attempt.token_id, secret = self.tokens.mint(launch.owner, launch.workflow_id, launch.job, launch.attempt,
                                                    launch.upload_id, launch.spec.timeout)
        return secret

    def _termination_log(self, key: str) -> Path:
        return self._state_dir / (key.replace("/", "_") + ".json")

    def _on_output(self, key: str, stream: int, lines: list[bytes]) -> None:
        """The wrapper's own diagnostics (the job's output goes to dagger over gRPC)."""
        with self._lock:
            attempt = self._active.get(key)
        for line in lines:
            text = line.decode("utf-8", "replace")
            log.log(logging.WARNING if stream == STDERR else logging.INFO, "wrapper %s: %s", key, text)
            if attempt is not None and stream == STDERR and text.strip():
                attempt.stderr.append(text)

    def _on_exit(self, key: str, ended: Ended) -> None:
        with self._lock:
            attempt = self._active.get(key)
            if attempt is None or self._closing:
                return
        with contextlib.suppress(RuntimeError):  # closing
            self._spawners.submit(self._wrapper_ended, attempt, ended)  # reading files, RPCs: off the pump thread

    def _wrapper_ended(self, attempt: _Attempt, ended: Ended) -> None:
        told = self._read_termination_log(attempt.key)
        if told is not None and told[1]:
            self._end(attempt, None)  # the normal end: dagger has the wrapper's report
        elif told is not None:
            outcome = outcome_of(told[0])
            self._end(attempt, outcome if outcome.message else replace(
                outcome, message="the job wrapper could not report its end"))
        else:
            kill_leftovers({attempt.key})  # a wrapper killed outright leaves its command behind
            if ended.signal:
                message = f"the job wrapper was killed by {ended.signal}"
            else:
                message = f"the job wrapper exited with code {ended.exit_code} without reporting"
                why = attempt.stderr[-1].strip() if attempt.stderr else ended.message
                if why:
                    message += f" ({why})"
            self._end(attempt, Outcome(exit_code=None if ended.signal else ended.exit_code,
                                       signal=ended.signal, message=message,
                                       started_at=ended.started_at, finished_at=ended.finished_at))

    def _read_termination_log(self, key: str) -> tuple[Ended, bool] | None:
        """(how the wrapper ended the attempt, whether dagger has its report), if it said."""
        path = self._termination_log(key)
        try:
            return read_termination_message(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            return None
        finally:
            path.unlink(missing_ok=True)

    def _end(self, attempt: _Attempt, outcome: Outcome | None) -> None:
        """Forgets the attempt and revokes its token; with an outcome, reports it (with a
        note in the job's log), for a wrapper that could not."""
        with self._lock:
            self._active.pop(attempt.key, None)
        self._revoke(attempt)
        if outcome is not None:
            report_for_the_wrapper(self.logs, self.report, attempt.workflow_id, attempt.job, attempt.number, outcome)

    def _revoke(self, attempt: _Attempt) -> None:
        if attempt.token_id and self.tokens is not None:
            self.tokens.revoke(attempt.token_id)

