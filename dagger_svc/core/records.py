"""The state records of workflows and jobs, as kept in etcd (one small key per job).

Frozen dataclasses with `with_*`-style transitions (via dataclasses.replace) and compact
conversion to the JSON documents the store keeps (the TypedDicts below); no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NewType, TypedDict, cast

WorkflowId = NewType("WorkflowId", str)
"""A workflow's id (a lowercase UUID), once checked."""


class JobStatus(enum.StrEnum):
    WAITING = "waiting"        # some parent has not succeeded yet
    QUEUED = "queued"          # ready, waiting for a parallelism slot (or a retry backoff)
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"        # downstream of a failure
    TERMINATED = "terminated"  # cancelled
    DEAD = "dead"              # its executor lost it

    @property
    def finished(self) -> bool:
        return self in FINISHED_JOB_STATUSES


FINISHED_JOB_STATUSES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SKIPPED, JobStatus.TERMINATED, JobStatus.DEAD}
)
RETRYABLE_JOB_STATUSES = frozenset(
    {JobStatus.FAILED, JobStatus.SKIPPED, JobStatus.TERMINATED, JobStatus.DEAD}
)


class WorkflowStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    TERMINATED = "terminated"
    DEAD = "dead"

    @property
    def finished(self) -> bool:
        return self not in (WorkflowStatus.QUEUED, WorkflowStatus.RUNNING)


@dataclass(frozen=True)
class Outcome:
    """How one attempt of a job ended, as the executor or the wrapper saw it."""

    exit_code: int | None = None
    signal: str = ""
    message: str = ""
    lost: bool = False  # the executor lost the attempt (pod vanished, scheduler restarted)
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and not self.signal and not self.lost


class AttemptDoc(TypedDict, total=False):
    """An attempt as kept: fields at their defaults are left out."""

    number: int
    status: str
    exit_code: int
    signal: str
    message: str
    started_at: float
    finished_at: float


class JobDoc(TypedDict, total=False):
    """A job record as kept (`<prefix>jobs/<workflow>/<job>`): defaults left out."""

    name: str
    status: str
    attempt: int
    round_start: int
    exit_code: int
    signal: str
    message: str
    started_at: float
    finished_at: float
    retry_at: float
    attempts: list[AttemptDoc]


class WorkflowDoc(TypedDict, total=False):
    """A workflow record as kept (`<prefix>workflows/<workflow>`): defaults left out."""

    id: str
    name: str
    owner: str
    status: str
    parallelism: int
    fail_fast: bool
    message: str
    created_at: float
    started_at: float
    finished_at: float
    upload_id: str
    job_total: int
    counts: dict[str, int]
    labels: dict[str, str]
    archived_at: float
    archive_sha256: str


@dataclass(frozen=True)
class AttemptRecord:
    number: int
    status: JobStatus
    exit_code: int | None = None
    signal: str = ""
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None

    def to_dict(self) -> AttemptDoc:
        return cast(AttemptDoc, _compact(dict(self.__dict__), status=self.status.value))

    @classmethod
    def from_dict(cls, d: AttemptDoc) -> AttemptRecord:
        return cls(number=d["number"], status=JobStatus(d["status"]), exit_code=d.get("exit_code"),
                   signal=d.get("signal", ""), message=d.get("message", ""), started_at=d.get("started_at"),
                   finished_at=d.get("finished_at"))


@dataclass(frozen=True)
class JobRecord:
    """A job's mutable state. The current attempt's fields are at the top; ended
    attempts are kept in `attempts`."""

    name: str
    status: JobStatus = JobStatus.WAITING
    attempt: int = 0          # the current (or last) attempt number; 0 before the first
    round_start: int = 0      # attempts before this round of retries (workflow retry, lost runs)
    exit_code: int | None = None
    signal: str = ""
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    retry_at: float | None = None
    attempts: tuple[AttemptRecord, ...] = ()

    def attempt_over(self, number: int) -> bool:
        """Attempt `number` (at most the current one) has ended: its log is complete."""
        return self.attempt > number or self.status is not JobStatus.RUNNING

    def to_dict(self) -> JobDoc:
        return cast(JobDoc, _compact(dict(self.__dict__), status=self.status.value,
                                     attempts=[a.to_dict() for a in self.attempts]))

    @classmethod
    def from_dict(cls, d: JobDoc) -> JobRecord:
        return cls(name=d["name"], status=JobStatus(d.get("status", "waiting")), attempt=d.get("attempt", 0),
                   round_start=d.get("round_start", 0), exit_code=d.get("exit_code"), signal=d.get("signal", ""),
                   message=d.get("message", ""), started_at=d.get("started_at"), finished_at=d.get("finished_at"),
                   retry_at=d.get("retry_at"),
                   attempts=tuple(AttemptRecord.from_dict(a) for a in d.get("attempts", ())))


@dataclass(frozen=True)
class WorkflowRecord:
    id: WorkflowId
    name: str
    owner: str = ""
    status: WorkflowStatus = WorkflowStatus.QUEUED
    parallelism: int = 1
    fail_fast: bool = False
    message: str = ""
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    upload_id: str = ""
    job_total: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)  # job status value -> count
    labels: Mapping[str, str] = field(default_factory=dict)
    archived_at: float | None = None  # when its directory was last archived (for the end at finished_at, if later)
    archive_sha256: str = ""

    @property
    def archived(self) -> bool:
        """Its directory was archived since the workflow last ended."""
        return (self.status.finished and self.archived_at is not None
                and self.archived_at >= (self.finished_at or 0))

    def to_dict(self) -> WorkflowDoc:
        return cast(WorkflowDoc, _compact(dict(self.__dict__), status=self.status.value, counts=dict(self.counts),
                                          labels=dict(self.labels)))

    @classmethod
    def from_dict(cls, d: WorkflowDoc) -> WorkflowRecord:
        return cls(id=WorkflowId(d["id"]), name=d["name"], owner=d.get("owner", ""),
                   status=WorkflowStatus(d["status"]), parallelism=d.get("parallelism", 1),
                   fail_fast=d.get("fail_fast", False), message=d.get("message", ""),
                   created_at=d.get("created_at"), started_at=d.get("started_at"), finished_at=d.get("finished_at"),
                   upload_id=d.get("upload_id", ""), job_total=d.get("job_total", 0), counts=d.get("counts", {}),
                   labels=d.get("labels", {}), archived_at=d.get("archived_at"),
                   archive_sha256=d.get("archive_sha256", ""))


def _compact(d: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """The dict without empty/default values, to keep etcd values small."""
    d.update(overrides)
    return {k: v for k, v in d.items() if v not in (None, "", (), [], {}) and v is not False}
