"""Workflow archives on a real stack: what the .tar.gz holds, who may make and read it, and
`--archive-finished` / `--delete-archived-workdirs` (including a run that ended while the
stack was down, and an archive that storage refuses or does not hold as sent)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dagger_svc.archives import ARCHIVE_PATH, ArchiveInfo, Archiver
from dagger_svc.core.definition import parse_definition
from dagger_svc.core.records import JobRecord, WorkflowId, WorkflowRecord, WorkflowStatus
from dagger_svc.store import Store
from donut.cellar.v1 import cellar_pb2 as cpb
from donut.cellar.v1 import cellar_pb2_grpc
from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut.users.v1 import users_pb2 as upb
from donut.users.v1 import users_pb2_grpc
from donut_cli.stack import Stack
from donut_common.errors import Unavailable
from donut_common.rpc import channel
from tests.dagger.conftest import Driver, rpc_code, sh

# nested directories, an empty file, a link inside the directory and one out of it (never followed)
MAKE_TREE = ("mkdir -p a/b/c && printf 'deep' > a/b/c/deep.txt && : > empty.txt && printf 'top\\n' > top.txt"
             " && ln -s a/b/c/deep.txt inside-link && ln -s /etc/hostname outside-link && mkdir void")
WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.02; done"


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


class Users:
    """Alice and Bob, with their tokens, on a running stack."""

    def __init__(self, stack: Any) -> None:
        admin = users_pb2_grpc.UsersStub(channel(stack.endpoint, token=stack.admin_token))
        self.alice_id = admin.CreateUser(upb.CreateUserRequest(login="alice")).id
        admin.CreateUser(upb.CreateUserRequest(login="bob"))
        self.alice = admin.CreateToken(upb.CreateTokenRequest(user_login="alice", name="a")).secret
        self.bob = admin.CreateToken(upb.CreateTokenRequest(user_login="bob", name="b")).secret
        self.endpoint = stack.endpoint

    def driver(self, stack: Any, token: str) -> Driver:
        driver = Driver(stack)
        driver.channel = channel(stack.endpoint, token=token)
        driver.stub = dagger_pb2_grpc.DaggerStub(driver.channel)
        return driver


def cellar(stack: Any, token: str) -> Any:
    return cellar_pb2_grpc.CellarStub(channel(stack.endpoint, token=token))


def download(stub: Any, workflow_id: str) -> tuple[cpb.FileInfo, bytes]:
    ref = cpb.FileRef(kind=cpb.KIND_ARCHIVE, scope=workflow_id, path=ARCHIVE_PATH)
    messages = list(stub.Get(cpb.GetRequest(ref=ref)))
    return messages[0].info, b"".join(m.data for m in messages[1:])


def tree(directory: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under the directory (links not followed): path -> (type, content or link target)."""
    found: dict[str, tuple[str, bytes | str]] = {}
    for where, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(where) / name
            relative = str(path.relative_to(directory))
            if path.is_symlink():
                found[relative] = ("link", os.readlink(path))
            elif path.is_dir():
                found[relative] = ("dir", b"")
            else:
                found[relative] = ("file", path.read_bytes())
    return found


def members(archive: bytes) -> dict[str, tuple[str, bytes | str]]:
    found: dict[str, tuple[str, bytes | str]] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.issym():
                found[member.name] = ("link", member.linkname)
            elif member.isdir():
                found[member.name] = ("dir", b"")
            elif member.isfifo():
                found[member.name] = ("fifo", b"")
            else:
                extracted = tar.extractfile(member)
                assert extracted is not None
                found[member.name] = ("file", extracted.read())
    return found


