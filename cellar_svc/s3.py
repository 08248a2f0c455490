"""Cellar files in an S3 bucket (MinIO in the manifests, any S3 endpoint in production).

`S3Storage` is the `Storage` port over the minio SDK, so every replica of cellar sees the
same files. It refuses the same names as `LocalStorage` (`validate_ref`, `validate_listing`)
with the same domain errors; every S3 or network failure becomes
`Unavailable("storage unavailable: <why>")`, never a library exception.

Object layout, under the bucket and `S3Settings.prefix` (the one place it is documented):

    <prefix>files/<kind>/<scope>/[<job>/]<path>          the files, with the metadata
                                                         x-amz-meta-owner, -sha256, -created-at
    <prefix>owners/<kind>/<scope>/<owner>                an empty marker per user who stored in the
                                                         scope (`-`: stored without an owner)
    <prefix>owned/<owner>/<kind>/<scope>/[<job>/]<path>  an empty marker per file a user stored:
                                                         `usage` lists these, not the bucket
    <prefix>tmp/<seconds>-<random>                       an upload larger than one part, until it
                                                         is complete and copied to its name (its
                                                         name says when it began, for `sweep`)

Owners are URL-quoted in keys. A Put reads up to one part (`part_size`) first: a file that
fits is written to its name in one PUT carrying its metadata. A larger one streams to a
`tmp/` object in parts (one part in memory at a time, hashed as it goes), then a server-side
copy (a multipart copy beyond 5 GiB) publishes it under its name with the metadata, and the
temporary object is removed. Both ways a file appears only once whole, with the sha256 of
exactly its bytes, and of two writers of one name the last to complete wins. A Put that
fails aborts its multipart upload and removes its temporary object; what a crash leaves
behind, `sweep` removes later.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime
import hashlib
import io
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import quote, unquote, urlsplit

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error

from cellar_svc.storage import (
    NAME_PATTERN,
    READ_CHUNK,
    FileInfo,
    FileRef,
    _conflict,
    _path_problems,
    _validate_range,
    no_such_file,
    validate_listing,
    validate_ref,
)
from donut_common.errors import InvalidArgument, NotFound, Problem, Unavailable

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3 refuses smaller parts (but the last)
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # S3's limit on a presigned URL's life
_MISSING_CODES = ("NoSuchKey", "NoSuchObject")
_NO_OWNER = "-"
_LOOKUP_THREADS = 8  # HEADs in flight at once when a listing needs each file's metadata

T = TypeVar("T")


def _not_a_retry(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Retrying (")


# urllib3 warns of each retry on stderr; a call that still fails says why as Unavailable
logging.getLogger("urllib3.connectionpool").addFilter(_not_a_retry)


@dataclass(frozen=True)
class S3Settings:
    """Where and how cellar reaches its bucket."""

    endpoint: str
    """http(s)://host:port of the S3 server."""
    bucket: str
    """The bucket every file lives in (created at start if missing)."""
    region: str = "us-east-1"
    """The bucket's region (given, so no request is spent asking for it)."""
    prefix: str = ""
    """Key prefix of everything cellar stores (lets several stacks share a bucket); ends with '/'."""
    access_key: str = field(default="", repr=False)
    """From the environment only (argv is visible in `ps`)."""
    secret_key: str = field(default="", repr=False)
    """From the environment only."""
    part_size: int = 16 * MiB
    """Bytes per multipart part: the most of an upload held in memory at once."""
    connect_timeout: float = 2.0
    """Seconds to open a connection, so an unreachable endpoint fails within seconds."""
    read_timeout: float = 120.0
    """Seconds to wait for a response (a server-side copy of a large file takes a while)."""
    retries: int = 2
    """Retries of a request that could not connect or got a 5xx."""

    def __post_init__(self) -> None:
        url = urlsplit(self.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/") or url.query:
            raise ValueError(f"s3 endpoint: must be http(s)://host:port (got {self.endpoint!r})")
        if not 3 <= len(self.bucket) <= 63 or not all(c.islower() or c.isdigit() or c in ".-" for c in self.bucket):
            raise ValueError(f"s3 bucket: must be 3-63 lowercase letters, digits, '.' or '-' (got {self.bucket!r})")
        if self.prefix and (self.prefix.startswith("/") or not self.prefix.endswith("/")
                            or any(s in ("", ".", "..") for s in self.prefix[:-1].split("/"))):
            raise ValueError(f"s3 prefix: must be relative segments ending with '/' (got {self.prefix!r})")
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(f"s3 part size: must be at least {MIN_PART_SIZE} bytes (got {self.part_size})")

    @classmethod
    def from_environment(cls, endpoint: str, bucket: str, region: str = "us-east-1", prefix: str = "",
                         environ: Mapping[str, str] = os.environ) -> S3Settings:
        """The settings with credentials from DONUT_S3_ACCESS_KEY / DONUT_S3_SECRET_KEY, else
        AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; ValueError when neither pair is set."""
        for access, secret in (("DONUT_S3_ACCESS_KEY", "DONUT_S3_SECRET_KEY"),
                               ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")):
            if environ.get(access) and environ.get(secret):
                if prefix and not prefix.endswith("/"):
                    prefix += "/"
                return cls(endpoint, bucket, region or "us-east-1", prefix, environ[access], environ[secret])
        raise ValueError("s3 credentials: set DONUT_S3_ACCESS_KEY and DONUT_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID "
                         "and AWS_SECRET_ACCESS_KEY) in the environment")


class _SourceFailed(Exception):
    """The upload's own chunks raised: carried through the SDK, then re-raised as it was."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class _HashingReader:
    """A file-like view of the chunk iterator that hashes every byte as it arrives; `read(n)`
    returns n bytes (fewer only at the end), so the SDK gets a whole part per call."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()
        self.digest = hashlib.sha256()
        self.size = 0
        self.exhausted = False

    def fill(self, wanted: int) -> None:
        while len(self._buffer) < wanted and not self.exhausted:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self.exhausted = True
                return
            except BaseException as e:
                raise _SourceFailed(e) from e
            self.digest.update(chunk)
            self.size += len(chunk)
            self._buffer += chunk

    def read(self, n: int = -1) -> bytes:
        self.fill(n if n >= 0 else 1 << 62)
        data = bytes(self._buffer[:n] if n >= 0 else self._buffer)
        del self._buffer[: len(data)]
        return data


class S3Storage:
    """Storage in an S3 bucket (see the module docstring for the layout)."""

    def __init__(self, settings: S3Settings, client: Minio) -> None:
        self.settings = settings
        self.client = client
        self.bucket = settings.bucket

    @classmethod
    def connect(cls, settings: S3Settings) -> S3Storage:
        """A storage whose bucket exists (it is made if missing). Raises Unavailable with a
        one-line reason when the endpoint is unreachable or refuses the credentials."""
        url = urlsplit(settings.endpoint)
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout),
            retries=urllib3.Retry(total=settings.retries, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504),
                                  allowed_methods=None, raise_on_status=False),
            maxsize=32, cert_reqs="CERT_REQUIRED", ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        client = Minio(url.netloc, access_key=settings.access_key, secret_key=settings.secret_key,
                       secure=url.scheme == "https", region=settings.region, http_client=http)
        storage = cls(settings, client)
        where = f"bucket {settings.bucket} at {settings.endpoint}"
        try:
            try:  # a GET, not bucket_exists's HEAD: its error says why (InvalidAccessKeyId, not "Access denied")
                next(iter(client.list_objects(settings.bucket, f"{settings.prefix}owners/")), None)
            except S3Error as e:
                if e.code != "NoSuchBucket":
                    raise
                client.make_bucket(settings.bucket, location=settings.region)
        except S3Error as e:
            if e.code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):  # made meanwhile by another replica
                return storage
            raise Unavailable(f"storage unavailable: {where}: {_why(e)}") from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise Unavailable(f"storage unavailable: {where}: {_why(e)}") from None
        return storage

    # -- the port --------------------------------------------------------------------------

    def put(self, ref: FileRef, chunks: Iterable[bytes], owner: str = "") -> FileInfo:
        validate_ref(ref)
        key = self._file_key(ref)
        with self._errors():
            self._refuse_clash(ref)
        source = _HashingReader(chunks)
        temp = ""
        try:
            with self._errors():
                source.fill(self.settings.part_size + 1)
                if source.exhausted:
                    data = source.read()
                    info = self._info_of(ref, source, owner)
                    self._mark(ref, owner)
                    self.client.put_object(self.bucket, key, _bytes_io(data), len(data), metadata=_metadata(info))
                    return info
                temp = f"{self.settings.prefix}tmp/{int(time.time())}-{uuid.uuid4().hex}"
                self.client.put_object(self.bucket, temp, source, -1, part_size=self.settings.part_size)  # type: ignore[arg-type]
                info = self._info_of(ref, source, owner)
                self._mark(ref, owner)
                self.client.compose_object(self.bucket, key, [ComposeSource(self.bucket, temp)],
                                           metadata=_metadata(info))
        except BaseException as e:
            if temp:
                self._abandon(temp)
            if isinstance(e, _SourceFailed):
                raise e.original from None
            raise
        self._abandon(temp)
        return info

    def open(self, ref: FileRef, offset: int = 0, length: int = 0) -> tuple[FileInfo, Iterator[bytes]]:
        validate_ref(ref)
        _validate_range(offset, length)
        for _ in range(3):  # a new version may replace the one stat saw: then stat again
            info, etag = self._stat(ref)
            if offset > info.size:
                raise InvalidArgument([Problem("offset", f"{offset} is beyond the end of {ref} ({info.size} bytes)")])
            end = info.size if length == 0 else min(info.size, offset + length)
            if end == offset:
                return info, iter(())
            with self._errors(missing=ref):
                try:
                    response = self.client.get_object(self.bucket, self._file_key(ref), offset, end - offset,
                                                      request_headers={"If-Match": f'"{etag}"'})
                except S3Error as e:
                    if e.code != "PreconditionFailed":
                        raise
                    continue
            return info, self._stream(response)
        raise Unavailable(f"storage unavailable: {ref} kept changing while being opened")

    def stat(self, ref: FileRef) -> FileInfo:
        validate_ref(ref)
        return self._stat(ref)[0]

    def list(self, kind: str, scope: str, job: str = "") -> list[FileInfo]:
        validate_listing(kind, scope, job)
        base = f"{self.settings.prefix}files/{kind}/{scope}/"
        refs = []
        with self._errors():
            for obj in self.client.list_objects(self.bucket, base + (f"{job}/" if job else ""), recursive=True):
                name = (obj.object_name or "").removeprefix(base)
                file_job = ""
                if kind == "result":
                    file_job, _, name = name.partition("/")
                    if not NAME_PATTERN.match(file_job):
                        continue
                if not _path_problems(name):
                    refs.append(FileRef(kind, scope, file_job, name))
        return [info for info in self._each(refs, self._stat_if_there) if info is not None]

    def owners(self, kind: str, scope: str) -> set[str]:
        validate_listing(kind, scope, "")
        return {"" if name == _NO_OWNER else unquote(name) for name in self._names(self._owners_prefix(kind, scope))}

    def delete(self, kind: str, scope: str) -> None:
        validate_listing(kind, scope, "")
        owners = self._names(self._owners_prefix(kind, scope))
        self._remove_prefix(f"{self.settings.prefix}files/{kind}/{scope}/")
        for owner in owners:
            self._remove_prefix(f"{self.settings.prefix}owned/{owner}/{kind}/{scope}/")
        self._remove_prefix(self._owners_prefix(kind, scope))  # the owners last: until then the scope is theirs

    def download_url(self, ref: FileRef, ttl_seconds: int) -> str | None:
        validate_ref(ref)
        if not 1 <= ttl_seconds <= MAX_PRESIGN_SECONDS:
            raise InvalidArgument([Problem("ttl_seconds", f"must be 1 to {MAX_PRESIGN_SECONDS} (got {ttl_seconds})")])
        self._stat(ref)
        with self._errors():
            return self.client.presigned_get_object(self.bucket, self._file_key(ref),
                                                    expires=datetime.timedelta(seconds=ttl_seconds))

    def usage(self, owner: str) -> int:
        prefix = f"{self.settings.prefix}owned/{_owner_name(owner)}/"
        with self._errors():
            keys = [obj.object_name or "" for obj in self.client.list_objects(self.bucket, prefix, recursive=True)]
        refs = [ref for ref in (_ref_of(key.removeprefix(prefix)) for key in keys) if ref is not None]
        infos = self._each(refs, self._stat_if_there)
        return sum(info.size for info in infos if info is not None and info.owner == owner)

    def sweep(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        temp_prefix = f"{self.settings.prefix}tmp/"
        with self._errors():
            stale = [obj.object_name or "" for obj in self.client.list_objects(self.bucket, temp_prefix)
                     if self._made_at(obj.object_name or "", obj.last_modified) < cutoff]
            removed += self._remove(stale)
            key_marker, upload_marker = None, None
            while True:
                page = self.client._list_multipart_uploads(self.bucket, prefix=self.settings.prefix or None,
                                                           key_marker=key_marker, upload_id_marker=upload_marker)
                for upload in page.uploads:
                    if self._made_at(upload.object_name, upload.initiated_time) < cutoff:
                        self.client._abort_multipart_upload(self.bucket, upload.object_name, upload.upload_id or "")
                        removed += 1
                if not page.is_truncated or not page.uploads:
                    return removed
                key_marker, upload_marker = page.uploads[-1].object_name, page.uploads[-1].upload_id

    # -- helpers ---------------------------------------------------------------------------

    def _file_key(self, ref: FileRef) -> str:
        return f"{self.settings.prefix}files/{ref}"

    def _made_at(self, key: str, server_time: datetime.datetime | None) -> float:
        """When a temporary object (or upload) was begun: by the time in its name, as this
        process's clock saw it; for other uploads, as the server says."""
        name = key.removeprefix(f"{self.settings.prefix}tmp/")
        if name != key and name.partition("-")[0].isdigit():
            return float(name.partition("-")[0])
        return server_time.timestamp() if server_time is not None else 0.0

    def _owners_prefix(self, kind: str, scope: str) -> str:
        return f"{self.settings.prefix}owners/{kind}/{scope}/"

    @contextlib.contextmanager
    def _errors(self, missing: FileRef | None = None) -> Iterator[None]:
        """Turns the SDK's and the network's errors into Unavailable (a missing object into
        NotFound when `missing` names it)."""
        try:
            yield
        except S3Error as e:
            if missing is not None and e.code in _MISSING_CODES:
                raise no_such_file(missing) from None
            raise Unavailable(f"storage unavailable: {_why(e)}") from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            raise Unavailable(f"storage unavailable: {_why(e)}") from None

    def _stat(self, ref: FileRef) -> tuple[FileInfo, str]:
        """The file's info and its ETag."""
        with self._errors(missing=ref):
            obj = self.client.stat_object(self.bucket, self._file_key(ref))
        meta = obj.metadata or {}
        sha256 = meta.get("x-amz-meta-sha256", "")
        created_at = meta.get("x-amz-meta-created-at", "")
        owner = meta.get("x-amz-meta-owner", "")
        size = obj.size or 0
        if not sha256:  # not stored through cellar: hash it once, as LocalStorage does a file without sidecar
            sha256 = self._hash(ref)
        try:
            created = float(created_at)
        except ValueError:
            created = obj.last_modified.timestamp() if obj.last_modified else 0.0
        return FileInfo(ref, size, sha256, created, unquote(owner)), obj.etag or ""

    def _stat_if_there(self, ref: FileRef) -> FileInfo | None:
        try:
            return self._stat(ref)[0]
        except NotFound:
            return None  # removed since it was listed

    def _hash(self, ref: FileRef) -> str:
        digest = hashlib.sha256()
        with self._errors(missing=ref):
            response = self.client.get_object(self.bucket, self._file_key(ref))
        for block in self._stream(response):
            digest.update(block)
        return digest.hexdigest()

    def _stream(self, response: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
        try:
            with self._errors():
                yield from response.stream(READ_CHUNK)
        finally:
            response.close()
            response.release_conn()

    def _refuse_clash(self, ref: FileRef) -> None:
        """Refuses, as a file system would, a file named like another's directory or the reverse."""
        key = self._file_key(ref)
        segments = ref.path.split("/")
        base = key[: len(key) - len(ref.path)]
        for depth in range(1, len(segments)):
            try:
                self.client.stat_object(self.bucket, base + "/".join(segments[:depth]))
            except S3Error as e:
                if e.code in _MISSING_CODES:
                    continue
                raise
            raise _conflict(ref)
        if next(iter(self.client.list_objects(self.bucket, key + "/")), None) is not None:
            raise _conflict(ref)

    @staticmethod
    def _info_of(ref: FileRef, source: _HashingReader, owner: str) -> FileInfo:
        return FileInfo(ref, source.size, source.digest.hexdigest(), time.time(), owner)

    def _mark(self, ref: FileRef, owner: str) -> None:
        """The owner markers, written once the data has all arrived and before it is published."""
        name = _owner_name(owner)
        for key in (f"{self._owners_prefix(ref.kind, ref.scope)}{name}", f"{self.settings.prefix}owned/{name}/{ref}"):
            self.client.put_object(self.bucket, key, _bytes_io(b""), 0)

    def _abandon(self, temp: str) -> None:
        """Removes a temporary object and aborts any multipart upload of it (best effort:
        what is left, `sweep` removes later)."""
        if not temp:
            return
        with contextlib.suppress(Unavailable), self._errors():
            self.client.remove_object(self.bucket, temp)
            page = self.client._list_multipart_uploads(self.bucket, prefix=temp)
            for upload in page.uploads:
                self.client._abort_multipart_upload(self.bucket, upload.object_name, upload.upload_id or "")

    def _names(self, prefix: str) -> builtins.list[str]:
        with self._errors():
            return [(obj.object_name or "").removeprefix(prefix)
                    for obj in self.client.list_objects(self.bucket, prefix, recursive=True)]

    def _remove_prefix(self, prefix: str) -> None:
        self._remove([prefix + name for name in self._names(prefix)])

    def _remove(self, keys: builtins.list[str]) -> int:
        with self._errors():
            for start in range(0, len(keys), 1000):  # S3's most per DeleteObjects request
                batch = [DeleteObject(key) for key in keys[start : start + 1000]]
                errors = builtins.list(self.client.remove_objects(self.bucket, batch))
                if errors:
                    raise Unavailable(f"storage unavailable: cannot remove {errors[0].name}: {errors[0].message}")
        return len(keys)

    def _each(self, refs: builtins.list[FileRef], call: Callable[[FileRef], T]) -> builtins.list[T]:
        if len(refs) <= 1:
            return [call(ref) for ref in refs]
        with ThreadPoolExecutor(max_workers=_LOOKUP_THREADS) as pool:
            return list(pool.map(call, refs))


def _why(e: BaseException) -> str:
    """One line saying why an S3 call failed."""
    if isinstance(e, S3Error):
        return f"{e.code}: {e.message}" if e.message else str(e.code)
    if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
        return _why(e.reason)
    if isinstance(e, urllib3.exceptions.NewConnectionError):
        return f"cannot connect to {e.conn.host}:{e.conn.port}: {str(e).rsplit(': ', 1)[-1]}"
    return " ".join(str(e).split()) or type(e).__name__


def _owner_name(owner: str) -> str:
    return quote(owner, safe="") if owner else _NO_OWNER


def _metadata(info: FileInfo) -> dict[str, str | list[str] | tuple[str]]:
    return {"owner": quote(info.owner, safe=""), "sha256": info.sha256, "created-at": repr(info.created_at)}


def _ref_of(name: str) -> FileRef | None:
    """The reference a key under files/ (without that prefix) names, or None for a stray."""
    kind, _, rest = name.partition("/")
    scope, _, rest = rest.partition("/")
    job = ""
    if kind == "result":
        job, _, rest = rest.partition("/")
    ref = FileRef(kind, scope, job, rest)
    try:
        validate_ref(ref)
    except InvalidArgument:
        return None
    return ref


def _bytes_io(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)
