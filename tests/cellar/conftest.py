"""Fixtures for the cellar tests: a storage of each backend (local files; S3 on moto), a spy on
it, and real servers with stubs."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from cellar_svc.s3 import S3Storage
from cellar_svc.server import create_server
from cellar_svc.storage import TEMP_PREFIX, FileInfo, FileRef, LocalStorage, Storage
from donut.cellar.v1 import cellar_pb2_grpc
from donut_common.auth import SCOPE_ADMIN, Principal
from donut_common.rpc import channel

ADMIN = Principal(user_id="admin-id", login="admin", admin=True, scopes=(SCOPE_ADMIN,))


class SpyStorage:
    """A storage that reports when a Put has consumed a chunk and how each Put ended."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.chunk_seen = threading.Event()
        self.put_outcomes: queue.Queue[FileInfo | BaseException] = queue.Queue()

    def put(self, ref: FileRef, chunks: Iterable[bytes], owner: str = "") -> FileInfo:
        def watched() -> Iterator[bytes]:
            for chunk in chunks:
                yield chunk
                self.chunk_seen.set()  # the chunk has been written by now

        try:
            info = self.inner.put(ref, watched(), owner)
        except BaseException as e:
            self.put_outcomes.put(e)
            raise
        self.put_outcomes.put(info)
        return info

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def all_files(root: Path) -> list[str]:
    """Every regular file under root, relative, '/'-separated."""
    found = []
    for directory, _, files in os.walk(root):
        for name in files:
            found.append(os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/"))
    return sorted(found)


def temp_files(root: Path) -> list[str]:
    return [f for f in all_files(root) if any(s.startswith(TEMP_PREFIX) for s in f.split("/"))]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cellar"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the root, holding a secret, that must stay out of reach."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_text("secret")
    return path


@dataclass(frozen=True)
class Backend:
    """A storage, and what its backend holds underneath, to check that nothing is left behind."""

    name: str
    storage: Storage
    everything: Callable[[], list[str]]
    """Every file (local), or every object and incomplete multipart upload (S3), it holds."""
    temporaries: Callable[[], list[str]]
    """Its temporary files (local) or incomplete multipart uploads (S3)."""


def s3_backend(storage: S3Storage) -> Backend:
    def objects(prefix: str = "") -> list[str]:
        return sorted(o.object_name or "" for o in storage.client.list_objects(storage.bucket, prefix, recursive=True))

    def uploads() -> list[str]:
        return sorted(f"upload:{u.object_name}" for u in storage.client._list_multipart_uploads(storage.bucket).uploads)

    return Backend("s3", storage, lambda: objects() + uploads(), uploads)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, root: Path) -> Backend:
    """Each backend in turn: LocalStorage under `root`; S3Storage on a fresh moto bucket."""
    if request.param == "local":
        return Backend("local", LocalStorage(root), lambda: all_files(root), lambda: temp_files(root))
    return s3_backend(S3Storage.connect(request.getfixturevalue("moto_s3")(part_size=5 * 1024 * 1024)))


@pytest.fixture
def storage(backend: Backend) -> Storage:
    return backend.storage


@pytest.fixture
def local_storage(root: Path) -> LocalStorage:
    """For what only the local backend has: sidecars, symbolic links, its layout."""
    return LocalStorage(root)


@pytest.fixture
def spy(storage: Storage) -> SpyStorage:
    return SpyStorage(storage)


@pytest.fixture
def start_server(spy: SpyStorage) -> Iterator[Callable[..., str]]:
    """Starts a cellar server over the spied storage on 127.0.0.1:0; returns its endpoint."""
    servers: list[grpc.Server] = []

    def start(**options: Any) -> str:
        server, port = create_server("127.0.0.1:0", spy, principal=lambda: ADMIN, **options)
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(None)


@pytest.fixture
def endpoint(start_server: Callable[..., str]) -> str:
    return start_server()


@pytest.fixture
def grpc_channel(endpoint: str) -> Iterator[grpc.Channel]:
    with channel(endpoint) as ch:
        yield ch


@pytest.fixture
def stub(grpc_channel: grpc.Channel) -> cellar_pb2_grpc.CellarStub:
    return cellar_pb2_grpc.CellarStub(grpc_channel)
