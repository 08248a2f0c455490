"""What only the S3 backend has to prove: multipart uploads that leave nothing behind, the
sweep, concurrent writers, a server that goes away and comes back (moto), and what moto does
not check: credentials and presigned URLs' expiry (s3rver)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cellar_svc.s3 import S3Settings, S3Storage
from cellar_svc.server import create_server
from cellar_svc.storage import FileRef
from donut.cellar.v1 import cellar_pb2 as pb
from donut.cellar.v1 import cellar_pb2_grpc
from donut_common.errors import Unavailable
from donut_common.rpc import channel
from tests.conftest import MotoServer

from .conftest import ADMIN, Backend, s3_backend

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
PART = 5 * MiB  # the smallest part S3 takes: uploads of a few MiB already go in parts


def cache(path: str, scope: str = "up1") -> FileRef:
    return FileRef("cache", scope, "", path)


def read(storage: S3Storage, ref: FileRef) -> bytes:
    return b"".join(storage.open(ref)[1])


def chunked(data: bytes, size: int = MiB) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.fixture
def s3(moto_s3: Callable[..., S3Settings]) -> Backend:
    return s3_backend(S3Storage.connect(moto_s3(part_size=PART)))


def test_a_cut_off_multipart_upload_leaves_no_object_no_temp_and_no_upload(s3: Backend) -> None:
    s3.storage.put(cache("kept"), [b"old"], owner="u1")
    before = s3.everything()
    seen_in_progress = []

    def cut_off() -> Iterator[bytes]:
        yield from chunked(os.urandom(2 * PART + MiB))
        seen_in_progress.extend(s3.temporaries())  # a part or two are in the bucket by now
        raise ConnectionError("client went away")

    for ref in (cache("kept"), cache("new"), cache("deep/new")):
        with pytest.raises(ConnectionError, match="client went away"):
            s3.storage.put(ref, cut_off(), owner="u2")

    assert any(name.startswith("upload:files/cache/up1/") for name in seen_in_progress), seen_in_progress
    assert s3.temporaries() == []
    assert s3.everything() == before
    assert read(s3.storage, cache("kept")) == b"old"  # type: ignore[arg-type]
    assert s3.storage.owners("cache", "up1") == {"u1"}


def test_a_multipart_upload_round_trips(s3: Backend) -> None:
    data = os.urandom(2 * PART + 12345)
    info = s3.storage.put(cache("big.bin"), chunked(data, 100_000), owner="u1")
    assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert read(s3.storage, cache("big.bin")) == data  # type: ignore[arg-type]
    assert b"".join(s3.storage.open(cache("big.bin"), PART - 10, PART)[1]) == data[PART - 10 : 2 * PART - 10]
    assert s3.storage.stat(cache("big.bin")) == info
    assert s3.temporaries() == []
    assert s3.storage.usage("u1") == len(data)


@pytest.mark.parametrize("damage", ["none", "missing", "another version's", "wrong sum"])
def test_the_sum_of_a_file_written_in_parts_is_kept_beside_it_for_its_version(s3: Backend, damage: str) -> None:
    storage: S3Storage = s3.storage  # type: ignore[assignment]
    data = os.urandom(PART + 1)
    stored = storage.put(cache("big"), chunked(data), owner="u1")
    sums = storage.client.stat_object(storage.bucket, "sums/cache/up1/big")
    assert (sums.metadata or {})["x-amz-meta-sha256"] == hashlib.sha256(data).hexdigest()
    expected = stored.sha256
    if damage == "missing":  # a crash between completing the upload and writing its sum
        storage.client.remove_object(storage.bucket, "sums/cache/up1/big")
    elif damage == "another version's":  # a racing writer's, written last
        storage.client.put_object(storage.bucket, "sums/cache/up1/big", io.BytesIO(b""), 0,
                                  metadata={"etag": "0123", "sha256": "f" * 64})
    elif damage == "wrong sum":  # for this very version: trusted, not re-hashed
        storage.client.put_object(storage.bucket, "sums/cache/up1/big", io.BytesIO(b""), 0,
                                  metadata={"etag": sums.metadata["x-amz-meta-etag"], "sha256": "f" * 64})
        expected = "f" * 64

    assert storage.stat(cache("big")).sha256 == expected
    assert storage.stat(cache("big")) == dataclasses.replace(stored, sha256=expected)  # the rest as stored
    remade = storage.client.stat_object(storage.bucket, "sums/cache/up1/big")
    assert (remade.metadata or {})["x-amz-meta-sha256"] == expected  # written again when it had to be hashed


def test_sweep_aborts_stale_incomplete_uploads_and_removes_nothing_else(s3: Backend) -> None:
    storage: S3Storage = s3.storage  # type: ignore[assignment]
    storage.put(cache("f"), [b"kept"], owner="u1")
    storage.put(cache("big"), chunked(os.urandom(PART + 1)), owner="u1")
    storage.client._create_multipart_upload(storage.bucket, "files/cache/up1/left-by-a-crash", {})
    storage.client._create_multipart_upload(storage.bucket, "files/result/wf1/j/another", {})
    kept = [name for name in s3.everything() if not name.startswith("upload:")]
    assert len(kept) == 6  # two files, big's sum, an owner marker, two owned markers
    assert len(s3.temporaries()) == 2

    # (moto says every upload began in 2010: it tells apart ages of years, not hours)
    assert storage.sweep(older_than=100 * 365 * 86400) == 0
    assert len(s3.temporaries()) == 2
    assert storage.sweep(older_than=86400) == 2

    assert s3.temporaries() == []
    assert s3.everything() == kept
    assert read(storage, cache("f")) == b"kept"


@pytest.mark.parametrize("size", [1000, PART + 1000], ids=["one part", "multipart"])
def test_the_last_write_to_complete_wins_and_its_content_matches_its_sha256(s3: Backend, size: int) -> None:
    storage = s3.storage
    versions = {name: os.urandom(size) for name in ("slow", "fast")}
    release, started = threading.Event(), threading.Event()
    outcomes: dict[str, Any] = {}

    def slow() -> Iterator[bytes]:
        yield versions["slow"][:100]
        started.set()
        release.wait(30)
        yield versions["slow"][100:]

    writer = threading.Thread(target=lambda: outcomes.setdefault("slow", storage.put(cache("f"), slow())))
    writer.start()
    assert started.wait(30)
    outcomes["fast"] = storage.put(cache("f"), chunked(versions["fast"]))  # begun later, completes first
    assert read(storage, cache("f")) == versions["fast"]  # type: ignore[arg-type]
    release.set()
    writer.join(30)

    info, chunks = storage.open(cache("f"))
    content = b"".join(chunks)
    assert content == versions["slow"]  # the last to complete, whole
    assert info == outcomes["slow"] and info.sha256 == hashlib.sha256(content).hexdigest()
    assert s3.temporaries() == []
    assert storage.stat(cache("f")) == info


def test_concurrent_writers_never_mix(s3: Backend) -> None:
    storage = s3.storage
    contents = [bytes([i]) * (PART + i) for i in range(4)]
    barrier = threading.Barrier(len(contents))

    def write(data: bytes) -> None:
        barrier.wait()
        storage.put(cache("f"), chunked(data))

    threads = [threading.Thread(target=write, args=(data,)) for data in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    info, chunks = storage.open(cache("f"))
    content = b"".join(chunks)
    assert content in contents
    assert (info.size, info.sha256) == (len(content), hashlib.sha256(content).hexdigest())
    assert s3.temporaries() == []


def test_storage_stopped_mid_run_is_unavailable_then_recovers(moto_s3: Callable[..., S3Settings]) -> None:
    server = MotoServer()  # its own, to stop
    try:
        settings = moto_s3(endpoint=server.endpoint)
        storage = S3Storage.connect(settings)
        storage.put(cache("f"), [b"before"], owner="u1")
        grpc_server, port = create_server("127.0.0.1:0", storage, principal=lambda: ADMIN)
        grpc_server.start()
        stub = cellar_pb2_grpc.CellarStub(ch := channel(f"127.0.0.1:{port}"))
        server.stop()

        calls: list[Callable[[], object]] = [
            lambda: storage.stat(cache("f")), lambda: storage.open(cache("f")),
            lambda: storage.put(cache("g"), [b"x"], owner="u1"), lambda: storage.list("cache", "up1"),
            lambda: storage.owners("cache", "up1"), lambda: storage.usage("u1"),
            lambda: storage.delete("cache", "up1"), lambda: storage.sweep(0),
            lambda: storage.download_url(cache("f"), 60),
        ]
        for call in calls:
            with pytest.raises(Unavailable, match="^storage unavailable: ") as e:
                call()
            assert "\n" not in str(e.value)
        with pytest.raises(grpc.RpcError) as rpc_error:
            stub.Stat(pb.FileRef(kind=pb.KIND_CACHE, scope="up1", path="f"))
        assert rpc_error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (rpc_error.value.details() or "").startswith("storage unavailable: ")

        server.start()  # same port: the same storage object recovers by itself
        assert read(storage, cache("f")) == b"before"
        storage.put(cache("g"), [b"after"], owner="u1")
        assert {i.ref.path for i in storage.list("cache", "up1")} == {"f", "g"}
        assert stub.Stat(pb.FileRef(kind=pb.KIND_CACHE, scope="up1", path="g")).size == 5
        ch.close()
        grpc_server.stop(None)
    finally:
        server.stop()


def test_an_unreachable_endpoint_is_refused_at_start_in_one_line(moto_s3: Callable[..., S3Settings]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(Unavailable) as e:
        S3Storage.connect(moto_s3(endpoint=closed))
    message = str(e.value)
    assert message.startswith("storage unavailable: bucket test-") and closed in message, message
    assert "\n" not in message and "connect" in message.lower()


def test_wrong_credentials_are_refused_at_start_in_one_line(s3rver: Callable[..., S3Settings]) -> None:
    with pytest.raises(Unavailable) as e:  # (s3rver checks access keys, not signatures)
        S3Storage.connect(s3rver(access_key="wrong"))
    message = str(e.value)
    assert message.startswith("storage unavailable: bucket test-") and "\n" not in message, message
    assert "InvalidAccessKeyId" in message
    S3Storage.connect(s3rver())  # the right ones work


def test_presigned_urls_work_until_they_expire(s3rver: Callable[..., S3Settings]) -> None:
    storage = S3Storage.connect(s3rver())
    storage.put(cache("f.txt"), [b"shared"], owner="u1")
    lasting = storage.download_url(cache("f.txt"), 600)
    short = storage.download_url(cache("f.txt"), 1)
    assert lasting and short
    with urllib.request.urlopen(short, timeout=10) as response:
        assert response.read() == b"shared"
    time.sleep(2.1)  # presigned URLs carry their expiry: only time passing makes one stale
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(short, timeout=10)
    assert e.value.code == 403
    with urllib.request.urlopen(lasting, timeout=10) as response:
        assert response.read() == b"shared"


def _serve(tmp_path: Path, users_endpoint: str, token: str, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    token_file = tmp_path / "service-token"
    token_file.write_text(token)
    return subprocess.Popen([sys.executable, "-m", "cellar_svc.server", "--users-endpoint", users_endpoint,
                             "--service-token-file", str(token_file), *args], cwd=REPO, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_the_standalone_server_keeps_files_in_the_bucket(
    tmp_path: Path, stack: Any, moto_s3: Callable[..., S3Settings]
) -> None:
    settings = moto_s3()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = _serve(tmp_path, stack.endpoint, stack.service_token, "--listen", f"127.0.0.1:{port}",
                     "--storage", "s3", "--s3-endpoint", settings.endpoint, "--s3-bucket", settings.bucket,
                     "--s3-prefix", "cellar", env={"DONUT_S3_ACCESS_KEY": "k", "DONUT_S3_SECRET_KEY": "s"})
    try:
        with channel(f"127.0.0.1:{port}", token=stack.admin_token) as ch:
            grpc.channel_ready_future(ch).result(timeout=20)
            ref = pb.FileRef(kind=pb.KIND_CACHE, scope="up1", path="f")
            requests = iter([pb.PutRequest(header=ref), pb.PutRequest(data=b"in the bucket")])
            assert cellar_pb2_grpc.CellarStub(ch).Put(requests).size == 13
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert (process.returncode, out, err) == (0, b"", b"")
    storage = S3Storage.connect(dataclasses.replace(settings, prefix="cellar/"))
    assert read(storage, cache("f")) == b"in the bucket"


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--storage", "s3", "--s3-endpoint", "http://127.0.0.1:1", "--s3-bucket", "donut"],
     {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"},
     "cellar: cannot start: storage unavailable: bucket donut at http://127.0.0.1:1: cannot connect to 127.0.0.1:1"),
    (["--storage", "s3", "--s3-endpoint", "http://127.0.0.1:1", "--s3-bucket", "donut"],
     {"DONUT_S3_ACCESS_KEY": "", "AWS_ACCESS_KEY_ID": ""}, "error: s3 credentials: set DONUT_S3_ACCESS_KEY"),
    (["--root", "r", "--s3-bucket", "donut"], {}, "error: --s3-bucket: only with --storage s3"),
    (["--storage", "s3", "--s3-bucket", "donut"], {}, "error: --storage s3 needs --s3-endpoint"),
])
def test_the_standalone_server_refuses_a_storage_it_cannot_use(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    process = _serve(tmp_path, "127.0.0.1:1", "token", "--listen", "127.0.0.1:0", *args, env=env)
    _, err = process.communicate(timeout=60)
    assert process.returncode in (1, 2)
    last = err.decode().splitlines()[-1]
    assert message in last and "Traceback" not in err.decode(), err.decode()


def test_a_server_that_cannot_list_uploads_has_none_to_sweep(s3rver: Callable[..., S3Settings]) -> None:
    storage = S3Storage.connect(s3rver(part_size=PART))
    storage.put(cache("big"), chunked(os.urandom(PART + 1)))  # s3rver refuses ListMultipartUploads
    assert storage.sweep(older_than=0) == 0
    assert storage.stat(cache("big")).size == PART + 1
