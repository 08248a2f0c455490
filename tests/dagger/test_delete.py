"""Deleting workflows over gRPC on a real stack: nothing of the workflow is left (etcd keys,
cellar objects, work directory, log files), nothing of another's is touched; running ones
are refused unless forced; a deletion cut short is finished; the retention sweep deletes
only workflows that ended long enough ago."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dagger_svc.core.records import WorkflowId, WorkflowRecord, WorkflowStatus
from dagger_svc.deletion import DAY, WORKFLOW_FILE_KINDS, Deleter, Retention, RetentionSettings
from dagger_svc.logs import LogStore
from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut_cli.stack import Stack
from donut_common.errors import Unavailable
from donut_common.rpc import channel
from streamed_job.cellar import CellarClient
from tests.dagger.conftest import job_processes, sh


class User:
    """A non-admin user of the stack with their own dagger and cellar clients."""

    def __init__(self, stack: Any, login: str) -> None:
        account = stack.users.ensure_user(login, admin=False)
        self.id = account.id
        self.data = Path(stack.config.data_dir)
        self.channel = channel(stack.endpoint, token=stack.users.mint(account, "tests", ("user",)).secret)
        self.stub = dagger_pb2_grpc.DaggerStub(self.channel)

    def submit(self, *jobs: dict[str, Any]) -> str:
        definition = json.dumps({"jobs": list(jobs)}).encode()
        return str(self.stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=definition)).id)

    def wait(self, workflow_id: str) -> pb.Workflow:
        for w in self.stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id), timeout=60):
            if w.status not in (pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING):
                return w
        raise AssertionError("the watch ended before the workflow did")

    def delete(self, workflow_id: str, force: bool = False) -> None:
        self.stub.DeleteWorkflow(pb.DeleteWorkflowRequest(id=workflow_id, force=force), timeout=60)


@pytest.fixture
def alice(stack: Any) -> Iterator[User]:
    user = User(stack, "alice")
    yield user
    user.channel.close()


@pytest.fixture
def bob(stack: Any) -> Iterator[User]:
    user = User(stack, "bob")
    yield user
    user.channel.close()


@pytest.fixture
def admin_cellar(stack: Any) -> Iterator[CellarClient]:
    made = channel(stack.endpoint, token=stack.admin_token)
    yield CellarClient(made)
    made.close()


SAVES = sh("echo result > out.txt; echo logged", "saves", outputs=[{"local": "out.txt", "save": True}])


def etcd_keys(stack: Any) -> dict[str, bytes]:
    """Every key of the stack with its value (a token's and a replica's aside: using the
    token changes it, a replica's announce says when it started)."""
    changing = (stack.store.keys.prefix + "tokens/", stack.store.keys.schedulers)
    return {kv.key: b"" if kv.key.startswith(changing) else kv.value
            for kv in stack.store._etcd.get_prefix(stack.store.keys.prefix)}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def of(workflow_id: str, names: Any) -> set[str]:
    return {name for name in names if workflow_id in name}


def finished_workflow(alice: User, admin_cellar: CellarClient) -> str:
    """A done workflow with a saved result, an archive, a work directory and a log."""
    workflow_id = alice.submit(SAVES)
    assert alice.wait(workflow_id).status == pb.WORKFLOW_STATUS_DONE
    _wait_for(lambda: list((alice.data / "logs" / workflow_id).glob("*.copied")))  # its log copied (all it makes)
    with tempfile.TemporaryFile() as archive:
        archive.write(b"archived")
        archive.seek(0)
        admin_cellar.put("archive", workflow_id, "workflow.tar.gz", archive)
    return workflow_id


def test_delete_leaves_nothing_of_the_workflow_and_all_of_another(stack: Any, alice: User,
                                                                  admin_cellar: CellarClient) -> None:
    data = Path(stack.config.data_dir)
    doomed, kept = finished_workflow(alice, admin_cellar), finished_workflow(alice, admin_cellar)
    keys, files = etcd_keys(stack), files_under(data)
    assert of(doomed, keys) and len(of(doomed, files)) >= 6  # (so the checks below can fail)
    assert any(name.startswith("cellar/result/") for name in of(doomed, files))
    assert any(name.startswith("cellar/archive/") for name in of(doomed, files))
    assert any(name.startswith("logs/") for name in of(doomed, files))
    listed = alice.stub.ListWorkflows(pb.ListWorkflowsRequest()).workflows

    alice.delete(doomed)

    assert {k: v for k, v in keys.items() if doomed not in k} == etcd_keys(stack)  # the rest unchanged
    assert files_under(data) == files - of(doomed, files)
    assert [w.id for w in alice.stub.ListWorkflows(pb.ListWorkflowsRequest()).workflows] == \
        [w.id for w in listed if w.id != doomed] == [kept]
    for call, request in ((alice.stub.GetWorkflow, pb.GetWorkflowRequest(id=doomed)),
                          (alice.stub.RetryWorkflow, pb.RetryWorkflowRequest(id=doomed)),
                          (alice.stub.CloneWorkflow, pb.CloneWorkflowRequest(id=doomed)),
                          (alice.stub.DeleteWorkflow, pb.DeleteWorkflowRequest(id=doomed))):
        with pytest.raises(grpc.RpcError) as caught:
            call(request)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, call
    assert admin_cellar.list("result", kept)  # another's results are still there


def test_a_running_workflow_is_refused_then_deleted_with_force(stack: Any, alice: User) -> None:
    workflow_id = alice.submit(sh("sleep 600", "sleeps"))
    for w in alice.stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id, include_jobs=True), timeout=30):
        if w.jobs[0].status == pb.JOB_STATUS_RUNNING:
            break
    with pytest.raises(grpc.RpcError) as caught:
        alice.delete(workflow_id)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is running" in (caught.value.details() or "") and "force" in (caught.value.details() or "")
    assert alice.stub.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id)).status == pb.WORKFLOW_STATUS_RUNNING
    assert job_processes(workflow_id)

    alice.delete(workflow_id, force=True)

    assert not job_processes(workflow_id)
    assert not of(workflow_id, etcd_keys(stack))
    assert not of(workflow_id, files_under(Path(stack.config.data_dir)))


