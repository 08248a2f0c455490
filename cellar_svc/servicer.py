"""The gRPC face of the cellar: maps `donut.cellar.v1` messages to the `Storage` port and back.

Kept thin on purpose: names are validated and files handled in `storage`, domain errors
become statuses in `donut_common.rpc.translate_errors`. What is left here is conversion and the
stream framing: the Put header comes first, uploads have a size limit, Get sends the info
first and then chunks of at most MAX_CHUNK bytes.

Limits: a file may not pass the per-file maximum, nor, with a quota, a user's files
together the per-user quota (services' and admins' writes aside; a job's results count
for the workflow's owner, who they are stored for). Both are refused with
RESOURCE_EXHAUSTED as soon as they are known to be passed: at the header when it declares
the size, else once the streamed bytes pass them.

Download links: the storage's own (presigned, on S3), else a link of the gateway signed
here (`gateway.links`), for whoever may read the file.

A Put commits only if the upload is whole: it has the size declared with the header, or,
for a client that declares none, the call is still alive once the request stream has
ended (the sync gRPC server can end the stream of a cancelled call just before it reports
the cancellation, so such a Put waits up to `cancel_grace` seconds for that report).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import grpc

from cellar_svc.storage import FileInfo, FileRef, Storage, no_such_file
from donut.cellar.v1 import cellar_pb2 as pb
from donut.cellar.v1 import cellar_pb2_grpc
from donut_common import names
from donut_common.auth import Principal, current_principal
from donut_common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Problem,
    ResourceExhausted,
    Unavailable,
)
from donut_common.rpc import translate_errors
from gateway.links import LinkSigner
from streamed_job.timestamps import timestamp

MiB = 1024 * 1024
GiB = 1024 * MiB
DEFAULT_MAX_FILE_SIZE = 5 * GiB
MAX_CHUNK = MiB
CANCEL_GRACE_SECONDS = 0.005
QUOTA_KINDS = ("cache", "result")  # what users store; archives and logs are the system's copies
DEFAULT_LINK_SECONDS = 3600
MAX_LINK_SECONDS = 7 * 24 * 3600
NO_GATEWAY = "no gateway to serve download links"

_KIND_NAMES: dict[pb.Kind.ValueType, str] = {value: pb.Kind.Name(value).removeprefix("KIND_").lower()
                                             for value in pb.Kind.values() if value != pb.KIND_UNSPECIFIED}
_KIND_VALUES: dict[str, pb.Kind.ValueType] = {name: value for value, name in _KIND_NAMES.items()}


def kind_from_pb(kind: pb.Kind.ValueType) -> str:
    if kind == pb.KIND_UNSPECIFIED:
        raise InvalidArgument([Problem("kind", "required")])
    if kind not in _KIND_NAMES:
        raise InvalidArgument([Problem("kind", f"unknown value {kind}")])
    return _KIND_NAMES[kind]


def ref_from_pb(ref: pb.FileRef) -> FileRef:
    return FileRef(kind=kind_from_pb(ref.kind), scope=ref.scope, job=ref.job, path=ref.path)


def ref_to_pb(ref: FileRef) -> pb.FileRef:
    return pb.FileRef(kind=_KIND_VALUES[ref.kind], scope=ref.scope, job=ref.job, path=ref.path)


def info_to_pb(info: FileInfo) -> pb.FileInfo:
    return pb.FileInfo(
        ref=ref_to_pb(info.ref), size=info.size, sha256=info.sha256, created_at=timestamp(info.created_at),
        owner=info.owner,
    )


def _cut_off() -> Unavailable:
    return Unavailable("Put: the upload was cut off before its end")


def _owner(caller: Principal, named: str) -> str:
    """Whom a Put stores the file for: the caller, or the user a service (or an admin)
    names, such as the owner of the workflow whose archive a service stores."""
    if not named:
        return caller.user_id
    if not (caller.is_service or caller.is_admin):
        raise PermissionDenied("Put: only services and admins store files for another user (owner)")
    if not names.matches(names.UPLOAD_ID, named):
        raise InvalidArgument([Problem("owner", "must be a user id")])
    return named


def _size_text(size: int) -> str:
    for unit, name in ((GiB, "GiB"), (MiB, "MiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name} ({size} bytes)"
    return f"{size} bytes"


@dataclass(frozen=True)
class _Room:
    """What a user's quota leaves them."""

    quota: int
    used: int

    @property
    def bytes(self) -> int:
        return max(0, self.quota - self.used)

    def passed(self) -> ResourceExhausted:
        return ResourceExhausted(f"Put: over the per-user quota of {_size_text(self.quota)} "
                                 f"({self.used} bytes in use)")


