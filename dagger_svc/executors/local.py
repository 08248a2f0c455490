"""The embedded default's executor: each job attempt is a process on this host.

The job machinery (inputs, output streaming, outputs) is the `streamed_job` library run
in-process, so no Python interpreter starts per job: only the user's command is spawned.
The image is recorded but not used.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from dagger_svc.core.records import Outcome
from dagger_svc.executors.base import Launch, Report, attempt_key, run_spec
from dagger_svc.logs import STDERR, STDOUT, SYSTEM, LogStore
from donut_common.auth import JobTokens
from streamed_job.cellar import CellarClient
from streamed_job.files import FileProblem, FetchCache, outputs_to_save, prepare_inputs
from streamed_job.outcome import EXIT_INPUT_FAILED, EXIT_OUTPUT_FAILED, Ended
from streamed_job.pump import ProcessPump
from streamed_job.spec import RunSpec

log = logging.getLogger(__name__)

JOB_KEY_ENV = "DONUT_JOB_KEY"  # <workflow>/<job>/<attempt>: lets a restarted executor find leftovers

Cellar = Callable[[str], CellarClient]  # a cellar client acting with the given token


class LocalExecutor:
    def __init__(self, logs: LogStore, cellar: Cellar | None = None,
                 tokens: JobTokens | None = None, kill_grace: float = 10.0, spawners: int = 2) -> None:
        self.logs = logs
        self.report: Report = _unstarted
        self.cellar = cellar
        self.tokens = tokens
        self._owners: dict[str, str] = {}                    # attempt key -> workflow owner
        self._job_tokens: dict[str, tuple[str, str]] = {}    # attempt key -> (token id, secret)
        self.pump = ProcessPump(kill_grace=kill_grace)
        self._spawners = ThreadPoolExecutor(max_workers=spawners, thread_name_prefix="local-spawn")
        self._slow = ThreadPoolExecutor(max_workers=8, thread_name_prefix="local-files")
        self._active: dict[str, RunSpec] = {}
        self._lock = threading.Lock()
        self._killed: set[str] = set()  # killed while still fetching inputs
        self._spawning = 0  # launches being started or waiting for a spawner thread
        self._base_env = {k: v for k, v in os.environ.items() if not k.startswith("DONUT_")}

    def start(self, report: Report) -> None:
        self.report = report

    def launch(self, launch: Launch) -> None:
        spec = launch.spec
        run = run_spec(launch)
        fetches = any(i.origin or i.cache for i in spec.inputs)
        with self._lock:
            if run.key in self._active:
                return  # already launched
            self._active[run.key] = run
            self._owners[run.key] = launch.owner
            inline = not fetches and self._spawning == 0
            if not fetches:
                self._spawning += 1
        if fetches:
            self._slow.submit(self._start, run)
        elif inline:
            self._spawn(run)  # one launch at a time (a chain): no thread hop
        else:
            self._spawners.submit(self._spawn, run)

    def _spawn(self, run: RunSpec) -> None:
        try:
            self._start(run)
        finally:
            with self._lock:
                self._spawning -= 1

    def _start(self, run: RunSpec) -> None:
        if run.key in self._killed:
            self._finish(run, Ended(None, "SIGTERM", phase="command", message="terminated before it started"))
            return
        try:
            prepare_inputs(run, self._cache_fetcher(run), lambda text: self._note(run, text))
        except (FileProblem, OSError) as e:
            self._finish(run, Ended(EXIT_INPUT_FAILED, phase="inputs", message=str(e)))
            return
        except Exception as e:  # a bug must still end the attempt, not leave it running for ever
            log.exception("preparing the inputs of %s failed", run.key)
            self._finish(run, Ended(EXIT_INPUT_FAILED, phase="inputs", message=f"cannot prepare the inputs: {e!r}"))
            return
        env = {
            **self._base_env,
            JOB_KEY_ENV: run.key,
            "DONUT_WORKFLOW_ID": run.workflow_id,
            "DONUT_JOB_NAME": run.job,
            "DONUT_JOB_ATTEMPT": str(run.attempt),
            "DONUT_WORKFLOW_DIR": run.workflow_dir,
        }
        self.pump.start(run.key, [run.cmd, *run.args], run.workdir, env,
                        on_output=self._on_output, on_exit=self._on_exit, timeout=run.timeout)

    def _cache_fetcher(self, run: RunSpec) -> FetchCache | None:
        if self.cellar is None:
            return None
        return lambda path, dest: self._job_cellar(run).get("cache", run.upload_id, path, dest)

    def _job_cellar(self, run: RunSpec) -> CellarClient:
        """A cellar client acting with the attempt's own job token (minted on first use:
        jobs that touch no files cost no token)."""
        assert self.cellar is not None
        if self.tokens is None:
            raise FileProblem("no job token can be minted (no users service)")
        with self._lock:
            minted = self._job_tokens.get(run.key)
        if minted is None:
            minted = self.tokens.mint(self._owners.get(run.key, ""), run.workflow_id, run.job, run.upload_id,
                                      run.timeout)
            with self._lock:
                self._job_tokens[run.key] = minted
        return self.cellar(minted[1])

    def _on_output(self, key: str, stream: int, lines: list[bytes]) -> None:
        run = self._active.get(key)
        if run is not None:
            tag = STDOUT if stream == 1 else STDERR
            self.logs.append(run.workflow_id, run.job, run.attempt, [(tag, line) for line in lines])

    def _on_exit(self, key: str, ended: Ended) -> None:
        run = self._active.get(key)
        if run is None:
            return
        if ended.succeeded and run.outputs:
            self._slow.submit(self._save_outputs, run, ended)
        else:
            self._finish(run, ended)

    def _save_outputs(self, run: RunSpec, ended: Ended) -> None:
        try:
            saved = outputs_to_save(run)
            if saved and self.cellar is not None:
                cellar = self._job_cellar(run)
                for relative, path in saved:
                    cellar.put("result", run.workflow_id, relative, path, job=run.job)
                    self._note(run, f"saved {relative} ({path.stat().st_size} bytes)")
        except Exception as e:  # noqa: BLE001 - any failure to save fails the attempt
            ended = Ended(EXIT_OUTPUT_FAILED, phase="outputs", message=str(e) if isinstance(e, FileProblem)
                          else f"cannot save outputs: {e}", started_at=ended.started_at,
                          finished_at=ended.finished_at)
        self._finish(run, ended)

    def _note(self, run: RunSpec, text: str) -> None:
        self.logs.append(run.workflow_id, run.job, run.attempt, [(SYSTEM, text.encode())])

    def _finish(self, run: RunSpec, ended: Ended) -> None:
        if ended.message and not ended.succeeded:
            self._note(run, ended.message)
        with self._lock:
            self._active.pop(run.key, None)
            self._killed.discard(run.key)
            self._owners.pop(run.key, None)
            minted = self._job_tokens.pop(run.key, None)
        if minted is not None and self.tokens is not None:
            self.tokens.revoke(minted[0])
        self.report(run.workflow_id, run.job, run.attempt, Outcome(
            exit_code=ended.exit_code, signal=ended.signal, message=ended.message,
            started_at=ended.started_at, finished_at=ended.finished_at,
        ))
        self.logs.end(run.workflow_id, run.job, run.attempt)

    def kill(self, workflow_id: str, job: str, attempt: int) -> None:
        key = attempt_key(workflow_id, job, attempt)
        self._killed.add(key)
        self.pump.kill(key)

    def lost(self, workflow_id: str, job: str, attempt: int) -> bool:
        with self._lock:
            if attempt_key(workflow_id, job, attempt) in self._active:
                return False
        return end_lost_attempt(self.logs, workflow_id, job, attempt)

    def close(self) -> None:
        self._spawners.shutdown(wait=True, cancel_futures=True)
        self._slow.shutdown(wait=True, cancel_futures=True)
        self.pump.close()


def _unstarted(workflow_id: str, job: str, attempt: int, outcome: Outcome) -> None:
    raise RuntimeError("the executor was not started")


def end_lost_attempt(logs: LogStore, workflow_id: str, job: str, attempt: int) -> bool:
    """An attempt no executor here has (an earlier incarnation started it): whatever is left
    of it must not live on unwatched, and its log is over. Always True (it is lost)."""
    kill_leftovers({attempt_key(workflow_id, job, attempt)})
    logs.end(workflow_id, job, attempt)
    return True


def job_processes(keys: set[str]) -> list[int]:
    """PIDs of live processes whose environment carries one of the job keys."""
    found = []
    needles = {f"{JOB_KEY_ENV}={key}".encode() for key in keys}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                environ = set(f.read().split(b"\0"))
        except OSError:
            continue
        if environ & needles:
            found.append(int(entry.name))
    return found


def kill_leftovers(keys: set[str]) -> int:
    """SIGKILLs the process groups of processes whose environment carries one of the
    job keys: what a previous incarnation of this executor left running."""
    killed = 0
    for pid in job_processes(keys):
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
            killed += 1
        except (ProcessLookupError, PermissionError):
            pass
    return killed