def test_another_users_workflow_is_not_found_and_stays(stack: Any, alice: User, bob: User,
                                                       admin_cellar: CellarClient) -> None:
    workflow_id = finished_workflow(alice, admin_cellar)
    keys, files = etcd_keys(stack), files_under(Path(stack.config.data_dir))
    for force in (False, True):
        with pytest.raises(grpc.RpcError) as caught:
            bob.delete(workflow_id, force=force)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == f"no workflow {workflow_id}"
    assert etcd_keys(stack) == keys
    assert files_under(Path(stack.config.data_dir)) == files


def test_an_admin_deletes_anybodys_workflow(stack: Any, alice: User, admin_cellar: CellarClient) -> None:
    workflow_id = finished_workflow(alice, admin_cellar)
    with channel(stack.endpoint, token=stack.admin_token) as admin:
        dagger_pb2_grpc.DaggerStub(admin).DeleteWorkflow(pb.DeleteWorkflowRequest(id=workflow_id))
    assert not of(workflow_id, etcd_keys(stack))


def test_a_bad_id_is_invalid(alice: User) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        alice.delete("not-an-id")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "id: not a workflow id" in (caught.value.details() or "")


def test_a_watch_sees_a_forced_deletion_end_the_workflow_and_a_later_one_is_not_found(alice: User) -> None:
    workflow_id = alice.submit(sh("sleep 600", "sleeps"))
    watch = alice.stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id), timeout=60)
    next(watch)
    alice.delete(workflow_id, force=True)
    assert [w.status for w in watch][-1] == pb.WORKFLOW_STATUS_TERMINATED  # cancelled first: it ended
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(alice.stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id), timeout=60)))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == f"no workflow {workflow_id}"


def test_a_deletion_cut_short_is_finished_by_the_next_start(stack: Any, alice: User,
                                                            admin_cellar: CellarClient) -> None:
    data = Path(stack.config.data_dir)
    doomed, kept = finished_workflow(alice, admin_cellar), finished_workflow(alice, admin_cellar)
    keys, files = etcd_keys(stack), files_under(data)
    record, revision = stack.store.workflow(WorkflowId(doomed))
    stack.store.mark_deleting(record, revision)  # ... and the process died there
    prefix = stack.store.keys.prefix
    assert {key.removeprefix(prefix).split("/")[0] for key in of(doomed, etcd_keys(stack))} == \
        {"specs", "jobs", "deleting", "to-archive"}  # out of the listings, its record moved to the mark
    assert [w.id for w in alice.stub.ListWorkflows(pb.ListWorkflowsRequest()).workflows] == [kept]
    alice.channel.close()
    stack.stop()
    with Stack(stack.config) as again:
        _wait_for(lambda: again.retention.passes > 0)
        assert {k: v for k, v in keys.items() if doomed not in k} == etcd_keys(again)
    assert files_under(data) == files - of(doomed, files)
    assert kept in files_under(data / "workflows")