@translate_errors
class CellarServicer(cellar_pb2_grpc.CellarServicer):
    def __init__(
        self,
        storage: Storage,
        *,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
        cancel_grace: float = CANCEL_GRACE_SECONDS,
        principal: Callable[[], Principal] = current_principal,
        quota_bytes: int | None = None,
        links: LinkSigner | None = None,
    ) -> None:
        self._storage = storage
        self._max_file_size = max_file_size
        self._quota_bytes = quota_bytes
        self._links = links
        self._cancel_grace = cancel_grace
        self._principal = principal

    # Who may touch what: files belong to the user who stored them (a job's results to the
    # workflow's owner, whose job token stored them; a job's logs to the owner dagger names
    # when it stores them); admins and services see everything.

    def _check_write(self, caller: Principal, ref: FileRef) -> None:
        if caller.is_admin or caller.is_service:
            return
        if ref.kind == "cache" and caller.acts_as_user:
            # an upload belongs to whoever stored its first file
            if self._storage.owners("cache", ref.scope) <= {caller.user_id}:
                return
        elif ref.kind == "result" and caller.job == (ref.scope, ref.job):
            return
        raise PermissionDenied(f"you may not store {ref.kind} files in {ref.scope}")

    def _may_read(self, caller: Principal, info: FileInfo) -> bool:
        ref = info.ref
        return (caller.is_admin or caller.is_service or (caller.acts_as_user and info.owner == caller.user_id)
                or (ref.kind == "cache" and caller.may_read_cache(ref.scope))
                or (ref.kind == "result" and caller.job == (ref.scope, ref.job)))

    def _readable(self, info: FileInfo) -> FileInfo:
        """The file, if the caller may read it; to anyone else it does not exist (in the
        same words as a missing file, so a name says nothing of what is stored)."""
        if not self._may_read(self._principal(), info):
            raise no_such_file(info.ref)
        return info

    def Put(
        self, request_iterator: Iterable[pb.PutRequest], context: grpc.ServicerContext
    ) -> pb.FileInfo:
        requests = iter(request_iterator)
        try:
            first = next(requests, None)
            if first is None or first.WhichOneof("part") != "header":
                raise InvalidArgument("Put: the first message must be the header")
            caller = self._principal()
            ref = ref_from_pb(first.header)
            self._check_write(caller, ref)
            owner = _owner(caller, first.owner)
            declared = first.size if first.HasField("size") else None
            if declared is not None and declared < 0:
                raise InvalidArgument([Problem("size", f"must not be negative (got {declared})")])
            if declared is not None and declared > self._max_file_size:
                raise self._too_large()
            room = self._room(caller, ref)
            if room is not None and declared is not None and declared > room.bytes:
                raise room.passed()
            info = self._storage.put(ref, self._data(requests, context, declared, room), owner=owner)
        except grpc.RpcError:
            # the client cancelled or went away; storage has dropped the partial file
            raise _cut_off() from None
        return info_to_pb(info)

    def _too_large(self) -> ResourceExhausted:
        return ResourceExhausted(f"Put: file larger than the per-file limit of {_size_text(self._max_file_size)}")

    def _room(self, caller: Principal, ref: FileRef) -> _Room | None:
        """What the caller's quota leaves for this file (None: no quota holds them): the
        version it replaces, if theirs, counts out."""
        if self._quota_bytes is None or caller.is_admin or caller.is_service:
            return None
        used = self._storage.usage(caller.user_id, QUOTA_KINDS)
        try:
            replaced = self._storage.stat(ref)
        except NotFound:
            replaced = None
        if replaced is not None and replaced.owner == caller.user_id:
            used = max(0, used - replaced.size)
        return _Room(self._quota_bytes, used)

    def _data(
        self, requests: Iterator[pb.PutRequest], context: grpc.ServicerContext, declared: int | None,
        room: _Room | None,
    ) -> Iterator[bytes]:
        size = 0
        for request in requests:
            if request.WhichOneof("part") == "header":
                raise InvalidArgument("Put: only the first message may be the header")
            size += len(request.data)
            if declared is not None and size > declared:
                raise InvalidArgument(f"Put: more data than the {declared} bytes declared in the header")
            if size > self._max_file_size:
                raise self._too_large()
            if room is not None and size > room.bytes:
                raise room.passed()
            yield request.data
        if declared is not None:
            if size != declared:
                raise _cut_off()
            return
        # gRPC may end the request stream of a cancelled call a moment before it reports the
        # cancellation, so a cut-off upload can look complete: give that report a moment.
        terminated = threading.Event()
        if context.add_callback(terminated.set):
            terminated.wait(self._cancel_grace)
        if not context.is_active():
            raise _cut_off()

    def Get(
        self, request: pb.GetRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.GetResponse]:
        ref = ref_from_pb(request.ref)
        self._readable(self._storage.stat(ref))  # first: the range is checked against the size
        info, chunks = self._storage.open(ref, request.offset, request.length)
        try:
            self._readable(info)  # the version opened (it may have been replaced meanwhile)
            yield pb.GetResponse(info=info_to_pb(info))
            for chunk in chunks:
                for start in range(0, len(chunk), MAX_CHUNK):
                    yield pb.GetResponse(data=chunk[start : start + MAX_CHUNK])
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def Stat(self, request: pb.FileRef, context: grpc.ServicerContext) -> pb.FileInfo:
        return info_to_pb(self._readable(self._storage.stat(ref_from_pb(request))))

    def List(self, request: pb.ListRequest, context: grpc.ServicerContext) -> pb.ListResponse:
        caller = self._principal()
        files = [f for f in self._storage.list(kind_from_pb(request.kind), request.scope, request.job)
                 if self._may_read(caller, f)]
        files.sort(key=lambda info: (info.ref.path, info.ref.job))
        return pb.ListResponse(files=[info_to_pb(info) for info in files])

    def GetDownloadUrl(self, request: pb.GetDownloadUrlRequest, context: grpc.ServicerContext) -> pb.DownloadUrl:
        ttl = request.ttl_seconds or DEFAULT_LINK_SECONDS
        if not 0 < ttl <= MAX_LINK_SECONDS:
            raise InvalidArgument([Problem("ttl_seconds", f"must be from 1 to {MAX_LINK_SECONDS} (7 days), "
                                                          f"or 0 for an hour (got {request.ttl_seconds})")])
        ref = ref_from_pb(request.ref)
        self._readable(self._storage.stat(ref))
        expires = int(time.time()) + ttl
        url = self._storage.download_url(ref, ttl)
        if url is None and self._links is not None:
            url = self._links.url(ref.kind, ref.scope, ref.job, ref.path, expires)
        if url is None:
            raise FailedPrecondition(NO_GATEWAY)
        return pb.DownloadUrl(url=url, expires_at=timestamp(expires))

    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        caller = self._principal()
        if not (caller.is_admin or caller.is_service):
            raise PermissionDenied("only services and admins delete files")
        self._storage.delete(kind_from_pb(request.kind), request.scope)
        return pb.DeleteResponse()
