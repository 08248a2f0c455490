"""Helpers for driving a real stack (etcd, gRPC server, scheduler, local executor), and the
scheduler alone over a real etcd with a recording executor."""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dagger_svc.core.records import WorkflowRecord
from dagger_svc.logs import LogStore
from dagger_svc.scheduler import Scheduler
from dagger_svc.service import DaggerConfig, DaggerService
from dagger_svc.store import Store
from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut_common.auth import Principal
from donut_common.rpc import channel
from tests.dagger.fakes import RecordingExecutor


def sh(script: str, name: str, **extra: Any) -> dict[str, Any]:
    """A job that runs a shell script."""
    return {"name": name, "image": "busybox", "cmd": "/bin/sh", "args": ["-c", script], **extra}


class Driver:
    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.channel = channel(stack.endpoint, token=stack.admin_token)
        self.stub = dagger_pb2_grpc.DaggerStub(self.channel)

    def submit(self, jobs: list[dict[str, Any]], neighbors: dict[str, list[str]] | None = None,
               parallelism: int = 4, fail_fast: bool = False) -> str:
        definition = json.dumps({"jobs": jobs, **({"neighbors": neighbors} if neighbors else {})})
        request = pb.CreateWorkflowRequest(definition=definition.encode(), parallelism=parallelism, fail_fast=fail_fast)
        return self.stub.CreateWorkflow(request).id

    def wait(self, workflow_id: str, timeout: float = 60) -> pb.Workflow:
        for w in self.stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id), timeout=timeout):
            if w.status not in (pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING):
                break
        return self.stub.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id, include_jobs=True))

    def wait_until(self, workflow_id: str, predicate: Callable[[pb.Workflow], bool],
                   timeout: float = 30) -> pb.Workflow:
        for w in self.stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id, include_jobs=True), timeout=timeout):
            if predicate(w):
                return w
        raise AssertionError("the workflow ended before the condition held")

    def jobs(self, workflow_id: str) -> dict[str, pb.Job]:
        return {j.name: j for j in self.stub.ListJobs(pb.ListJobsRequest(workflow_id=workflow_id)).jobs}

    def workdir(self, workflow_id: str) -> Path:
        return Path(self.stack.config.data_dir) / "workflows" / workflow_id

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def driver(stack: Any) -> Any:
    d = Driver(stack)
    yield d
    d.close()


def job_processes(workflow_id: str) -> list[int]:
    """PIDs of live processes started for the workflow's jobs (found by their environment)."""
    pids = []
    needle = f"DONUT_JOB_KEY={workflow_id}/".encode()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    if any(var.startswith(needle) for var in f.read().split(b"\0")):
                        with open(f"/proc/{entry.name}/stat", "rb") as s:
                            if s.read().split(b") ")[-1][:1] != b"Z":
                                pids.append(int(entry.name))
            except OSError:
                pass
    return pids


MARKED = 'echo "$DONUT_JOB_NAME $DONUT_JOB_ATTEMPT" >> marks; echo "ran $DONUT_JOB_ATTEMPT"; sleep 0.05'


def submit_marked_load(stub: Any, count: int = 8) -> list[str]:
    """Workflows of 12 short jobs (6 pairs) that each leave a mark: '<job> <attempt>'."""
    jobs = [sh(MARKED, f"j{i}") for i in range(12)]
    neighbors = {f"j{i}": [f"j{i + 1}"] for i in range(0, 11, 2)}
    definition = json.dumps({"jobs": jobs, "neighbors": neighbors}).encode()
    return [stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=definition, parallelism=3)).id
            for _ in range(count)]


def marks_so_far(root: Path, workflows: list[str]) -> int:
    return sum(len((root / w / "marks").read_text().splitlines()) for w in workflows if (root / w / "marks").exists())


