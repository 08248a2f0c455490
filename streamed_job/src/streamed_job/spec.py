"""The job spec an executor hands the wrapper (as JSON in an env var or a file)."""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

SPEC_ENV = "DONUT_JOB_SPEC"            # the spec itself, as JSON
SPEC_FILE_ENV = "DONUT_JOB_SPEC_FILE"  # or a path to it


@dataclass(frozen=True)
class RunSpec:
    workflow_id: str
    job: str
    attempt: int
    cmd: str
    args: tuple = ()
    workflow_dir: str = "."
    workdir_prefix: str = ""
    inputs: tuple = ()     # dicts: {local, origin?, cache?}
    outputs: tuple = ()    # dicts: {local, save?}
    timeout: Optional[float] = None
    upload_id: str = ""    # cellar scope of the workflow's uploaded files
    dagger_endpoint: str = ""
    cellar_endpoint: str = ""
    token: str = ""
    tls_ca: str = ""       # PEM of the CA that signed the services' certificate; empty: plain gRPC
    env: dict = field(default_factory=dict)

    @property
    def workdir(self) -> str:
        return posixpath.join(self.workflow_dir, self.workdir_prefix) if self.workdir_prefix else self.workflow_dir

    @property
    def key(self) -> str:
        return f"{self.workflow_id}/{self.job}/{self.attempt}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "RunSpec":
        data: dict[str, Any] = json.loads(text)
        data["args"] = tuple(data.get("args", ()))
        data["inputs"] = tuple(data.get("inputs", ()))
        data["outputs"] = tuple(data.get("outputs", ()))
        return cls(**data)

    @classmethod
    def from_environment(cls) -> "RunSpec":
        if SPEC_ENV in os.environ:
            return cls.from_json(os.environ[SPEC_ENV])
        if SPEC_FILE_ENV in os.environ:
            with open(os.environ[SPEC_FILE_ENV], encoding="utf-8") as f:
                return cls.from_json(f.read())
        raise KeyError(f"no job spec: set {SPEC_ENV} or {SPEC_FILE_ENV}")
