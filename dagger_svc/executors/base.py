"""The one interface every executor implements, and what it is told to launch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dagger_svc.core.definition import JobSpec
from dagger_svc.core.records import Outcome
from streamed_job.spec import RunSpec


@dataclass(frozen=True)
class Launch:
    workflow_id: str
    job: str
    attempt: int
    spec: JobSpec
    workflow_dir: str
    upload_id: str = ""
    owner: str = ""  # the user the workflow belongs to (its job tokens act for them)


def workflow_dir(data_root: Path, workflow_id: str) -> Path:
    """Where a workflow's jobs run and keep their files: `<data root>/<workflow id>`."""
    return data_root / workflow_id


def attempt_key(workflow_id: str, job: str, attempt: int) -> str:
    """How executors name an attempt (and mark its processes): `<workflow>/<job>/<attempt>`,
    as `RunSpec.key`."""
    return f"{workflow_id}/{job}/{attempt}"


def run_spec(launch: Launch, dagger_endpoint: str = "", token: str = "", tls_ca: str = "") -> RunSpec:
    """The wrapper's view of a launch, with how it reaches the services when it runs out
    of process."""
    spec = launch.spec
    return RunSpec(
        workflow_id=launch.workflow_id, job=launch.job, attempt=launch.attempt, cmd=spec.cmd, args=spec.args,
        workflow_dir=launch.workflow_dir, workdir_prefix=spec.workdir_prefix,
        inputs=tuple(i.to_dict() for i in spec.inputs), outputs=tuple(o.to_dict() for o in spec.outputs),
        timeout=spec.timeout, upload_id=launch.upload_id,
        dagger_endpoint=dagger_endpoint, token=token, tls_ca=tls_ca,
    )


Report = Callable[[str, str, int, Outcome], None]
"""(workflow id, job, attempt, outcome): how an executor tells the scheduler an attempt ended."""


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