def test_the_archive_holds_the_workflow_directory_as_it_is(stack: Any) -> None:
    users = Users(stack)
    alice = users.driver(stack, users.alice)
    workflow_id = alice.submit([sh(MAKE_TREE, "make")])
    assert alice.wait(workflow_id).status == pb.WORKFLOW_STATUS_DONE

    answer = alice.stub.ArchiveWorkflow(pb.ArchiveWorkflowRequest(id=workflow_id))

    info, data = download(cellar(stack, users.alice), workflow_id)  # the owner may read it
    assert info.owner == users.alice_id
    assert (answer.path, answer.size, answer.sha256) == (ARCHIVE_PATH, len(data), hashlib.sha256(data).hexdigest())
    assert answer.created_at.seconds > 0
    expected = tree(alice.workdir(workflow_id))
    assert members(data) == expected
    assert expected["inside-link"] == ("link", "a/b/c/deep.txt") and expected["empty.txt"] == ("file", b"")
    assert expected["outside-link"] == ("link", "/etc/hostname") and expected["void"] == ("dir", b"")
    shown = alice.stub.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id))
    assert shown.archive_sha256 == answer.sha256 and shown.archived_at.seconds > 0


def test_only_an_ended_workflow_of_the_caller_s_is_archived(stack: Any) -> None:
    users = Users(stack)
    alice = users.driver(stack, users.alice)
    bob = users.driver(stack, users.bob)
    admin = Driver(stack)
    workflow_id = alice.submit([sh(WAIT_FOR_GO, "waits")])
    alice.wait_until(workflow_id, lambda w: w.status == pb.WORKFLOW_STATUS_RUNNING)

    request = pb.ArchiveWorkflowRequest(id=workflow_id)
    try:
        alice.stub.ArchiveWorkflow(request)
        raise AssertionError("a running workflow was archived")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert "still running" in e.details()  # type: ignore[attr-defined]
    assert rpc_code(lambda: bob.stub.ArchiveWorkflow(request)) == grpc.StatusCode.NOT_FOUND
    assert rpc_code(lambda: alice.stub.ArchiveWorkflow(pb.ArchiveWorkflowRequest(id="nope"))) \
        == grpc.StatusCode.INVALID_ARGUMENT
    (alice.workdir(workflow_id) / "go").touch()
    assert alice.wait(workflow_id).status == pb.WORKFLOW_STATUS_DONE
    assert rpc_code(lambda: bob.stub.ArchiveWorkflow(request)) == grpc.StatusCode.NOT_FOUND

    made_by_admin = admin.stub.ArchiveWorkflow(request)  # an admin may; the archive stays Alice's
    info, _ = download(cellar(stack, users.alice), workflow_id)
    assert (info.owner, info.sha256) == (users.alice_id, made_by_admin.sha256)
    ref = cpb.FileRef(kind=cpb.KIND_ARCHIVE, scope=workflow_id, path=ARCHIVE_PATH)
    assert rpc_code(lambda: cellar(stack, users.bob).Stat(ref)) == grpc.StatusCode.NOT_FOUND


def test_only_services_and_admins_store_a_file_for_another_user(stack: Any) -> None:
    users = Users(stack)
    ref = cpb.FileRef(kind=cpb.KIND_CACHE, scope="bobs-upload", path="x.txt")

    def put(token: str, owner: str) -> Any:
        return cellar(stack, token).Put(iter([cpb.PutRequest(header=ref, size=1, owner=owner),
                                              cpb.PutRequest(data=b"x")]))

    assert rpc_code(lambda: put(users.alice, users.alice_id)) == grpc.StatusCode.PERMISSION_DENIED
    assert rpc_code(lambda: put(stack.admin_token, "../escape")) == grpc.StatusCode.INVALID_ARGUMENT
    assert put(stack.service_token, users.alice_id).owner == users.alice_id


@contextlib.contextmanager
def _stack(config: Any, **changes: Any) -> Iterator[Stack]:
    with Stack(dataclasses.replace(config, **changes)) as running:
        running.admin_token = running.client_token()[0]  # type: ignore[attr-defined]
        yield running


def _archived(driver: Driver, workflow_id: str) -> pb.Workflow | None:
    shown = driver.stub.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id))
    return shown if shown.archive_sha256 else None


def _due(stack: Stack) -> set[str]:
    assert stack.store is not None
    return set(stack.store.archives_due())


