"""Several scheduler replicas over one etcd and one data dir, in this process: what each
announces, how runs spread, reports that reach another replica than the run's owner, and
writes fenced by the writer's claim."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from dagger_svc.core.records import JobRecord, JobStatus, WorkflowId, WorkflowStatus
from dagger_svc.store import Claim, RunChanges, Store
from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut_cli.stack import Stack
from donut_common.errors import Conflict
from donut_common.rpc import channel
from tests.dagger.conftest import Driver, sh
from tests.dagger.test_store import WORKFLOW_ID, create


@pytest.fixture
def replicas(stack_config: Any) -> Iterator[list[Any]]:
    """Two replicas, `a` and `b`, sharing the data dir and etcd; each with an admin driver."""
    started: list[Any] = []
    try:
        for name in ("a", "b"):
            started.append(Stack(dataclasses.replace(stack_config, replica_id=name)).start())
        token = started[0].client_token()[0]
        for each in started:
            each.admin_token = token
            each.driver = Driver(each)
        yield started
    finally:
        for each in reversed(started):
            if hasattr(each, "driver"):
                each.driver.channel.close()
            each.stop()


def owners(stack: Any) -> dict[str, int]:
    return {r.id: r.workflows for r in stack.driver.stub.ListReplicas(pb.ListReplicasRequest()).replicas}


def wait_for(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_every_replica_lists_them_all_and_runs_spread_over_them(replicas: list[Any]) -> None:
    a, b = replicas
    listed = a.driver.stub.ListReplicas(pb.ListReplicasRequest()).replicas
    assert {r.id: r.endpoint for r in listed} == {"a": a.endpoint, "b": b.endpoint}
    assert {r.pid for r in listed} == {os.getpid()}
    assert all(r.lease_expires_at.seconds >= int(time.time()) for r in listed)
    gate = f"{a.config.data_dir}/open"
    ids = [a.driver.submit([sh(f"while [ ! -e {gate} ]; do sleep 0.05; done", "wait")]) for _ in range(16)]
    wait_for(lambda: sum(owners(b).values()) == len(ids))
    spread = owners(b)
    assert spread["a"] > 0 and spread["b"] > 0, spread  # (16 runs all on one of two replicas: 1 in 32,768)
    open(gate, "w").close()
    for workflow_id in ids:
        assert b.driver.wait(workflow_id).status == pb.WORKFLOW_STATUS_DONE


def test_listing_the_replicas_is_for_admins(replicas: list[Any]) -> None:
    a, _ = replicas
    users = a.users
    alice = users.ensure_user("alice", admin=False)
    token = users.mint(alice, "test", ("user",)).secret
    with channel(a.endpoint, token=token) as as_alice, pytest.raises(grpc.RpcError) as refused:
        dagger_pb2_grpc.DaggerStub(as_alice).ListReplicas(pb.ListReplicasRequest())
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_an_attempt_end_reported_to_another_replica_reaches_the_owner(replicas: list[Any]) -> None:
    a, b = replicas
    gate = f"{a.config.data_dir}/never"
    workflow_id = a.driver.submit([sh(f"while [ ! -e {gate} ]; do sleep 0.05; done", "wait"), sh("true", "next")],
                                  {"wait": ["next"]})
    a.driver.wait_until(workflow_id, lambda w: any(j.status == pb.JOB_STATUS_RUNNING for j in w.jobs))
    owner = a if a.scheduler.owns(workflow_id) else b
    other = b if owner is a else a
    assert not other.scheduler.owns(workflow_id)
    other.driver.stub.ReportJobStatus(pb.ReportJobStatusRequest(
        workflow_id=workflow_id, job="wait", attempt=1, exit_code=0))
    done = other.driver.wait(workflow_id)
    assert done.status == pb.WORKFLOW_STATUS_DONE
    assert {j.name: (j.status, j.attempt) for j in done.jobs} == {
        "wait": (pb.JOB_STATUS_SUCCEEDED, 1), "next": (pb.JOB_STATUS_SUCCEEDED, 1)}
    prefix = owner.store.keys.reports(WorkflowId(workflow_id))
    assert owner.store._etcd.get_prefix(prefix) == []  # let go with the run


def test_a_write_under_a_claim_that_ended_is_refused(store: Store) -> None:
    create(store, 2)
    workflow_id = WorkflowId(WORKFLOW_ID)
    first = store.grant_lease(10)
    mine = store.claim_run(workflow_id, "a", first)
    assert mine is not None
    running = JobRecord("j0", status=JobStatus.RUNNING, attempt=1)
    store.save_runs([RunChanges(workflow_id, None, [running], mine.revisions, claim=Claim("a", first.id))])
    assert store.job(workflow_id, "j0") == running
    first.revoke()  # a stalled past its lease: the claim went with it...
    second = store.grant_lease(10)
    theirs = store.claim_run(workflow_id, "b", second)  # ... and b took the run over
    assert theirs is not None and theirs.jobs["j0"] == running
    stale = [JobRecord("j0", status=JobStatus.FAILED, attempt=1), JobRecord("j1", status=JobStatus.RUNNING, attempt=1)]
    revisions = dict(mine.revisions)  # as if a had not seen b's claim: its records are unchanged since
    assert isinstance(store.save_runs([RunChanges(workflow_id, None, stale, revisions,
                                                  claim=Claim("a", first.id))])[workflow_id], Conflict)
    with pytest.raises(Conflict):
        store.save_run(workflow_id, None, stale, revisions, claim=Claim("a", second.id))  # b's lease, not b's claim
    assert store.jobs(workflow_id) == {"j0": running, "j1": JobRecord("j1")}
    assert store.workflow(workflow_id)[0].status is WorkflowStatus.QUEUED
    second.revoke()
