"""What cellar holds back: the per-file limit and the per-user quota (RESOURCE_EXHAUSTED,
as soon as it is known, leaving nothing stored), and the usage the quota is counted from."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cellar_svc.server import create_server
from cellar_svc.storage import FileRef, LocalStorage
from donut.cellar.v1 import cellar_pb2 as pb
from donut.cellar.v1 import cellar_pb2_grpc
from donut_common.auth import SCOPE_SERVICE, Principal
from donut_common.rpc import channel

from .conftest import ADMIN, Backend, SpyStorage
from .test_servicer import cache, put, result, status_of

Stub = cellar_pb2_grpc.CellarStub
ALICE = Principal(user_id="alice-id", login="alice")
BOB = Principal(user_id="bob-id", login="bob")
SERVICE = Principal(user_id="services-id", login="donut-services", scopes=(SCOPE_SERVICE,))
ALICES_JOB = Principal(user_id="alice-id", login="alice", scopes=("job:wf1/j/1",))
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
OVER_QUOTA = "Put: over the per-user quota of 1000 bytes ({used} bytes in use)"


class Cellar:
    """A cellar server whose caller the test chooses, call by call."""

    def __init__(self, spy: SpyStorage, **options: Any) -> None:
        self.caller = ALICE
        self.server, port = create_server("127.0.0.1:0", spy, principal=lambda: self.caller, **options)
        self.server.start()
        self.channel = channel(f"127.0.0.1:{port}")
        self.stub = Stub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None)


@pytest.fixture
def serve(spy: SpyStorage) -> Iterator[Callable[..., Cellar]]:
    made: list[Cellar] = []

    def start(**options: Any) -> Cellar:
        made.append(Cellar(spy, **options))
        return made[-1]

    yield start
    for cellar in made:
        cellar.close()


def held_put(stub: Stub, ref: pb.FileRef, size: int) -> tuple[grpc.RpcError, bool]:
    """A Put declaring `size`, whose data is held back until the server has answered (or
    30 s have passed): (the error, whether any data had to be sent first)."""
    answered = threading.Event()
    sent = []

    def requests() -> Iterator[pb.PutRequest]:
        yield pb.PutRequest(header=ref, size=size)
        answered.wait(30)
        sent.append(True)
        yield pb.PutRequest(data=b"x" * size)

    try:
        error = status_of(lambda: stub.Put(requests()))
    finally:
        answered.set()
    return error, bool(sent)


def test_a_declared_size_over_the_per_file_limit_is_refused_before_any_data(
        serve: Callable[..., Cellar], backend: Backend) -> None:
    cellar = serve(max_file_size=1000)
    error, sent = held_put(cellar.stub, cache("big"), 1001)
    assert (error.code(), error.details()) == (EXHAUSTED, "Put: file larger than the per-file limit of 1000 bytes")
    assert not sent
    assert backend.everything() == []


def test_a_stream_passing_the_per_file_limit_is_refused_and_nothing_stored(
        serve: Callable[..., Cellar], backend: Backend) -> None:
    cellar = serve(max_file_size=1024 * 1024)
    error = status_of(lambda: put(cellar.stub, cache("big"), b"x" * (1024 * 1024 + 1)))
    assert (error.code(), error.details()) == (
        EXHAUSTED, "Put: file larger than the per-file limit of 1 MiB (1048576 bytes)")
    assert backend.everything() == []


def test_a_negative_declared_size_is_invalid(serve: Callable[..., Cellar]) -> None:
    cellar = serve()
    error = status_of(lambda: cellar.stub.Put(iter([pb.PutRequest(header=cache("f"), size=-1)])))
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "size: must not be negative (got -1)")


def test_the_quota_refuses_a_declared_size_before_any_data(serve: Callable[..., Cellar], backend: Backend) -> None:
    cellar = serve(quota_bytes=1000)
    assert put(cellar.stub, cache("a"), b"x" * 600).size == 600
    error, sent = held_put(cellar.stub, cache("b"), 401)
    assert (error.code(), error.details()) == (EXHAUSTED, OVER_QUOTA.format(used=600))
    assert not sent
    assert [f.ref.path for f in backend.storage.list("cache", "up1")] == ["a"]
    assert put(cellar.stub, cache("b"), b"x" * 400).size == 400  # up to the quota, exactly


def test_the_quota_cuts_a_stream_off_and_stores_nothing(serve: Callable[..., Cellar], backend: Backend) -> None:
    cellar = serve(quota_bytes=1000)
    put(cellar.stub, cache("a"), b"x" * 600)
    error = status_of(lambda: put(cellar.stub, cache("b"), b"x" * 401, chunk=100))
    assert (error.code(), error.details()) == (EXHAUSTED, OVER_QUOTA.format(used=600))
    assert [f.ref.path for f in backend.storage.list("cache", "up1")] == ["a"]
    assert backend.temporaries() == []


def test_replacing_a_file_counts_its_old_version_out(serve: Callable[..., Cellar], storage: LocalStorage) -> None:
    cellar = serve(quota_bytes=1000)
    put(cellar.stub, cache("a"), b"x" * 600)
    assert put(cellar.stub, cache("a"), b"y" * 1000).size == 1000  # 600 out, 1000 in
    assert storage.usage("alice-id") == 1000
    error = status_of(lambda: put(cellar.stub, cache("b"), b"z"))
    assert error.code() == EXHAUSTED


def test_a_jobs_results_count_for_the_workflow_owner(serve: Callable[..., Cellar], storage: LocalStorage) -> None:
    cellar = serve(quota_bytes=1000)
    cellar.caller = ALICES_JOB
    assert put(cellar.stub, result("j", "out.txt"), b"x" * 700).owner == "alice-id"
    cellar.caller = ALICE
    error = status_of(lambda: put(cellar.stub, cache("a"), b"x" * 301))
    assert (error.code(), error.details()) == (EXHAUSTED, OVER_QUOTA.format(used=700))
    cellar.caller = BOB  # his own quota
    assert put(cellar.stub, cache("a", scope="bobs"), b"x" * 1000).size == 1000


def test_logs_and_archives_kept_for_a_user_do_not_count_for_their_quota(serve: Callable[..., Cellar]) -> None:
    cellar = serve(quota_bytes=1000)
    cellar.caller = SERVICE  # as dagger stores a workflow's log copies and archive, for its owner
    for ref in (pb.FileRef(kind=pb.KIND_LOG, scope="wf1", job="j", path="1.log"),
                pb.FileRef(kind=pb.KIND_ARCHIVE, scope="wf1", path="workflow.tar.gz")):
        cellar.stub.Put(iter([pb.PutRequest(header=ref, owner="alice-id"), pb.PutRequest(data=b"x" * 900)]))
    cellar.caller = ALICE
    assert put(cellar.stub, cache("a"), b"x" * 1000).size == 1000


@pytest.mark.parametrize("caller", [ADMIN, SERVICE], ids=["admin", "service"])
def test_admins_and_services_are_not_held_by_the_quota(serve: Callable[..., Cellar], caller: Principal) -> None:
    cellar = serve(quota_bytes=10)
    cellar.caller = caller
    assert put(cellar.stub, cache("a"), b"x" * 100).size == 100
    assert put(cellar.stub, result("j", "r"), b"x" * 100).size == 100


def test_the_per_file_limit_holds_admins_too(serve: Callable[..., Cellar]) -> None:
    cellar = serve(max_file_size=10)
    cellar.caller = ADMIN
    assert status_of(lambda: put(cellar.stub, cache("a"), b"x" * 11)).code() == EXHAUSTED


def test_usage_follows_puts_replacements_by_another_owner_and_deletes(storage: LocalStorage) -> None:
    assert storage.usage("alice-id") == 0
    storage.put(FileRef("cache", "up1", "", "a"), [b"x" * 10], owner="alice-id")
    storage.put(FileRef("cache", "up1", "", "d/b"), [b"x" * 5], owner="alice-id")
    storage.put(FileRef("result", "wf1", "j", "r"), [b"x" * 7], owner="alice-id")
    storage.put(FileRef("cache", "up2", "", "a"), [b"x" * 3], owner="bob-id")
    assert (storage.usage("alice-id"), storage.usage("bob-id")) == (22, 3)
    storage.put(FileRef("cache", "up1", "", "a"), [b"x" * 2], owner="alice-id")
    assert storage.usage("alice-id") == 14
    storage.put(FileRef("cache", "up1", "", "d/b"), [b"x" * 4], owner="bob-id")  # an admin's, say, of bob's
    assert (storage.usage("alice-id"), storage.usage("bob-id")) == (9, 7)
    storage.delete("cache", "up1")
    assert (storage.usage("alice-id"), storage.usage("bob-id")) == (7, 3)
    storage.delete("result", "wf1")
    assert storage.usage("alice-id") == 0


def test_usage_reads_only_the_owners_own_index(local_storage: LocalStorage, root: Path) -> None:
    storage = local_storage
    storage.put(FileRef("cache", "up1", "", "a"), [b"x" * 10], owner="alice-id")
    for i in range(50):
        storage.put(FileRef("cache", "up2", "", f"f{i}"), [b"x"], owner="bob-id")
    index = root / ".meta" / ".usage"
    assert sorted(p.name for p in index.iterdir()) == ["alice-id", "bob-id"]
    assert [p.relative_to(index / "alice-id").as_posix() for p in (index / "alice-id").rglob("*")
            if p.is_file()] == ["cache/up1/a"]


def test_the_standalone_server_takes_a_quota_and_signs_links_for_its_gateway(tmp_path: Path, stack: Any) -> None:
    from donut.users.v1 import users_pb2 as upb
    from donut.users.v1 import users_pb2_grpc
    from gateway.links import link_problem

    from .test_servicer import REPO, _free_port

    port = _free_port()
    (tmp_path / "service-token").write_text(stack.service_token)
    (tmp_path / "key").write_text("k" * 64 + "\n")
    users = users_pb2_grpc.UsersStub(channel(stack.endpoint, token=stack.admin_token))
    users.CreateUser(upb.CreateUserRequest(login="carol"))
    carol = users.CreateToken(upb.CreateTokenRequest(user_login="carol", name="carol")).secret
    command = [sys.executable, "-m", "cellar_svc.server", "--listen", f"127.0.0.1:{port}", "--root",
               str(tmp_path / "r"), "--users-endpoint", stack.endpoint, "--service-token-file",
               str(tmp_path / "service-token"), "--quota-bytes", "10"]
    alone = subprocess.run([*command, "--url-signing-key-file", str(tmp_path / "key")], cwd=REPO,
                           capture_output=True, text=True, timeout=30)
    assert alone.returncode == 2 and "--url-signing-key-file and --public-url go together" in alone.stderr
    process = subprocess.Popen([*command, "--url-signing-key-file", str(tmp_path / "key"), "--public-url",
                                "https://donut.example.org/"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with channel(f"127.0.0.1:{port}", token=carol) as ch:
            grpc.channel_ready_future(ch).result(timeout=20)
            stub = Stub(ch)
            assert put(stub, cache("a"), b"x" * 10).size == 10
            assert status_of(lambda: put(stub, cache("b"), b"x")).code() == EXHAUSTED
            url = stub.GetDownloadUrl(pb.GetDownloadUrlRequest(ref=cache("a"))).url
    finally:
        process.terminate()
        process.communicate(timeout=20)
    assert url.startswith("https://donut.example.org/files/cache/up1/a?expires=")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert link_problem(b"k" * 64, "cache", "up1", "", "a", query["expires"], query["signature"], time.time()) is None