def test_archive_finished_archives_every_ended_workflow(stack_config: Any) -> None:
    with _stack(stack_config, archive_finished=True) as running:
        driver = Driver(running)
        done = driver.submit([sh(MAKE_TREE, "make")])
        failed = driver.submit([sh("echo partial > out.txt; exit 3", "fails")])
        terminated = driver.submit([sh(f"echo begun > begun.txt; {WAIT_FOR_GO}", "waits")])
        driver.wait_until(terminated, lambda w: w.status == pb.WORKFLOW_STATUS_RUNNING)
        driver.stub.CancelWorkflow(pb.CancelWorkflowRequest(id=terminated))
        statuses = {w: driver.wait(w).status for w in (done, failed, terminated)}
        assert statuses == {done: pb.WORKFLOW_STATUS_DONE, failed: pb.WORKFLOW_STATUS_FAILED,
                            terminated: pb.WORKFLOW_STATUS_TERMINATED}
        for workflow_id in (done, failed, terminated):
            shown = wait_until(lambda w=workflow_id: _archived(driver, w), f"{workflow_id} archived")
            info, data = download(cellar(running, running.admin_token), workflow_id)
            assert shown.archive_sha256 == info.sha256 == hashlib.sha256(data).hexdigest()
            assert members(data) == tree(driver.workdir(workflow_id))  # kept: no --delete-archived-workdirs
        assert members(download(cellar(running, running.admin_token), failed)[1])["out.txt"] == ("file", b"partial\n")
        wait_until(lambda: not _due(running), "no run due any more")
        driver.close()


def test_a_workflow_that_ended_while_archiving_was_off_is_archived_after_the_next_start(
        stack_config: Any) -> None:
    with _stack(stack_config) as running:  # archiving off
        driver = Driver(running)
        workflow_id = driver.submit([sh(MAKE_TREE, "make")])
        assert driver.wait(workflow_id).status == pb.WORKFLOW_STATUS_DONE
        assert _due(running) == {workflow_id}  # marked with its end
        assert _archived(driver, workflow_id) is None
        driver.close()
    with _stack(stack_config, archive_finished=True) as running:
        driver = Driver(running)
        wait_until(lambda: _archived(driver, workflow_id), "the archive made after the start")
        assert members(download(cellar(running, running.admin_token), workflow_id)[1]) == \
            tree(driver.workdir(workflow_id))
        wait_until(lambda: not _due(running), "no run due any more")
        driver.close()


def test_delete_archived_workdirs_removes_a_directory_only_once_its_archive_is_stored(
        stack_config: Any) -> None:
    with _stack(stack_config, archive_finished=True, delete_archived_workdirs=True) as running:
        driver = Driver(running)
        kept = driver.submit([sh(WAIT_FOR_GO + "; echo kept > kept.txt", "refused")])
        gone = driver.submit([sh(MAKE_TREE, "make")])
        assert driver.wait(gone).status == pb.WORKFLOW_STATUS_DONE
        wait_until(lambda: not driver.workdir(gone).exists(), "the archived directory removed")
        shown = _archived(driver, gone)
        assert shown is not None
        try:
            driver.stub.RetryWorkflow(pb.RetryWorkflowRequest(id=gone, restart_successful=True))
            raise AssertionError("a workflow without its directory was retried")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
            assert "clone it to run it again" in e.details()  # type: ignore[attr-defined]
        info, data = download(cellar(running, running.admin_token), gone)
        assert shown.archive_sha256 == info.sha256 and members(data)["a/b/c/deep.txt"] == ("file", b"deep")
        # the archive of the second can't be stored: cellar finds a file where its folder goes
        blocker = Path(running.config.data_dir) / "cellar" / "archive" / kept
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("in the way")
        (driver.workdir(kept) / "go").touch()
        assert driver.wait(kept).status == pb.WORKFLOW_STATUS_DONE
        assert running.archiver is not None
        problem = wait_until(lambda: running.archiver.problems.get(kept), "the refused archive reported")
        assert "storage unavailable" in problem
        assert (driver.workdir(kept) / "kept.txt").read_text() == "kept\n"
        assert _archived(driver, kept) is None and kept in _due(running)
        blocker.unlink()  # storage takes it again: archived on the next try, then removed
        wait_until(lambda: not driver.workdir(kept).exists(), "the directory removed once archived")
        assert members(download(cellar(running, running.admin_token), kept)[1])["kept.txt"] == ("file", b"kept\n")
        wait_until(lambda: not _due(running), "no run due any more")
        assert running.archiver.problems == {}
        driver.close()


