"""A small client of the cellar service: stream a file in, stream a file out."""

from __future__ import annotations

import builtins
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import grpc

from donut.cellar.v1 import cellar_pb2 as pb
from donut.cellar.v1 import cellar_pb2_grpc
from streamed_job.files import replacing

CHUNK_BYTES = 1024 * 1024
KINDS = {"cache": pb.KIND_CACHE, "result": pb.KIND_RESULT, "archive": pb.KIND_ARCHIVE, "log": pb.KIND_LOG}

Metadata = tuple[tuple[str, str], ...]
STORAGE_AWAY = "storage unavailable: "  # how cellar's UNAVAILABLE answers begin when its storage is away


def why_unavailable(e: grpc.RpcError) -> str:
    """What an UNAVAILABLE answer of cellar says went wrong (without cellar's own prefix,
    for the caller to put its own words around it)."""
    return (e.details() or "no answer").removeprefix(STORAGE_AWAY)


class CellarClient:
    def __init__(self, channel: grpc.Channel, metadata: Metadata = ()) -> None:
        self.stub = cellar_pb2_grpc.CellarStub(channel)
        self.metadata = metadata

    def put(self, kind: str, scope: str, path: str, source: Path | BinaryIO, job: str = "",
            owner: str = "") -> pb.FileInfo:
        """Streams a file (a path, or a file already open) into cellar; stored as the
        owner's (services and admins only) or else as the caller's."""
        def messages() -> Iterator[pb.PutRequest]:
            with open(source, "rb") if isinstance(source, Path) else contextlib.nullcontext(source) as f:
                yield _header(kind, scope, path, job, owner, os.fstat(f.fileno()).st_size)
                while chunk := f.read(CHUNK_BYTES):
                    yield pb.PutRequest(data=chunk)

        return self.stub.Put(messages(), metadata=self.metadata)

    def put_chunks(self, kind: str, scope: str, path: str, chunks: Iterable[bytes], job: str = "",
                   owner: str = "") -> pb.FileInfo:
        """Streams chunks made as they are sent (of a size not known in advance) into cellar;
        with owner (services and admins only), the file is stored for that user."""
        def messages() -> Iterator[pb.PutRequest]:
            yield _header(kind, scope, path, job, owner, None)
            for chunk in chunks:
                yield pb.PutRequest(data=chunk)

        return self.stub.Put(messages(), metadata=self.metadata)

    def stat(self, kind: str, scope: str, path: str, job: str = "") -> pb.FileInfo:
        return self.stub.Stat(pb.FileRef(kind=KINDS[kind], scope=scope, job=job, path=path), metadata=self.metadata)

    def get(self, kind: str, scope: str, path: str, destination: Path, job: str = "",
            timeout: float | None = None, progress: Callable[[pb.FileInfo, bytes], None] | None = None) -> pb.FileInfo:
        """Streams the file to destination (through a fresh temporary file beside it, so a
        partial download is never left and no link planted there is followed); `progress`
        is told the file's info and each chunk written."""
        ref = pb.FileRef(kind=KINDS[kind], scope=scope, job=job, path=path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        info = None
        with replacing(destination) as out:
            for message in self.stub.Get(pb.GetRequest(ref=ref), metadata=self.metadata, timeout=timeout):
                if message.HasField("info"):
                    info = message.info
                else:
                    out.write(message.data)
                    if progress is not None and info is not None:
                        progress(info, message.data)
        assert info is not None
        return info

    def read(self, kind: str, scope: str, path: str, job: str = "", timeout: float | None = None) -> Iterator[bytes]:
        """The file's bytes as they arrive (never all in memory); closing the iterator
        early cancels the download. Errors are the call's RpcError."""
        ref = pb.FileRef(kind=KINDS[kind], scope=scope, job=job, path=path)
        call = self.stub.Get(pb.GetRequest(ref=ref), metadata=self.metadata, timeout=timeout)
        try:
            for message in call:
                if message.WhichOneof("part") == "data":
                    yield message.data
        finally:
            call.cancel()
    def download_url(self, kind: str, scope: str, path: str, job: str = "", ttl_seconds: int = 0) -> pb.DownloadUrl:
        """A link anyone may download the file from until it expires (ttl 0: cellar's default)."""
        ref = pb.FileRef(kind=KINDS[kind], scope=scope, job=job, path=path)
        url: pb.DownloadUrl = self.stub.GetDownloadUrl(pb.GetDownloadUrlRequest(ref=ref, ttl_seconds=ttl_seconds),
                                                       metadata=self.metadata)
        return url

    def delete(self, kind: str, scope: str) -> None:
        """Removes every file of the scope (services and admins only)."""
        self.stub.Delete(pb.DeleteRequest(kind=KINDS[kind], scope=scope), metadata=self.metadata)

    def list(self, kind: str, scope: str, job: str = "") -> builtins.list[pb.FileInfo]:
        return list(self.stub.List(pb.ListRequest(kind=KINDS[kind], scope=scope, job=job),
                                   metadata=self.metadata).files)


def _header(kind: str, scope: str, path: str, job: str, owner: str, size: int | None) -> pb.PutRequest:
    return pb.PutRequest(header=pb.FileRef(kind=KINDS[kind], scope=scope, job=job, path=path), owner=owner, size=size)
