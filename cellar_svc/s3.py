"""Cellar files in an S3 bucket (MinIO in the manifests, any S3 endpoint in production).

`S3Storage` is the `Storage` port over the minio SDK, so every replica of cellar sees the
same files. It refuses the same names as `LocalStorage` (`validate_ref`, `validate_listing`)
with the same domain errors; every S3 or network failure becomes
`Unavailable("storage unavailable: <why>")`, never a library exception.

Object layout, under the bucket and `S3Settings.prefix` (the one place it is documented):

    <prefix>files/<kind>/<scope>/[<job>/]<path>          the files, with the metadata x-amz-meta-owner,
                                                         -created-at and (written in one PUT) -sha256
    <prefix>sums/<kind>/<scope>/[<job>/]<path>           the sha256 of a file written in parts, with the
                                                         ETag of the version it describes (metadata)
    <prefix>owners/<kind>/<scope>/<owner>                an empty marker per user who stored in the
                                                         scope (`-`: stored without an owner)
    <prefix>owned/<owner>/<kind>/<scope>/[<job>/]<path>  an empty marker per file a user stored:
                                                         `usage` lists these, not the bucket

Owners are URL-quoted in keys. A Put reads up to one part (`part_size`) first: a file that
fits is written in one PUT carrying all its metadata. A larger one is a multipart upload to
its own name (one part in memory at a time, hashed as it goes), begun with the owner and time
(known at the start) and completed once every byte arrived; S3 shows it only then, whole, and
of two writers of one name the last to complete wins. No temporary object, no copy: the
data is written once. Its sha256, known only at the end, goes to its `sums/` object with the
ETag of that version; a reader that finds no `sums/` object for the ETag it sees (a crash
between the two writes, or a racing writer's) hashes the file once and writes it, as
LocalStorage does with a sidecar that describes another inode. A Put that fails aborts its
multipart upload; what a crash leaves behind, `sweep` aborts later.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import datetime
import hashlib
import io
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import quote, unquote, urlsplit

import certifi
import urllib3
from minio import Minio
from minio.datatypes import Object, Part
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error
from minio.helpers import genheaders

from cellar_svc.storage import (
    JOB_KINDS,
    KINDS,
    READ_CHUNK,
    FileInfo,
    FileRef,
    _conflict,
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
    """The chunk iterator, hashed as chunks arrive and handed out a part at a time."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending: deque[bytes] = deque()
        self._pending_size = 0
        self.digest = hashlib.sha256()
        self.size = 0
        self.exhausted = False

    def fill(self, wanted: int) -> None:
        """Reads chunks until `wanted` bytes are pending or the chunks end."""
        while self._pending_size < wanted and not self.exhausted:
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self.exhausted = True
                return
            except BaseException as e:
                raise _SourceFailed(e) from e
            self.digest.update(chunk)
            self.size += len(chunk)
            self._pending.append(chunk)
            self._pending_size += len(chunk)

    def take(self, n: int) -> bytes:
        """The next n bytes as one object (fewer only at the end; none once all are taken)."""
        self.fill(n)
        parts, wanted = [], n
        while wanted and self._pending:
            chunk = self._pending.popleft()
            if len(chunk) > wanted:
                self._pending.appendleft(chunk[wanted:])
                chunk = chunk[:wanted]
            parts.append(chunk)
            wanted -= len(chunk)
        self._pending_size -= n - wanted
        return parts[0] if len(parts) == 1 else b"".join(parts)


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
        part_size = self.settings.part_size
        upload_id = ""
        try:
            with self._errors():
                source.fill(part_size + 1)
                if source.exhausted:
                    data = source.take(part_size + 1)
                    info = self._info_of(ref, source, owner)
                    self._mark(ref, owner)
                    metadata = _metadata(info) | {"sha256": info.sha256}
                    self.client.put_object(self.bucket, key, io.BytesIO(data), len(data), metadata=metadata)
                    return info
                created_at = time.time()
                headers = genheaders(_metadata(FileInfo(ref, 0, "", created_at, owner)), None, None, None, False)
                upload_id = self.client._create_multipart_upload(self.bucket, key, headers)
                parts: builtins.list[Part] = []
                while part := source.take(part_size):  # one part in memory at a time
                    number = len(parts) + 1
                    parts.append(Part(number, self.client._upload_part(self.bucket, key, part, None, upload_id,
                                                                       number)))
                    del part
                info = dataclasses.replace(self._info_of(ref, source, owner), created_at=created_at)
                self._mark(ref, owner)
                done = self.client._complete_multipart_upload(self.bucket, key, upload_id, parts)
                upload_id = ""
                self._write_sum(ref, _etag(done.etag), info.sha256)
        except BaseException as e:
            if upload_id:
                with contextlib.suppress(Unavailable), self._errors():
                    self.client._abort_multipart_upload(self.bucket, key, upload_id)
            if isinstance(e, _SourceFailed):
                raise e.original from None
            raise
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
        under = f"{kind}/{scope}/" + (f"{job}/" if job else "")
        refs = [ref for ref in (_ref_of(under + name) for name in self._names(f"{self.settings.prefix}files/{under}"))
                if ref is not None]
        return [info for info in self._each(refs, self._stat_if_there) if info is not None]

    def owners(self, kind: str, scope: str) -> set[str]:
        validate_listing(kind, scope, "")
        return {"" if name == _NO_OWNER else unquote(name) for name in self._names(self._owners_prefix(kind, scope))}

    def delete(self, kind: str, scope: str) -> None:
        validate_listing(kind, scope, "")
        owners = self._names(self._owners_prefix(kind, scope))
        self._remove_prefix(f"{self.settings.prefix}files/{kind}/{scope}/")
        self._remove_prefix(f"{self.settings.prefix}sums/{kind}/{scope}/")
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

    def usage(self, owner: str, kinds: Collection[str] = KINDS) -> int:
        prefix = f"{self.settings.prefix}owned/{_owner_name(owner)}/"
        refs = [ref for kind in kinds for ref in (_ref_of(f"{kind}/{name}") for name in self._names(f"{prefix}{kind}/"))
                if ref is not None]
        heads = self._each(refs, self._head_if_there)
        return sum(head.size or 0 for head in heads if head is not None and _owner_of(head) == owner)

    def sweep(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        key_marker, upload_marker = None, None
        with self._errors():
            while True:
                try:
                    page = self.client._list_multipart_uploads(self.bucket, prefix=self.settings.prefix or None,
                                                               key_marker=key_marker, upload_id_marker=upload_marker)
                except S3Error as e:
                    if e.code == "NotImplemented":  # a server that can't list them (s3rver) has none to show
                        return removed
                    raise
                for upload in page.uploads:
                    if upload.initiated_time is not None and upload.initiated_time.timestamp() < cutoff:
                        self.client._abort_multipart_upload(self.bucket, upload.object_name, upload.upload_id or "")
                        removed += 1
                if not page.is_truncated or not page.uploads:
                    return removed
                key_marker, upload_marker = page.uploads[-1].object_name, page.uploads[-1].upload_id

    # -- helpers ---------------------------------------------------------------------------

    def _file_key(self, ref: FileRef) -> str:
        return f"{self.settings.prefix}files/{ref}"

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
            head = self.client.stat_object(self.bucket, self._file_key(ref))
        etag = _etag(head.etag)
        meta = head.metadata or {}
        sha256 = meta.get("x-amz-meta-sha256", "") or self._sum(ref, etag)
        try:
            created = float(meta.get("x-amz-meta-created-at", ""))
        except ValueError:
            created = head.last_modified.timestamp() if head.last_modified else 0.0
        return FileInfo(ref, head.size or 0, sha256, created, _owner_of(head)), etag

    def _sum(self, ref: FileRef, etag: str) -> str:
        """The sha256 of the version of a file written in parts with this ETag: from its
        `sums/` object when that describes this version, else by hashing it (once)."""
        with self._errors():
            try:
                head = self.client.stat_object(self.bucket, self._sum_key(ref))
                meta = head.metadata or {}
                if meta.get("x-amz-meta-etag") == etag and meta.get("x-amz-meta-sha256"):
                    return str(meta["x-amz-meta-sha256"])
            except S3Error as e:
                if e.code not in _MISSING_CODES:
                    raise
        sha256 = self._hash(ref, etag)
        self._write_sum(ref, etag, sha256)
        return sha256

    def _write_sum(self, ref: FileRef, etag: str, sha256: str) -> None:
        self.client.put_object(self.bucket, self._sum_key(ref), io.BytesIO(b""), 0,
                               metadata={"etag": etag, "sha256": sha256})

    def _sum_key(self, ref: FileRef) -> str:
        return f"{self.settings.prefix}sums/{ref}"

    def _head_if_there(self, ref: FileRef) -> Object | None:
        with self._errors():
            try:
                return self.client.stat_object(self.bucket, self._file_key(ref))
            except S3Error as e:
                if e.code in _MISSING_CODES:
                    return None  # removed since it was listed
                raise

    def _stat_if_there(self, ref: FileRef) -> FileInfo | None:
        try:
            return self._stat(ref)[0]
        except NotFound:
            return None  # removed since it was listed

    def _hash(self, ref: FileRef, etag: str) -> str:
        digest = hashlib.sha256()
        with self._errors(missing=ref):
            response = self.client.get_object(self.bucket, self._file_key(ref),
                                              request_headers={"If-Match": f'"{etag}"'})
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
            self.client.put_object(self.bucket, key, io.BytesIO(b""), 0)

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
    """What a file carries from the start of its upload: its owner and the time."""
    return {"owner": quote(info.owner, safe=""), "created-at": repr(info.created_at)}


def _owner_of(head: Object) -> str:
    return unquote((head.metadata or {}).get("x-amz-meta-owner", ""))


def _etag(etag: str | None) -> str:
    return (etag or "").strip('"')


def _ref_of(name: str) -> FileRef | None:
    """The reference a key under files/ or owned/<owner>/ (without that prefix) names, or None for a stray."""
    kind, _, rest = name.partition("/")
    scope, _, rest = rest.partition("/")
    job = ""
    if kind in JOB_KINDS:
        job, _, rest = rest.partition("/")
    ref = FileRef(kind, scope, job, rest)
    try:
        validate_ref(ref)
    except InvalidArgument:
        return None
    return ref


