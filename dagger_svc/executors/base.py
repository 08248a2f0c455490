"""The one interface every executor implements, what it is told to launch, and how it
tells what became of an attempt."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from dagger_svc.core.definition import JobSpec
from dagger_svc.core.records import Outcome
from streamed_job.attempt import SYSTEM
from streamed_job.outcome import Ended
from streamed_job.spec import (
    JOB_KEY_ENV,
    SPEC_ENV,
    FetchSettings,
    InputFile,
    OutputFile,
    RunSpec,
    SaveSettings,
    attempt_key,
)


@dataclass(frozen=True)
class Launch:
    workflow_id: str
    job: str
    attempt: int
    spec: JobSpec
    workflow_dir: str
    upload_id: str = ""
    owner: str = ""  # the user the workflow belongs to (its job tokens act for them)


HOST_ENV: Final = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM")
"""What a job started on the stack's own host gets of the stack's environment (and LC_*)."""


def host_environment(environ: Mapping[str, str], allow: Iterable[str] = ()) -> dict[str, str]:
    """The part of the stack's environment that jobs run on its host get: HOST_ENV, the
    locale and the names in `allow`; never the rest (credentials the server holds)."""
    names = {*HOST_ENV, *allow}
    return {k: v for k, v in environ.items() if k in names or k.startswith("LC_")}


def workflow_dir(data_root: Path, workflow_id: str) -> Path:
    """Where a workflow's jobs run and keep their files: `<data root>/<workflow id>`."""
    return data_root / workflow_id


def remove_tree(path: Path) -> None:
    """Removes the directory (a workflow's) and all in it, even what its jobs made read-only
    (never following a link inside: it removes the link)."""
    def writable_and_again(function: Callable[..., object], name: str, _: object) -> None:
        parent = os.path.dirname(name)
        os.chmod(parent, os.stat(parent).st_mode | stat.S_IRWXU)
        function(name)

    if path.exists():
        shutil.rmtree(path, onerror=writable_and_again)


def run_spec(launch: Launch, dagger_endpoint: str = "", token: str = "", tls_ca: str = "") -> RunSpec:
    """The wrapper's view of a launch, with how it reaches the services when it runs out
    of process."""
    spec = launch.spec
    return RunSpec(
        workflow_id=launch.workflow_id, job=launch.job, attempt=launch.attempt, cmd=spec.cmd, args=spec.args,
        workflow_dir=launch.workflow_dir, workdir_prefix=spec.workdir_prefix,
        inputs=tuple(InputFile(local=i.local, origin=i.origin, cache=i.cache) for i in spec.inputs),
        outputs=tuple(OutputFile(local=o.local, save=o.save) for o in spec.outputs),
        timeout=spec.timeout, upload_id=launch.upload_id,
        dagger_endpoint=dagger_endpoint, token=token, tls_ca=tls_ca,
    )


def wrapper_environment(run: RunSpec, kill_grace: float, fetch: FetchSettings, save: SaveSettings,
                        termination_log: str) -> dict[str, str]:
    """What the wrapper of an attempt is told in its environment: its spec, its key (which
    finds its processes) and its settings (which it does not pass on to the command)."""
    return {
        SPEC_ENV: run.to_json(),
        JOB_KEY_ENV: attempt_key(run.workflow_id, run.job, run.attempt),
        "STREAMED_JOB_KILL_GRACE": str(kill_grace),
        "STREAMED_JOB_INPUT_DEADLINE": str(fetch.deadline),
        "STREAMED_JOB_MAX_DOWNLOAD_BYTES": str(fetch.max_bytes),
        "STREAMED_JOB_DENY_PRIVATE_ORIGINS": "1" if fetch.deny_private else "0",
        "STREAMED_JOB_SAVE_DEADLINE": str(save.deadline),
        "STREAMED_JOB_TERMINATION_LOG": termination_log,
    }


def outcome_of(ended: Ended) -> Outcome:
    """How an attempt ended, as the wrapper's machinery tells it, for the state machine."""
    return Outcome(exit_code=ended.exit_code, signal=ended.signal, message=ended.message,
                   started_at=ended.started_at, finished_at=ended.finished_at)


Report = Callable[[str, str, int, Outcome], None]
"""(workflow id, job, attempt, outcome): how an executor tells the scheduler an attempt ended."""


def report_for_the_wrapper(logs: AttemptLogs, report: Report, workflow_id: str, job: str, attempt: int,
                           outcome: Outcome) -> None:
    """Tells how an attempt ended when its wrapper could not: a note in its log (why), the
    end of its log, and the report to the scheduler."""
    if outcome.message:
        logs.append(workflow_id, job, attempt, [(SYSTEM, outcome.message.encode())])
    logs.end(workflow_id, job, attempt)
    report(workflow_id, job, attempt, outcome)


class AttemptLogs(Protocol):
    """Where executors write attempts' lines (dagger's log store)."""

    def append(self, workflow_id: str, job: str, attempt: int, lines: list[tuple[int, bytes]],
               sequence: int | None = None) -> int:
        """Stores (stream, text) lines of an attempt."""

    def end(self, workflow_id: str, job: str, attempt: int) -> None:
        """The attempt wrote its last line."""


class Executor(Protocol):
    def start(self, report: Report) -> None:
        """From now on, tells how attempts end through `report` (the scheduler's)."""

    def launch(self, launch: Launch) -> None:
        """Starts the attempt without waiting for it to be up; its end is reported through
        the Report callback (always, including when it could not start). Launching the
        same workflow, job and attempt twice must not run it twice."""

    def kill(self, workflow_id: str, job: str, attempt: int) -> None:
        """Stops the attempt (SIGTERM, then SIGKILL after a grace period); the end is reported."""

    def lost(self, workflow_id: str, job: str, attempt: int) -> bool:
        """On resume: True when the attempt is gone (it will be run again); False when the
        executor still has it and will report its end."""

    def close(self) -> None:
        """Stops every attempt this executor runs."""