def test_delete_finishes_a_deletion_that_storage_cut_short(stack: Any, alice: User,
                                                          admin_cellar: CellarClient) -> None:
    doomed = finished_workflow(alice, admin_cellar)
    deleter = stack.retention.deleter

    class Away:
        def remove(self, kind: str, workflow_id: WorkflowId) -> None:
            raise Unavailable("storage unavailable: away")

    record, revision = stack.store.workflow(WorkflowId(doomed))
    with pytest.raises(Unavailable):
        Deleter(deleter.store, deleter.logs, deleter.data_root, Away()).delete(record, revision)
    assert of(doomed, etcd_keys(stack))  # the mark, the jobs...
    assert admin_cellar.list("result", doomed)

    alice.delete(doomed)  # the owner asks again: finished

    assert not of(doomed, etcd_keys(stack))
    assert not of(doomed, files_under(Path(stack.config.data_dir)))


# ---- retention -------------------------------------------------------------------------


def test_the_retention_sweep_deletes_only_workflows_that_ended_long_enough_ago(store: Any, tmp_path: Path) -> None:
    now = 1_000 * DAY
    logs = LogStore(tmp_path / "logs")

    def stored(name: str, created: float, finished: float | None, owner: str = "alice") -> WorkflowRecord:
        status = WorkflowStatus.RUNNING if finished is None else WorkflowStatus.DONE
        workflow = WorkflowRecord(id=WorkflowId(f"00000000-0000-4000-8000-{len(name):04d}{name:0>8}"), name=name,
                                  owner=owner, parallelism=1, created_at=created, finished_at=finished,
                                  status=status)
        store.create_workflow(workflow, _one_job(), {"j": _job_record()})
        (tmp_path / "workflows" / workflow.id).mkdir(parents=True)
        logs.append(workflow.id, "j", 1, [(1, b"line")])
        return workflow

    old = stored("old", now - 9 * DAY, now - 8 * DAY)
    old_of_bob = stored("oldbob", now - 9 * DAY, now - 7.5 * DAY, owner="bob")
    ended_lately = stored("late", now - 9 * DAY, now - 1 * DAY)
    still_running = stored("running", now - 9 * DAY, None)
    young = stored("young", now - 2 * DAY, now - 2 * DAY)
    deleted: list[str] = []

    class Cellar:
        def remove(self, kind: str, workflow_id: WorkflowId) -> None:
            deleted.append(f"{kind}/{workflow_id}")

    retention = Retention(Deleter(store, logs, tmp_path / "workflows", Cellar()), RetentionSettings(days=7),
                          clock=lambda: now)
    assert retention.sweep() == 2

    left = {w.id for w in store.workflows()}
    assert left == {ended_lately.id, still_running.id, young.id}
    assert sorted(deleted) == sorted(f"{kind}/{w.id}" for w in (old, old_of_bob)
                                   for kind in WORKFLOW_FILE_KINDS)
    assert sorted(os.listdir(tmp_path / "workflows")) == sorted(left)
    assert sorted(os.listdir(tmp_path / "logs")) == sorted(left)
    assert retention.sweep() == 0  # nothing more to do
    logs.close()


def test_the_stack_sweeps_with_its_clock(stack_config: Any, clock: Any, tmp_path: Path) -> None:
    from dataclasses import replace

    from donut_common.clock import Clock

    config = replace(stack_config, retention=RetentionSettings(days=3, interval=0.05))
    with Stack(config, clock=Clock(time=clock.time, monotonic=clock.monotonic)) as running:
        running.admin_token = running.client_token()[0]
        alice = User(running, "alice")
        ended = alice.submit(SAVES)
        alice.wait(ended)
        sleeping = alice.submit(sh("sleep 600", "sleeps"))
        passes = running.retention.passes
        _wait_for(lambda: running.retention.passes > passes + 1)
        assert running.store.workflow(WorkflowId(ended))  # not old enough yet

        clock.advance(3 * DAY + 60)
        _wait_for(lambda: not of(ended, etcd_keys(running)))

        assert not of(ended, files_under(Path(config.data_dir)))
        assert alice.stub.GetWorkflow(pb.GetWorkflowRequest(id=sleeping)).status == pb.WORKFLOW_STATUS_RUNNING
        alice.channel.close()


def _wait_for(condition: Any, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def _one_job() -> Any:
    from dagger_svc.core.definition import parse_definition

    return parse_definition(json.dumps({"jobs": [sh("true", "j")]}).encode())


def _job_record() -> Any:
    from dagger_svc.core.records import JobRecord

    return JobRecord("j")
