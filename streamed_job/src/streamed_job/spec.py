"""The job spec an executor hands the wrapper (as JSON in an env var or a file), the
environment and key of an attempt, built here for every executor, and the settings its
downloads and saves follow (kept here, light to import, for the CLI's defaults)."""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

SPEC_ENV = "DONUT_JOB_SPEC"            # the spec itself, as JSON
SPEC_FILE_ENV = "DONUT_JOB_SPEC_FILE"  # or a path to it
JOB_KEY_ENV = "DONUT_JOB_KEY"          # <workflow>/<job>/<attempt>: finds an attempt's processes
TOKEN_ENV = "DONUT_JOB_TOKEN"          # the attempt's token, when the spec holds none (a Kubernetes Secret's)
OWN_ENV_PREFIXES = ("DONUT_", "STREAMED_JOB_")  # never passed on from the launcher to a command
MAX_DOWNLOAD_BYTES = 10 * 1024**3
INPUT_DEADLINE = 3600.0
SAVE_DEADLINE = 300.0


def attempt_key(workflow_id: str, job: str, attempt: int) -> str:
    """How an attempt is named, and its processes marked: `<workflow>/<job>/<attempt>`."""
    return f"{workflow_id}/{job}/{attempt}"


def base_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What a launcher passes on to every command it starts: its own environment without
    its own variables (`DONUT_*`: its spec and tokens; `STREAMED_JOB_*`: its settings)."""
    return {k: v for k, v in environ.items() if not k.startswith(OWN_ENV_PREFIXES)}


@dataclass(frozen=True)
class FetchSettings:
    """How `origin` inputs are downloaded."""

    deadline: float = INPUT_DEADLINE
    """Seconds all of an attempt's inputs may take to fetch, together; a job's own timeout,
    when shorter, bounds them instead (it covers the inputs and the command)."""
    max_bytes: int = MAX_DOWNLOAD_BYTES
    """Largest `origin` input accepted."""
    deny_private: bool = False
    """Refuse origins (and redirects) whose address is not a public one: loopback, private,
    link-local (the cloud metadata service), shared, multicast or reserved."""


@dataclass(frozen=True)
class SaveSettings:
    """How `save: true` outputs are kept while cellar (or the storage behind it) is away."""

    deadline: float = SAVE_DEADLINE
    """Seconds the saving keeps retrying, from the first time storage is unavailable; then
    the attempt fails with "storage unavailable"."""
    first_retry: float = 0.5
    """Seconds before the first retry; each next one waits twice as long..."""
    max_retry: float = 15.0
    """...up to this many seconds."""


@dataclass(frozen=True)
class InputFile:
    """A file the job needs before it starts, at `local` (relative to its work dir):
    downloaded from `origin`, copied from the upload's `cache` file, or only checked."""

    local: str
    origin: str = ""
    cache: str = ""


@dataclass(frozen=True)
class OutputFile:
    """A file the job must leave at `local`; with `save`, kept as a result."""

    local: str
    save: bool = False


@dataclass(frozen=True)
class RunSpec:
    workflow_id: str
    job: str
    attempt: int
    cmd: str
    args: tuple[str, ...] = ()
    workflow_dir: str = "."
    workdir_prefix: str = ""
    inputs: tuple[InputFile, ...] = ()
    outputs: tuple[OutputFile, ...] = ()
    timeout: float | None = None
    upload_id: str = ""    # cellar scope of the workflow's uploaded files
    dagger_endpoint: str = ""  # host:port of dagger and cellar
    token: str = ""        # the attempt's own job token
    tls_ca: str = ""       # PEM of the CA that signed the services' certificate; empty: plain gRPC

    @property
    def workdir(self) -> str:
        return posixpath.join(self.workflow_dir, self.workdir_prefix) if self.workdir_prefix else self.workflow_dir

    @property
    def key(self) -> str:
        return attempt_key(self.workflow_id, self.job, self.attempt)

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """The command's environment: `base` (see `base_environment`) plus the attempt's
        `DONUT_*` variables."""
        env = dict(base)
        env.update({
            JOB_KEY_ENV: self.key,
            "DONUT_WORKFLOW_ID": self.workflow_id,
            "DONUT_JOB_NAME": self.job,
            "DONUT_JOB_ATTEMPT": str(self.attempt),
            "DONUT_WORKFLOW_DIR": self.workflow_dir,
        })
        return env

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        """Raises ValueError or TypeError for JSON that is not a spec."""
        data: dict[str, Any] = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("the job spec must be a JSON object")
        data["args"] = tuple(str(arg) for arg in data.get("args", ()))
        data["inputs"] = tuple(InputFile(**item) for item in data.get("inputs", ()))
        data["outputs"] = tuple(OutputFile(**item) for item in data.get("outputs", ()))
        return cls(**data)

    @classmethod
    def from_environment(cls) -> RunSpec:
        """The spec from the environment (or the file it names), its token from
        DONUT_JOB_TOKEN when the spec holds none."""
        if SPEC_ENV in os.environ:
            spec = cls.from_json(os.environ[SPEC_ENV])
        elif SPEC_FILE_ENV in os.environ:
            with open(os.environ[SPEC_FILE_ENV], encoding="utf-8") as f:
                spec = cls.from_json(f.read())
        else:
            raise KeyError(f"no job spec: set {SPEC_ENV} or {SPEC_FILE_ENV}")
        return spec if spec.token else replace(spec, token=os.environ.get(TOKEN_ENV, ""))
