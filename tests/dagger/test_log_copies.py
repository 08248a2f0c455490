"""Ended attempts' logs copied into cellar: byte for byte, as the workflow owner's, durable
across a stop before the copy, retried while cellar is away, and served by TailLogs and
`donut logs` once dagger's local files are gone."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from cellar_svc.server import create_server
from cellar_svc.storage import FileRef, LocalStorage
from dagger_svc.log_copies import CopySettings, LogCopier, marker
from dagger_svc.logs import STDOUT, LogStore, read_stored
from dagger_svc.service import DaggerConfig, DaggerService
from donut.cellar.v1 import cellar_pb2 as cpb
from donut.cellar.v1 import cellar_pb2_grpc
from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut.users.v1 import users_pb2 as upb
from donut.users.v1 import users_pb2_grpc
from donut_cli.stack import Stack, StackConfig, _CellarLogCopies
from donut_common.auth import SCOPE_ADMIN, SCOPE_SERVICE, SCOPE_USER, Principal
from donut_common.errors import Unavailable
from donut_common.etcd_server import free_port
from donut_common.rpc import channel
from streamed_job.cellar import CellarClient
from tests.cli.conftest import donut
from tests.dagger.conftest import rpc_code, sh

pytestmark = pytest.mark.slow

# attempt 1 fails (after a few lines on both streams), attempt 2 succeeds
FLAKY = sh('echo "try $DONUT_JOB_ATTEMPT"; for i in 1 2 3 4; do echo "line $i"; done; echo warned >&2; '
           '[ "$DONUT_JOB_ATTEMPT" = 2 ]', "flaky", retries=1)


class Alice:
    """A user of the stack, her workflow of one job with two attempts, and its logs."""

    def __init__(self, stack: Stack) -> None:
        admin = channel(stack.endpoint, token=stack.admin_token)  # type: ignore[attr-defined]
        users = users_pb2_grpc.UsersStub(admin)
        self.id = users.CreateUser(upb.CreateUserRequest(login="alice")).id
        users.CreateUser(upb.CreateUserRequest(login="bob"))
        self.token = users.CreateToken(upb.CreateTokenRequest(user_login="alice", name="alice")).secret
        self.bob = users.CreateToken(upb.CreateTokenRequest(user_login="bob", name="bob")).secret
        dagger = self.dagger(stack)
        definition = json.dumps({"jobs": [FLAKY]}).encode()
        self.workflow = dagger.CreateWorkflow(pb.CreateWorkflowRequest(definition=definition)).id
        for w in dagger.WatchWorkflow(pb.WatchWorkflowRequest(id=self.workflow), timeout=60):
            if w.status not in (pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING):
                assert w.status == pb.WORKFLOW_STATUS_DONE
                break
        admin.close()

    def dagger(self, stack: Stack) -> Any:
        return dagger_pb2_grpc.DaggerStub(channel(stack.endpoint, token=self.token))

    def local_log(self, stack: Stack, attempt: int) -> Path:
        assert stack.logs is not None
        return stack.logs.path(self.workflow, "flaky", attempt)


def started(config: StackConfig) -> Stack:
    stack = Stack(config).start()
    stack.admin_token = stack.client_token()[0]  # type: ignore[attr-defined]
    return stack


@pytest.fixture
def running(stack_config: StackConfig) -> Iterator[Callable[..., Stack]]:
    """Starts the stack (again); stops whatever is still running at the end."""
    stacks: list[Stack] = []

    def start(executor: str = "local") -> Stack:
        for old in stacks:
            old.stop()
        stacks.append(started(replace(stack_config, executor=executor)))
        return stacks[-1]

    yield start
    for stack in stacks:
        stack.stop()


def copied(stack: Stack) -> None:
    assert stack.log_copier is not None and stack.log_copier.wait_idle(60), "the logs were not copied"


def cellar_bytes(stack: Stack, workflow_id: str, job: str, attempt: int) -> bytes:
    admin = CellarClient(channel(stack.endpoint, token=stack.admin_token))  # type: ignore[attr-defined]
    return b"".join(admin.read("log", workflow_id, f"{attempt}.log", job=job))


def tails(stub: Any, workflow_id: str) -> dict[str, list[tuple[int, int, list[tuple[int, bytes, int]]]]]:
    """What TailLogs answers for each way of asking (attempt, offset, follow)."""
    asked = {"current": {}, "first": {"attempt": 1}, "from 3": {"attempt": 1, "offset": 3},
             "follow from the first": {"attempt": 1, "follow": True}, "follow": {"follow": True},
             "beyond the end": {"attempt": 2, "offset": 50}, "tail": {"tail": 3},
             "tail of the first, following": {"attempt": 1, "tail": 2, "follow": True}}
    return {name: [(m.attempt, m.offset, [(line.stream, line.text, line.time) for line in m.lines])
                   for m in stub.TailLogs(pb.TailLogsRequest(workflow_id=workflow_id, job="flaky", **request),
                                          timeout=30)]
            for name, request in asked.items()}


def cli_logs(stack: Stack, home: Path, token: str, workflow_id: str) -> dict[str, tuple[str, str]]:
    outputs = {}
    for args in ((), ("flaky",), ("flaky", "--tail", "2"), ("flaky", "--attempt", "1"), ("-f",),
                 ("flaky", "-f", "--attempt", "1", "--timestamps")):
        result = donut("logs", workflow_id, *args, home=home, endpoint=stack.endpoint, env={"DONUT_TOKEN": token})
        assert result.returncode == 0, result.stderr
        outputs[" ".join(args)] = (result.stdout, result.stderr)
    return outputs


def test_an_ended_attempt_s_log_is_copied_and_served_from_the_copy_once_the_file_is_gone(
        running: Callable[..., Stack], stack_config: StackConfig, donut_home: Path) -> None:
    stack = running("wrapper")  # its jobs push their lines in sequenced batches, as in a cluster
    alice = Alice(stack)
    copied(stack)
    for attempt in (1, 2):
        local = alice.local_log(stack, attempt).read_bytes()
        assert local.startswith(b"q0\nt") and b"\nq1\n" in local  # markers included
        assert cellar_bytes(stack, alice.workflow, "flaky", attempt) == local
    before = tails(alice.dagger(stack), alice.workflow)
    assert [line[1] for _, _, lines in before["current"] for line in lines][:5] == [
        b"try 2", b"line 1", b"line 2", b"line 3", b"line 4"]
    assert [(a, o) for a, o, _ in before["from 3"]] == [(1, 3)]
    assert [a for a, _, _ in before["follow from the first"]] == [1, 2]
    assert all(t > 0 for _, _, lines in before["current"] for _, _, t in lines)
    current = [(o + i, line) for _, o, lines in before["current"] for i, line in enumerate(lines)]
    assert [(o + i, line) for _, o, lines in before["tail"] for i, line in enumerate(lines)] == current[-3:]
    first = [line for a, _, lines in before["first"] for line in lines]
    assert [line for a, _, lines in before["tail of the first, following"] if a == 1 for line in lines] == first[-2:]
    assert [line for a, _, lines in before["tail of the first, following"] if a == 2 for line in lines] == \
        [line for _, _, lines in before["current"] for line in lines]  # the next attempt whole
    shown = cli_logs(stack, donut_home, alice.token, alice.workflow)

    stack.stop()
    shutil.rmtree(stack_config.data_dir / "logs")
    stack = running("wrapper")

    assert tails(alice.dagger(stack), alice.workflow) == before
    assert cli_logs(stack, donut_home, alice.token, alice.workflow) == shown
    assert not (stack_config.data_dir / "logs" / alice.workflow).exists()  # served from cellar, not written back

    (stack_config.data_dir / "cellar" / "log" / alice.workflow / "flaky" / "1.log").unlink()
    first = pb.TailLogsRequest(workflow_id=alice.workflow, job="flaky", attempt=1)
    assert list(alice.dagger(stack).TailLogs(first, timeout=30)) == []  # no copy, no file: no lines, as before


def test_the_copy_is_the_owner_s_alone_and_only_services_write_logs(running: Callable[[], Stack]) -> None:
    stack = running()
    alice = Alice(stack)
    copied(stack)
    ref = cpb.FileRef(kind=cpb.KIND_LOG, scope=alice.workflow, job="flaky", path="1.log")
    theirs = cellar_pb2_grpc.CellarStub(channel(stack.endpoint, token=alice.token))
    bob = cellar_pb2_grpc.CellarStub(channel(stack.endpoint, token=alice.bob))

    assert theirs.Stat(ref).owner == alice.id
    assert b"".join(m.data for m in theirs.Get(cpb.GetRequest(ref=ref))) == alice.local_log(stack, 1).read_bytes()
    assert rpc_code(lambda: bob.Stat(ref)) == grpc.StatusCode.NOT_FOUND
    assert rpc_code(lambda: list(bob.Get(cpb.GetRequest(ref=ref)))) == grpc.StatusCode.NOT_FOUND
    assert list(bob.List(cpb.ListRequest(kind=cpb.KIND_LOG, scope=alice.workflow)).files) == []
    bob_dagger = dagger_pb2_grpc.DaggerStub(channel(stack.endpoint, token=alice.bob))
    assert rpc_code(lambda: list(bob_dagger.TailLogs(pb.TailLogsRequest(
        workflow_id=alice.workflow, job="flaky")))) == grpc.StatusCode.NOT_FOUND

    def put(stub: Any, owner: str = "", target: cpb.FileRef = ref) -> Any:
        return stub.Put(iter([cpb.PutRequest(header=target, size=6, owner=owner), cpb.PutRequest(data=b"forged")]))

    mine = cpb.FileRef(kind=cpb.KIND_LOG, scope="bobs-own", job="j", path="1.log")
    for who, owner, target in ((bob, "", ref), (bob, alice.id, ref), (bob, "", mine), (theirs, "", ref),
                               (theirs, alice.id, ref)):
        assert rpc_code(lambda w=who, o=owner, t=target: put(w, o, t)) == grpc.StatusCode.PERMISSION_DENIED
    upload = cpb.FileRef(kind=cpb.KIND_CACHE, scope="bobs-upload", path="f")
    assert rpc_code(lambda: put(bob, alice.id, upload)) == grpc.StatusCode.PERMISSION_DENIED  # not in her name
    assert put(bob, "", upload).owner != alice.id
    assert cellar_bytes(stack, alice.workflow, "flaky", 1) == alice.local_log(stack, 1).read_bytes()


def test_a_log_left_uncopied_by_a_stop_is_copied_after_the_next_start(
        running: Callable[[], Stack], stack_config: StackConfig) -> None:
    stack = running()
    alice = Alice(stack)
    copied(stack)
    logs = [alice.local_log(stack, attempt) for attempt in (1, 2)]
    stack.stop()
    # as if the stack had been killed between the attempts' ends and their copies
    for path in logs:
        marker(path).unlink()
    shutil.rmtree(stack_config.data_dir / "cellar" / "log")

    stack = running()
    copied(stack)
    for attempt, path in zip((1, 2), logs, strict=True):
        assert cellar_bytes(stack, alice.workflow, "flaky", attempt) == path.read_bytes()
        assert marker(path).exists()


def test_a_running_attempt_s_log_is_not_copied_until_it_ends(running: Callable[[], Stack]) -> None:
    stack = running()
    alice = Alice(stack)
    dagger = alice.dagger(stack)
    definition = json.dumps({"jobs": [sh("echo started; sleep 60", "slow")]}).encode()
    workflow_id = dagger.CreateWorkflow(pb.CreateWorkflowRequest(definition=definition)).id
    follow = dagger.TailLogs(pb.TailLogsRequest(workflow_id=workflow_id, job="slow", follow=True), timeout=60)
    assert next(iter(follow)).lines[0].text == b"started"
    assert stack.logs is not None and stack.store is not None
    path = stack.logs.path(workflow_id, "slow", 1)
    admin = CellarClient(channel(stack.endpoint, token=stack.admin_token))  # type: ignore[attr-defined]
    # a copier starting now finds the log without a marker, asks etcd, and leaves it
    scanning = LogCopier(LogStore(stack.logs.root), _CellarLogCopies(admin), stack.store).start()
    try:
        assert scanning.wait_idle(30)
    finally:
        scanning.stop()
    assert not marker(path).exists()
    assert admin.list("log", workflow_id) == []

    dagger.CancelWorkflow(pb.CancelWorkflowRequest(id=workflow_id))
    for _ in follow:
        pass  # the follower ends with the attempt
    copied(stack)
    assert b"".join(admin.read("log", workflow_id, "1.log", job="slow")) == path.read_bytes()


def test_a_copy_is_retried_until_cellar_is_back(running: Callable[[], Stack], tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    stack = running()
    alice = Alice(stack)
    copied(stack)
    assert stack.logs is not None and stack.store is not None
    # another copy of the logs folder, without its markers, copied into a cellar not started yet
    logs = tmp_path / "other-logs"
    shutil.copytree(stack.logs.root, logs, ignore=shutil.ignore_patterns("*.copied"))
    port = free_port()
    client = CellarClient(channel(f"127.0.0.1:{port}"))
    copier = LogCopier(LogStore(logs), _CellarLogCopies(client), stack.store,
                       CopySettings(first_retry=0.05, max_retry=0.2)).start()
    server = None
    try:
        with caplog.at_level(logging.WARNING, logger="dagger_svc.log_copies"):
            deadline = time.monotonic() + 30
            while not any("trying again" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "no copy was tried"
                time.sleep(0.02)
        assert not list(logs.rglob("*.copied"))
        # meanwhile a log whose file is gone can't be served, and says why
        assert stack.scheduler is not None
        service = DaggerService(stack.store, LogStore(tmp_path / "no-logs"), stack.scheduler,
                                DaggerConfig(tmp_path), log_copies=_CellarLogCopies(client))
        admin = Principal(user_id="root", login="admin", admin=True, scopes=(SCOPE_USER, SCOPE_ADMIN))
        with pytest.raises(Unavailable, match="^storage unavailable: "):
            list(service.tail_logs(admin, alice.workflow, "flaky", 1))

        services = Principal(user_id="services", login="donut-services", scopes=(SCOPE_SERVICE,))
        server, _ = create_server(f"127.0.0.1:{port}", LocalStorage(tmp_path / "cellar"), principal=lambda: services)
        server.start()
        assert copier.wait_idle(30)
    finally:
        copier.stop()
        if server is not None:
            server.stop(None)
    for attempt in (1, 2):
        stored = tmp_path / "cellar" / "log" / alice.workflow / "flaky" / f"{attempt}.log"
        assert stored.read_bytes() == alice.local_log(stack, attempt).read_bytes()
        assert LocalStorage(tmp_path / "cellar").stat(
            FileRef("log", alice.workflow, "flaky", f"{attempt}.log")).owner == alice.id


def test_a_stored_log_read_in_any_chunks_gives_what_the_file_gives(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    store = LogStore(tmp_path, clock=lambda: now[0])
    for sequence in range(1, 30):
        now[0] += 0.25
        store.append("w", "j", 1, [(STDOUT, b"x" * sequence), (STDOUT, b"")], sequence=sequence)
    store.end("w", "j", 1)
    data = store.path("w", "j", 1).read_bytes()
    for offset in (0, 1, 17, 58, 100):
        for batch in (1, 7, 1000):
            expected = list(store.read_timed("w", "j", 1, offset, batch=batch))
            for size in (1, 5, 64, len(data)):
                chunks = (data[i:i + size] for i in range(0, len(data), size))
                assert list(read_stored(chunks, offset, batch=batch)) == expected, (offset, batch, size)

