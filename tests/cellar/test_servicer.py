"""The Cellar service over a real server on 127.0.0.1:0, through real stubs, on each storage backend."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cellar_svc.servicer import MAX_CHUNK
from donut.cellar.v1 import cellar_pb2 as pb
from donut.cellar.v1 import cellar_pb2_grpc
from donut_common.rpc import channel

from .conftest import Backend, SpyStorage

Stub = cellar_pb2_grpc.CellarStub
MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]


def cache(path: str, scope: str = "up1") -> pb.FileRef:
    return pb.FileRef(kind=pb.KIND_CACHE, scope=scope, path=path)


def result(job: str, path: str, scope: str = "wf1") -> pb.FileRef:
    return pb.FileRef(kind=pb.KIND_RESULT, scope=scope, job=job, path=path)


def put(stub: Stub, ref: pb.FileRef, data: bytes, chunk: int = 64 * 1024) -> pb.FileInfo:
    def requests() -> Iterator[pb.PutRequest]:
        yield pb.PutRequest(header=ref)
        for i in range(0, len(data), chunk):
            yield pb.PutRequest(data=data[i : i + chunk])

    info: pb.FileInfo = stub.Put(requests())
    return info


def get(
    stub: Stub, ref: pb.FileRef, offset: int = 0, length: int = 0
) -> tuple[pb.FileInfo, list[bytes]]:
    responses = list(stub.Get(pb.GetRequest(ref=ref, offset=offset, length=length)))
    assert responses[0].WhichOneof("part") == "info"
    assert all(r.WhichOneof("part") == "data" for r in responses[1:])
    return responses[0].info, [r.data for r in responses[1:]]


def status_of(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def test_five_mib_round_trip(stub: Stub) -> None:
    data = os.urandom(5 * MiB + 123)
    expected_sha = hashlib.sha256(data).hexdigest()

    info = put(stub, cache("big/blob.bin"), data)

    assert (info.size, info.sha256) == (len(data), expected_sha)
    assert info.ref == cache("big/blob.bin")
    assert abs(info.created_at.ToNanoseconds() / 1e9 - time.time()) < 60
    got_info, chunks = get(stub, cache("big/blob.bin"))
    assert got_info == info
    assert all(0 < len(c) <= MAX_CHUNK for c in chunks) and len(chunks) == 6
    joined = b"".join(chunks)
    assert hashlib.sha256(joined).hexdigest() == expected_sha and joined == data


def test_ranged_get(stub: Stub) -> None:
    data = os.urandom(3 * MiB)
    info = put(stub, cache("f"), data)
    cases = [(10, 100), (MiB - 5, MiB + 10), (2 * MiB, 0), (len(data) - 1, 50), (len(data), 0)]
    for offset, length in cases:
        got_info, chunks = get(stub, cache("f"), offset, length)
        assert got_info == info  # the whole file's info, not the range's
        end = len(data) if length == 0 else offset + length
        assert b"".join(chunks) == data[offset:end]
        assert all(len(c) <= MAX_CHUNK for c in chunks)


def test_stat(stub: Stub) -> None:
    info = put(stub, result("train", "model.bin"), b"weights")
    assert stub.Stat(result("train", "model.bin")) == info
    assert info.sha256 == hashlib.sha256(b"weights").hexdigest()
    assert info.created_at.seconds > 0


def test_list_by_kind_scope_and_job_sorted_by_path(stub: Stub) -> None:
    put(stub, result("train", "z.log"), b"1")
    put(stub, result("train", "a/model.bin"), b"2")
    put(stub, result("eval", "m.json"), b"3")
    put(stub, result("eval", "x", scope="wf2"), b"4")
    put(stub, cache("setup.py", scope="wf1"), b"5")

    def listed(kind: pb.Kind, scope: str, job: str = "") -> list[tuple[str, str]]:
        response = stub.List(pb.ListRequest(kind=kind, scope=scope, job=job))
        return [(f.ref.job, f.ref.path) for f in response.files]

    assert listed(pb.KIND_RESULT, "wf1") == [
        ("train", "a/model.bin"),
        ("eval", "m.json"),
        ("train", "z.log"),
    ]
    assert listed(pb.KIND_RESULT, "wf1", "train") == [("train", "a/model.bin"), ("train", "z.log")]
    assert listed(pb.KIND_RESULT, "wf2") == [("eval", "x")]
    assert listed(pb.KIND_CACHE, "wf1") == [("", "setup.py")]
    assert listed(pb.KIND_ARCHIVE, "wf1") == []
    files = stub.List(pb.ListRequest(kind=pb.KIND_RESULT, scope="wf1", job="eval")).files
    assert list(files) == [stub.Stat(result("eval", "m.json"))]


def test_overwrite(stub: Stub) -> None:
    put(stub, cache("f"), b"first, longer version")
    second = put(stub, cache("f"), b"second")
    info, chunks = get(stub, cache("f"))
    assert (info, b"".join(chunks)) == (second, b"second")
    assert second.size == 6
    assert len(stub.List(pb.ListRequest(kind=pb.KIND_CACHE, scope="up1")).files) == 1


def test_not_found(stub: Stub) -> None:
    for call in (
        lambda: stub.Stat(cache("missing.txt")),
        lambda: list(stub.Get(pb.GetRequest(ref=cache("missing.txt")))),
    ):
        error = status_of(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "cache/up1/missing.txt" in error.details()


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (cache("../x"), "path: must not contain '..'"),
        (cache("a/../../x"), "path: must not contain '..'"),
        (cache("/abs"), "path: must be relative"),
        (cache(""), "path: required"),
        (cache("a\0b"), "path: must not contain NUL"),
        (cache("f", scope="bad scope"), "scope: must match"),
        (cache("f", scope=""), "scope: must match"),
        (pb.FileRef(scope="up1", path="f"), "kind: required"),
        (pb.FileRef(kind=17, scope="up1", path="f"), "kind: unknown value 17"),  # type: ignore[arg-type]
        (result("", "f"), "job: must match"),
        (pb.FileRef(kind=pb.KIND_ARCHIVE, scope="wf1", job="j", path="f"), "job: only results"),
    ],
)
def test_invalid_refs(stub: Stub, backend: Backend, ref: pb.FileRef, message: str) -> None:
    for call in (
        lambda: put(stub, ref, b"data"),
        lambda: stub.Stat(ref),
        lambda: list(stub.Get(pb.GetRequest(ref=ref))),
    ):
        error = status_of(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith(message), error.details()
    assert backend.everything() == []


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        ([], "Put: the first message must be the header"),
        (
            [pb.PutRequest(data=b"x"), pb.PutRequest(header=cache("f"))],
            "Put: the first message must be the header",
        ),
        ([pb.PutRequest()], "Put: the first message must be the header"),
        (
            [
                pb.PutRequest(header=cache("f")),
                pb.PutRequest(data=b"x"),
                pb.PutRequest(header=cache("g")),
            ],
            "Put: only the first message may be the header",
        ),
    ],
)
def test_put_framing(stub: Stub, backend: Backend, requests: list[pb.PutRequest], message: str) -> None:
    error = status_of(lambda: stub.Put(iter(requests)))
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert backend.everything() == []


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            pb.GetRequest(ref=cache("f"), offset=11),
            "offset: 11 is beyond the end of cache/up1/f (10 bytes)",
        ),
        (pb.GetRequest(ref=cache("f"), offset=-1), "offset: must not be negative"),
        (pb.GetRequest(ref=cache("f"), length=-1), "length: must not be negative"),
    ],
)
def test_bad_ranges(stub: Stub, request_: pb.GetRequest, message: str) -> None:
    put(stub, cache("f"), b"0123456789")
    error = status_of(lambda: list(stub.Get(request_)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(message)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.ListRequest(scope="wf1"), "kind: required"),
        (pb.ListRequest(kind=pb.KIND_RESULT, scope="../wf1"), "scope: must match"),
        (pb.ListRequest(kind=pb.KIND_CACHE, scope="up1", job="j"), "job: only results"),
    ],
)
def test_invalid_lists(stub: Stub, request_: pb.ListRequest, message: str) -> None:
    error = status_of(lambda: stub.List(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(message)


def test_the_size_limit(start_server: Callable[..., str], backend: Backend) -> None:
    with channel(start_server(max_file_size=MiB)) as ch:
        stub = Stub(ch)
        assert put(stub, cache("fits"), b"x" * MiB).size == MiB
        error = status_of(lambda: put(stub, cache("too-big"), b"x" * (MiB + 1)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "Put: file larger than the per-file limit of 1 MiB (1048576 bytes)"
    assert [f for f in backend.everything() if "too-big" in f] == []
    assert [i.ref.path for i in backend.storage.list("cache", "up1")] == ["fits"]
    assert backend.temporaries() == []


@pytest.mark.parametrize("how", ["client generator raises", "call cancelled"])
def test_a_put_cut_off_mid_stream_leaves_nothing(
    stub: Stub, spy: SpyStorage, backend: Backend, how: str
) -> None:
    # Repeated: gRPC sometimes ends a cancelled call's request stream as if it were complete.
    for attempt in range(20):
        spy.chunk_seen.clear()
        release = threading.Event()
        ref = cache(f"dir/partial-{attempt}.bin")

        def requests() -> Iterator[pb.PutRequest]:
            yield pb.PutRequest(header=ref)  # noqa: B023 - consumed within this iteration
            yield pb.PutRequest(data=b"x" * 100_000)
            release.wait(10)  # noqa: B023
            if how == "client generator raises":
                raise RuntimeError("the client's source broke")
            yield pb.PutRequest(data=b"never sent")

        future = stub.Put.future(requests())
        assert spy.chunk_seen.wait(10), "the server never got the first chunk"
        if backend.name == "local":  # S3 holds a first part in memory
            assert backend.temporaries(), "the partial upload should be in a temp file by now"
        if how == "call cancelled":
            future.cancel()
        release.set()

        outcome = spy.put_outcomes.get(timeout=10)  # the server-side Put has ended
        assert isinstance(outcome, BaseException), f"attempt {attempt} stored {outcome}"
        with pytest.raises((grpc.RpcError, grpc.FutureCancelledError)):
            future.result(timeout=10)
        assert backend.temporaries() == []
        assert status_of(lambda: stub.Stat(ref)).code() == grpc.StatusCode.NOT_FOUND  # noqa: B023
    assert backend.everything() == []


def test_a_planted_symlink_is_refused(stub: Stub, backend: Backend, root: Path, outside: Path) -> None:
    if backend.name != "local":
        return  # no links in a bucket
    put(stub, cache("ok"), b"fine")
    (root / "cache" / "up1" / "evil").symlink_to(outside)
    (root / "cache" / "up1" / "leak").symlink_to(outside / "secret.txt")

    error = status_of(lambda: put(stub, cache("evil/planted"), b"x"))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    for ref in (cache("leak"), cache("evil/secret.txt")):
        get_error = status_of(lambda: list(stub.Get(pb.GetRequest(ref=ref))))  # noqa: B023
        stat_error = status_of(lambda: stub.Stat(ref))  # noqa: B023
        assert get_error.code() == stat_error.code() == grpc.StatusCode.PERMISSION_DENIED
    files = stub.List(pb.ListRequest(kind=pb.KIND_CACHE, scope="up1")).files
    assert [f.ref.path for f in files] == ["ok"]
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_health_and_reflection(grpc_channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(grpc_channel)
    for service in ("", "donut.cellar.v1.Cellar"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    reflection = reflection_pb2_grpc.ServerReflectionStub(grpc_channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "donut.cellar.v1.Cellar" in names


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_main_serves_and_stops_cleanly_on_a_signal(tmp_path: Path, signum: int, stack: Any) -> None:
    """A standalone cellar, as deployed in a cluster: callers' tokens are verified by the
    users service of another server (here a whole stack's)."""
    port = _free_port()
    token_file = tmp_path / "service-token"
    token_file.write_text(stack.service_token)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cellar_svc.server",
            "--listen",
            f"127.0.0.1:{port}",
            "--root",
            str(tmp_path / "r"),
            "--users-endpoint",
            stack.endpoint,
            "--service-token-file",
            str(token_file),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        with channel(f"127.0.0.1:{port}") as anonymous:
            grpc.channel_ready_future(anonymous).result(timeout=20)
            refused = status_of(lambda: put(Stub(anonymous), cache("g"), b"no"))
            assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        with channel(f"127.0.0.1:{port}", token=stack.admin_token) as ch:
            assert put(Stub(ch), cache("f"), b"hi").size == 2
        process.send_signal(signum)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, err.decode()
    assert (out, err) == (b"", b"")  # quiet by default
    assert (tmp_path / "r" / "cache" / "up1" / "f").read_bytes() == b"hi"


def test_a_put_shorter_than_its_declared_size_is_not_stored(stub: Stub, backend: Backend) -> None:
    requests = [pb.PutRequest(header=cache("short"), size=10), pb.PutRequest(data=b"12345")]
    error = status_of(lambda: stub.Put(iter(requests)))
    assert error.code() == grpc.StatusCode.UNAVAILABLE and "cut off" in (error.details() or "")
    assert backend.everything() == []
    whole = [pb.PutRequest(header=cache("whole"), size=5), pb.PutRequest(data=b"12345")]
    assert stub.Put(iter(whole)).size == 5


def test_a_put_longer_than_its_declared_size_is_refused_at_once(stub: Stub, backend: Backend) -> None:
    def requests() -> Any:
        yield pb.PutRequest(header=cache("long"), size=4)
        for _ in range(1000):  # far more than declared
            yield pb.PutRequest(data=b"12345")

    error = status_of(lambda: stub.Put(requests()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more data than the 4 bytes declared" in (error.details() or "")
    assert backend.everything() == []


def test_a_cut_off_upload_leaves_no_directory_to_clash_with_later(stub: Stub, backend: Backend) -> None:
    requests = [pb.PutRequest(header=cache("x/y/z"), size=10), pb.PutRequest(data=b"12345")]
    assert status_of(lambda: stub.Put(iter(requests))).code() == grpc.StatusCode.UNAVAILABLE
    assert [f for f in backend.everything() if "/x" in f] == []
    assert put(stub, cache("x"), b"a file now").size == 10