def test_delete_archived_workdirs_goes_only_with_archive_finished(stack_config: Any) -> None:
    with pytest.raises(ValueError, match="delete_archived_workdirs: only with archive_finished"), \
            _stack(stack_config, delete_archived_workdirs=True):
        pass


class _Storage:
    """Archive storage in memory that can be made to hold something else than was sent
    (a fake of dagger's own port, for what a real cellar never does)."""

    def __init__(self) -> None:
        self.kept: dict[str, bytes] = {}
        self.corrupt = False

    def put(self, workflow_id: str, owner: str, chunks: Iterable[bytes]) -> ArchiveInfo:
        self.kept[workflow_id] = b"".join(chunks) + (b"!" if self.corrupt else b"")
        return self.stat(workflow_id)

    def stat(self, workflow_id: str) -> ArchiveInfo:
        data = self.kept[workflow_id]
        return ArchiveInfo(ARCHIVE_PATH, len(data), hashlib.sha256(data).hexdigest(), time.time())


@pytest.fixture
def ended(store: Store, tmp_path: Path) -> Iterator[tuple[WorkflowRecord, Path]]:
    definition = parse_definition(b'{"jobs": [{"name": "a", "image": "x", "cmd": "true", "args": []}]}')
    workflow = WorkflowRecord(id=WorkflowId("0b5e7a4c-0000-4000-8000-000000000001"), name="w",
                              status=WorkflowStatus.DONE, finished_at=time.time(), created_at=time.time())
    store.create_workflow(workflow, definition, {"a": JobRecord("a")})
    directory = tmp_path / "workflows" / workflow.id
    directory.mkdir(parents=True)
    (directory / "result.txt").write_text("result")
    yield workflow, directory


def test_an_archive_not_stored_as_sent_is_not_recorded_and_its_directory_stays(
        store: Store, tmp_path: Path, ended: tuple[WorkflowRecord, Path]) -> None:
    workflow, directory = ended
    storage = _Storage()
    storage.corrupt = True
    archiver = Archiver(store, storage, tmp_path / "workflows", delete_workdirs=True)
    with pytest.raises(Unavailable, match="not stored as sent"):
        archiver.archive(*store.workflow(workflow.id))
    with pytest.raises(Unavailable, match="not stored as sent"):
        archiver._settle(workflow.id)
    assert (directory / "result.txt").read_text() == "result"
    assert not store.workflow(workflow.id)[0].archived

    storage.corrupt = False
    archiver._settle(workflow.id)
    assert not directory.exists() and store.workflow(workflow.id)[0].archived


def test_links_and_special_files_are_stored_as_they_are(
        store: Store, tmp_path: Path, ended: tuple[WorkflowRecord, Path]) -> None:
    workflow, directory = ended
    os.mkfifo(directory / "pipe")  # never opened (reading it would block forever)
    (directory / "sub").mkdir()
    (directory / "sub" / "gone").symlink_to("nowhere")  # dangling
    (directory / "loop").symlink_to("loop")
    storage = _Storage()
    stored = Archiver(store, storage, tmp_path / "workflows").archive(*store.workflow(workflow.id))
    assert members(storage.kept[workflow.id])["pipe"] == ("fifo", b"")
    assert members(storage.kept[workflow.id])["sub/gone"] == ("link", "nowhere")
    assert members(storage.kept[workflow.id])["loop"] == ("link", "loop")
    assert stored.sha256 == store.workflow(workflow.id)[0].archive_sha256


def test_an_archive_stopped_part_way_stores_and_records_nothing(
        store: Store, tmp_path: Path, ended: tuple[WorkflowRecord, Path]) -> None:
    workflow, _ = ended
    storage = _Storage()
    archiver = Archiver(store, storage, tmp_path / "workflows")
    archiver.stop()  # (never started: only stopping)
    with pytest.raises(Unavailable, match="stopped"):
        archiver.archive(*store.workflow(workflow.id))
    assert storage.kept == {} and not store.workflow(workflow.id)[0].archived
