"""Two dagger replicas over one data dir and one etcd: a job's lines, stored by the replica
that runs it, followed live through the other one (woken by the log pulses through etcd:
the followers' own look-again interval is raised far past the test's patience), and the
workflow watched through the other one too."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dagger_svc import logs as logs_module
from donut.dagger.v1 import dagger_pb2 as pb
from donut_cli.stack import Stack
from tests.dagger.conftest import Driver, sh

PATIENCE = 20.0  # seconds a stream may take: below the raised poll interval (30 s), far above any pulse
GATED = ("for i in $(seq 1 25); do echo line $i; sleep 0.05; done; "
         "while [ ! -e release ]; do sleep 0.05; done; "  # holds the attempt open until the test lets it go
         "for i in $(seq 26 50); do echo line $i; sleep 0.05; done")


@pytest.fixture(params=["local", "wrapper"])
def replicas(stack_config: Any, monkeypatch: pytest.MonkeyPatch,
             request: pytest.FixtureRequest) -> Iterator[list[Stack]]:
    """Two replicas whose jobs run in-process (lines stored by the replica) or under a
    wrapper process (lines pushed to the replica over gRPC)."""
    monkeypatch.setattr(logs_module, "FOLLOW_POLL_SECONDS", 30.0)
    stacks: list[Stack] = []
    try:
        for replica in ("a", "b"):
            stacks.append(Stack(dataclasses.replace(stack_config, replica_id=replica, executor=request.param)).start())
        token = stacks[0].client_token()[0]
        for stack in stacks:
            stack.admin_token = token  # type: ignore[attr-defined]  # what Driver signs in with
        yield stacks
    finally:
        for stack in stacks:
            stack.stop()


def test_a_job_followed_and_watched_through_the_replica_that_does_not_run_it(replicas: list[Stack]) -> None:
    drivers = [Driver(stack) for stack in replicas]
    try:
        workflow_id = drivers[0].submit([sh(GATED, "slow")])
        drivers[0].wait_until(workflow_id, lambda w: w.status == pb.WORKFLOW_STATUS_RUNNING)
        owner = next(i for i, stack in enumerate(replicas) if stack.scheduler and stack.scheduler.owns(workflow_id))
        other = drivers[1 - owner]
        statuses: list[int] = []
        watcher = threading.Thread(target=lambda: statuses.extend(
            w.status for w in other.stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id), timeout=PATIENCE)))
        watcher.start()

        followed = other.stub.TailLogs(pb.TailLogsRequest(workflow_id=workflow_id, job="slow", follow=True),
                                       timeout=PATIENCE)
        printed: list[bytes] = []
        for message in followed:
            printed += [line.text for line in message.lines if line.stream == pb.LOG_STREAM_STDOUT]
            if len(printed) >= 25:
                break
        assert printed == [b"line %d" % i for i in range(1, 26)]
        job = other.stub.GetJob(pb.GetJobRequest(workflow_id=workflow_id, name="slow"))
        assert job.status == pb.JOB_STATUS_RUNNING  # held at the gate: these lines came while it ran

        (drivers[owner].workdir(workflow_id) / "release").touch()
        for message in followed:  # the stream ends when the attempt ends (or fails at its deadline)
            printed += [line.text for line in message.lines if line.stream == pb.LOG_STREAM_STDOUT]
        assert printed == [b"line %d" % i for i in range(1, 51)]
        watcher.join()
        assert statuses[-1] == pb.WORKFLOW_STATUS_DONE and pb.WORKFLOW_STATUS_RUNNING in statuses
    finally:
        for driver in drivers:
            driver.close()