def assert_every_attempt_ran_once(stub: Any, root: Path, workflows: list[str], timeout: float = 120) -> None:
    """Each workflow ends done; no (job, attempt) ran twice (by the marks its runs left); the
    recorded attempt is the one that ran last; every attempt's log holds its line once."""
    for workflow_id in workflows:
        for w in stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id), timeout=timeout):
            if w.status not in (pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING):
                break
        assert w.status == pb.WORKFLOW_STATUS_DONE, w.message
        marks = (root / workflow_id / "marks").read_text().splitlines()
        assert len(marks) == len(set(marks)), f"an attempt ran twice: {sorted(marks)}"
        found = {j.name: j for j in stub.ListJobs(pb.ListJobsRequest(workflow_id=workflow_id)).jobs}
        assert {m.split()[0] for m in marks} == set(found)
        for name, job in found.items():
            assert f"{name} {job.attempt}" in marks  # the recorded attempt is the one that ran last
            for attempt in range(1, job.attempt + 1):
                lines = [line.text for m in stub.TailLogs(pb.TailLogsRequest(
                    workflow_id=workflow_id, job=name, attempt=attempt)) for line in m.lines
                    if line.stream == pb.LOG_STREAM_STDOUT]
                assert lines in ([], [b"ran %d" % attempt]), (name, attempt, lines)


def status_name(value: int) -> str:
    return pb.JobStatus.Name(value).removeprefix("JOB_STATUS_").lower()


def rpc_code(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as e:
        return e.code()  # type: ignore[attr-defined,no-any-return]
    raise AssertionError("the call succeeded")


# ---- the scheduler over a real etcd, with a recording executor: no processes ----------------

ADMIN = Principal(user_id="admin", login="admin", admin=True, scopes=("user", "admin"))


def job(name: str, **extra: Any) -> dict[str, Any]:
    """A job definition (nothing runs it: the recording executor decides how it ends)."""
    return {"name": name, "image": "busybox", "cmd": "true", "args": [], **extra}


class Scheduling:
    """A scheduler over a real etcd store with a RecordingExecutor, and the dagger service
    in front of it for submitting, retrying and cancelling."""

    def __init__(self, store: Store, root: Path, executor: RecordingExecutor) -> None:
        self.store = store
        self.root = root
        self.executor = executor
        self.logs = LogStore(root / "logs")
        self.scheduler = self._scheduler()
        self.service = DaggerService(self.store, self.logs, self.scheduler, DaggerConfig(root / "workflows"))

    def _scheduler(self) -> Scheduler:
        return Scheduler(self.store, self.executor, self.root / "workflows", scheduler_id="test-scheduler",
                         lease_ttl=3).start()

    def restart(self, executor: RecordingExecutor | None = None) -> None:
        """Stops the scheduler and starts another with the same id, which takes its runs
        back at once (this waits until it has)."""
        owned = [w.id for w in self.store.workflows() if self.scheduler.owns(w.id)]
        self.scheduler.stop()
        if executor is not None:
            self.executor = executor
        self.scheduler = self._scheduler()
        self.service.scheduler = self.scheduler
        self.executor.wait_for(lambda: all(self.scheduler.owns(w) for w in owned), "the runs taken back")

    def submit(self, jobs: list[dict[str, Any]], neighbors: dict[str, list[str]] | None = None,
               parallelism: int = 4, fail_fast: bool = False) -> str:
        definition = json.dumps({"jobs": jobs, **({"neighbors": neighbors} if neighbors else {})})
        return self.service.create(ADMIN, definition.encode(), parallelism=parallelism, fail_fast=fail_fast).id

    def wait(self, workflow_id: str, timeout: float = 20.0) -> WorkflowRecord:
        """The workflow once it has ended."""
        deadline = time.monotonic() + timeout
        states = self.service.watch(ADMIN, workflow_id, is_active=lambda: time.monotonic() < deadline)
        last = deque(states, maxlen=1).pop()
        assert last is not None and last.status.finished, f"workflow {workflow_id} did not end in {timeout}s"
        return last

    def statuses(self, workflow_id: str) -> dict[str, str]:
        return {name: record.status.value for name, record in self.store.jobs(workflow_id).items()}

    def close(self) -> None:
        self.scheduler.stop()
        self.logs.close()


@pytest.fixture
def scheduling(store: Store, tmp_path: Path) -> Iterator[Scheduling]:
    running = Scheduling(store, tmp_path, RecordingExecutor())
    yield running
    running.close()
