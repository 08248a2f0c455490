"""Where cellar files live: the `Storage` port the servicer talks to, and `LocalStorage`.

The servicer only sees `Storage`, so an S3/MinIO adapter can later replace the
local-directory one without touching the RPC layer. The domain types are plain frozen
dataclasses, not protobuf, and validation (`validate_ref`, `validate_listing`) lives here so
every adapter refuses the same names with the same messages.

`LocalStorage` layout, under a root directory:

    <root>/<kind>/<scope>/[<job>/]<path>        the files
    <root>/.meta/<kind>/<scope>/[<job>/]<path>  a JSON sidecar per file: sha256, size, owner, ...
    <root>/.meta/.owners/<kind>/<scope>/<user>  an empty file per user who stored in the scope
    <root>/.meta/.usage/<user>/<kind>/<scope>/[<job>/]<path>
                                                the size of each file the user owns (their usage,
                                                summed from their own files alone)

Writes stream into a temp file in the target directory (hashing as they go) and are
published with `os.replace`, so an interrupted Put leaves nothing visible. The sidecar is
written first and keyed by the data file's inode/size/mtime: when it describes another
version of the file, the file is re-hashed (keeping the sidecar's owner); a missing or
garbled sidecar is made anew. Nothing under the
root may go through a symbolic link, so a planted link cannot lead reads or writes astray.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import shutil
import stat as stat_mod
import tempfile
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

from donut_common import names
from donut_common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Problem

log = logging.getLogger(__name__)

KINDS = ("cache", "result", "archive", "log")
JOB_KINDS = ("result", "log")  # the kinds whose files belong to a job of the scope
NAME_PATTERN = re.compile(f"^{names.UPLOAD_ID}$")
MAX_PATH_CHARS = 1024
MAX_SEGMENT_BYTES = 255
TEMP_PREFIX = ".cellar-tmp-"  # reserved: user paths may not have segments starting with it
READ_CHUNK = 1024 * 1024
WRITE_BEHIND_CHUNKS = 8  # chunks received ahead of the disk at most
_META_DIR = ".meta"
_OWNERS_DIR = ".owners"  # in _META_DIR; kinds can't be named so
_USAGE_DIR = ".usage"    # in _META_DIR too
_SCOPE_LOCKS = 64  # locks a scope hashes to (see LocalStorage._scope_lock)
_NO_OWNER = "-"          # the file name for files stored without an owner


@dataclass(frozen=True)
class FileRef:
    """Names one file: kind is one of KINDS; job is set for JOB_KINDS only; path is relative."""

    kind: str
    scope: str
    job: str
    path: str

    def __str__(self) -> str:
        job = f"{self.job}/" if self.job else ""
        return f"{self.kind}/{self.scope}/{job}{self.path}"


@dataclass(frozen=True)
class FileInfo:
    ref: FileRef
    size: int
    sha256: str  # lowercase hex
    created_at: float  # seconds since the epoch, when this version was stored
    owner: str = ""  # the user id it belongs to ("" when unknown: admins only)


class Storage(Protocol):
    """The storage port. Errors are donut_common.errors (InvalidArgument, NotFound, ...)."""

    def put(self, ref: FileRef, chunks: Iterable[bytes], owner: str = "") -> FileInfo:
        """Stores the chunks as the file, replacing any previous version once all arrived.
        If `chunks` raises, nothing is stored and the exception propagates."""
        ...

    def open(
        self, ref: FileRef, offset: int = 0, length: int = 0
    ) -> tuple[FileInfo, Iterator[bytes]]:
        """The file's info and its bytes from offset (length 0: to the end). Iterate the
        chunks to the end or close the iterator."""
        ...

    def stat(self, ref: FileRef) -> FileInfo: ...

    def list(self, kind: str, scope: str, job: str = "") -> list[FileInfo]:
        """Every file of the scope (of one job, or of every job when job is empty), in no
        particular order; an unknown scope has none."""
        ...

    def owners(self, kind: str, scope: str) -> set[str]:
        """The users who have stored files in the scope (none for an unknown scope)."""
        ...

    def delete(self, kind: str, scope: str) -> None:
        """Removes every file of the scope and all that is kept about them (an unknown
        scope has nothing to remove)."""
        ...

    def download_url(self, ref: FileRef, ttl_seconds: int) -> str | None:
        """A URL anyone may GET the file from until ttl_seconds pass, or None when the backend has none."""
        ...

    def usage(self, owner: str, kinds: Collection[str] = KINDS) -> int:
        """Bytes of every file of those kinds stored with this owner."""
        ...

    def sweep(self, older_than: float) -> int:
        """Removes what unfinished uploads left behind (temporary files or objects, incomplete
        multipart uploads) older than `older_than` seconds; returns how many it removed."""
        ...


def _kind_scope_job(kind: str, scope: str, job: str, *, listing: bool) -> list[Problem]:
    if kind not in KINDS:
        return [Problem("kind", f"must be one of {', '.join(KINDS)} (got {kind!r})")]
    problems = []
    if not NAME_PATTERN.match(scope):
        problems.append(Problem("scope", f"must match {NAME_PATTERN.pattern} (got {scope!r})"))
    job_required = kind in JOB_KINDS and not listing
    if kind not in JOB_KINDS and job:
        problems.append(Problem("job", f"only results and logs have a job (got {job!r})"))
    elif (job or job_required) and not NAME_PATTERN.match(job):
        problems.append(Problem("job", f"must match {NAME_PATTERN.pattern} (got {job!r})"))
    return problems


def _path_problems(path: str) -> list[Problem]:
    def bad(message: str) -> list[Problem]:
        return [Problem("path", message)]

    if not path:
        return bad("required")
    if "\0" in path:
        return bad("must not contain NUL")
    if path.startswith("/"):
        return bad(f"must be relative, not start with '/' (got {path!r})")
    if len(path) > MAX_PATH_CHARS:
        return bad(f"longer than {MAX_PATH_CHARS} characters")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return bad("must be valid UTF-8")
    segments = path.split("/")
    if ".." in segments:
        return bad(f"must not contain '..' segments (got {path!r})")
    if any(s in ("", ".") for s in segments):
        return bad(f"must not contain empty or '.' segments (got {path!r})")
    if any(s.startswith(TEMP_PREFIX) for s in segments):
        return bad(f"segments starting with {TEMP_PREFIX!r} are reserved (got {path!r})")
    if any(len(s.encode("utf-8")) > MAX_SEGMENT_BYTES for s in segments):
        return bad(f"a segment is longer than {MAX_SEGMENT_BYTES} bytes")
    return []


def validate_ref(ref: FileRef) -> None:
    """Raises InvalidArgument naming each bad field of the reference."""
    problems = _kind_scope_job(ref.kind, ref.scope, ref.job, listing=False)
    problems += _path_problems(ref.path)
    if problems:
        raise InvalidArgument(problems)


def validate_listing(kind: str, scope: str, job: str) -> None:
    """Raises InvalidArgument naming each bad field of a listing (job may be empty)."""
    problems = _kind_scope_job(kind, scope, job, listing=True)
    if problems:
        raise InvalidArgument(problems)


def _validate_range(offset: int, length: int) -> None:
    problems = []
    if offset < 0:
        problems.append(Problem("offset", f"must not be negative (got {offset})"))
    if length < 0:
        problems.append(Problem("length", f"must not be negative (got {length})"))
    if problems:
        raise InvalidArgument(problems)


class LocalStorage:
    """Storage in a local directory (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = os.path.realpath(root)
        self._scope_locks = [threading.Lock() for _ in range(_SCOPE_LOCKS)]

    # -- the port --------------------------------------------------------------------------

    def put(self, ref: FileRef, chunks: Iterable[bytes], owner: str = "") -> FileInfo:
        validate_ref(ref)
        data_path, meta_path = self._locate(ref)
        directory = os.path.dirname(data_path)
        for tries_left in (2, 1, 0):
            try:
                os.makedirs(directory, exist_ok=True)
                fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=directory)
                break
            except (FileExistsError, NotADirectoryError):
                raise _conflict(ref) from None
            except FileNotFoundError:  # pruned by an upload that failed meanwhile
                if not tries_left:
                    raise
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                digest, size = _write_behind(f, chunks)
                os.fsync(f.fileno())
                st = os.fstat(f.fileno())
            info = FileInfo(ref, size, digest.hexdigest(), time.time(), owner)
            with self._scope_lock(ref.kind, ref.scope):  # published whole, or deleted whole, never half
                if not os.path.exists(temp):
                    raise FailedPrecondition(f"{ref}: its {ref.kind} files were deleted during the upload")
                previous = _read_meta(meta_path)
                # the sidecar first (it names the new version's inode): whoever reads the file
                # in between, or after a crash, finds the owner of the path, never none
                self._write_meta(meta_path, info, st)
                os.replace(temp, data_path)
                self._add_owner(ref, owner)
                self._count(ref, owner, size, None if previous is None else str(previous.get("owner", "")))
        except BaseException as e:
            _remove_quietly(temp)
            self._prune(directory, ref)
            if isinstance(e, IsADirectoryError):
                raise _conflict(ref) from None
            raise
        return info

    def open(
        self, ref: FileRef, offset: int = 0, length: int = 0
    ) -> tuple[FileInfo, Iterator[bytes]]:
        validate_ref(ref)
        _validate_range(offset, length)
        f, info = self._open(ref)
        try:
            if offset > info.size:
                raise InvalidArgument(
                    [Problem("offset", f"{offset} is beyond the end of {ref} ({info.size} bytes)")]
                )
            end = info.size if length == 0 else min(info.size, offset + length)
            f.seek(offset)
        except BaseException:
            f.close()
            raise
        return info, _read(f, end - offset)

    def stat(self, ref: FileRef) -> FileInfo:
        validate_ref(ref)
        f, info = self._open(ref)
        f.close()
        return info

    def list(self, kind: str, scope: str, job: str = "") -> list[FileInfo]:
        validate_listing(kind, scope, job)
        base = os.path.join(self.root, kind, scope)
        if kind not in JOB_KINDS:
            tops = [("", base)]
        elif job:
            tops = [(job, os.path.join(base, job))]
        else:
            names = os.listdir(base) if os.path.isdir(base) else []
            tops = [(name, os.path.join(base, name)) for name in names if NAME_PATTERN.match(name)]
        infos = []
        for top_job, top in tops:
            if os.path.realpath(top) != top or not os.path.isdir(top):
                continue  # absent, not a directory, or through a link: holds no files
            for directory, _, files in os.walk(top):
                for name in files:
                    path = os.path.relpath(os.path.join(directory, name), top).replace(os.sep, "/")
                    if _path_problems(path):
                        continue  # temp files and strays that no ref can name
                    try:
                        infos.append(self.stat(FileRef(kind, scope, top_job, path)))
                    except (NotFound, PermissionDenied):
                        continue  # vanished meanwhile, or a symbolic link
        return infos

    def owners(self, kind: str, scope: str) -> set[str]:
        validate_listing(kind, scope, "")
        try:
            names = os.listdir(self._owners_dir(kind, scope))
        except (FileNotFoundError, NotADirectoryError):
            return set()
        return {"" if name == _NO_OWNER else name for name in names}

    def delete(self, kind: str, scope: str) -> None:
        validate_listing(kind, scope, "")
        with self._scope_lock(kind, scope):
            tops = [os.path.join(self.root, kind, scope), os.path.join(self.root, _META_DIR, kind, scope),
                    *(self._usage_entry(owner, kind, scope) for owner in self.owners(kind, scope)),
                    self._owners_dir(kind, scope)]  # the owners last: until then the scope is still theirs
            for top in tops:
                if os.path.realpath(top) != top:
                    raise PermissionDenied(f"{kind}/{scope}: goes through a symbolic link; refused")
            for top in tops:
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(top)  # never follows a link inside (it removes the link itself)

    def usage(self, owner: str, kinds: Collection[str] = KINDS) -> int:
        total = 0
        for directory, _, files in (entry for kind in kinds for entry in os.walk(self._usage_entry(owner, kind))):
            for name in files:
                if name.startswith(TEMP_PREFIX):
                    continue  # a count being written
                try:
                    with open(os.path.join(directory, name), encoding="ascii") as f:
                        total += int(f.read())
                except (OSError, ValueError):
                    continue  # removed meanwhile, or garbled
        return total

    def download_url(self, ref: FileRef, ttl_seconds: int) -> str | None:
        validate_ref(ref)
        return None  # the gateway signs its own links to local files

    def sweep(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        for directory, _, files in os.walk(self.root):
            for name in files:
                path = os.path.join(directory, name)
                with contextlib.suppress(OSError):
                    if name.startswith(TEMP_PREFIX) and os.lstat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
        return removed

    # -- helpers ---------------------------------------------------------------------------

    def _scope_lock(self, kind: str, scope: str) -> threading.Lock:
        """Held while a Put publishes a file of the scope and while the scope is deleted."""
        return self._scope_locks[hash((kind, scope)) % _SCOPE_LOCKS]

    def _usage_entry(self, owner: str, *parts: str) -> str:
        """Where the usage index keeps the owner's files (under `parts`: kind, scope...)."""
        return os.path.join(self.root, _META_DIR, _USAGE_DIR, owner or _NO_OWNER, *parts)

    def _count(self, ref: FileRef, owner: str, size: int, previous_owner: str | None) -> None:
        """Counts a stored version for its owner (and no longer for the previous version's).
        Failures are logged, not raised: the file is stored, only its count is off."""
        parts = [ref.kind, ref.scope, *([ref.job] if ref.job else []), *ref.path.split("/")]
        entry = self._usage_entry(owner, *parts)
        temp = ""
        try:
            if previous_owner is not None and previous_owner != owner:
                _remove_quietly(self._usage_entry(previous_owner, *parts))
            os.makedirs(os.path.dirname(entry), exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=os.path.dirname(entry))
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(str(size))
            os.replace(temp, entry)
        except OSError:
            log.warning("cannot count %s in the usage of %r", ref, owner, exc_info=True)
            if temp:
                _remove_quietly(temp)

    def _owners_dir(self, kind: str, scope: str) -> str:
        return os.path.join(self.root, _META_DIR, _OWNERS_DIR, kind, scope)

    def _add_owner(self, ref: FileRef, owner: str) -> None:
        directory = self._owners_dir(ref.kind, ref.scope)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, owner or _NO_OWNER), "a"):
            pass

    def _prune(self, directory: str, ref: FileRef) -> None:
        """Removes the directories an upload that did not complete made, if empty, up to
        its scope (they would clash with a file of the same name later)."""
        top = os.path.join(self.root, ref.kind, ref.scope, *([ref.job] if ref.job else []))
        while directory != top and directory.startswith(top + os.sep):
            try:
                os.rmdir(directory)
            except OSError:
                return  # not empty (or in use): what is above it is not empty either
            directory = os.path.dirname(directory)

    def _locate(self, ref: FileRef) -> tuple[str, str]:
        """The data and sidecar paths of a valid ref, refusing any symbolic link on the way."""
        parts = [ref.kind, ref.scope, *([ref.job] if ref.job else []), *ref.path.split("/")]
        data_path = os.path.join(self.root, *parts)
        meta_path = os.path.join(self.root, _META_DIR, *parts)
        for p in (data_path, meta_path):
            # root is canonical, so any difference means a link (or a name that escapes)
            if os.path.realpath(p) != p:
                raise PermissionDenied(f"{ref}: goes through a symbolic link; refused")
        return data_path, meta_path

    def _open(self, ref: FileRef) -> tuple[BinaryIO, FileInfo]:
        data_path, meta_path = self._locate(ref)
        try:
            f = open(data_path, "rb")  # noqa: SIM115 - handed to the caller
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise no_such_file(ref) from None
        try:
            st = os.fstat(f.fileno())
            if not stat_mod.S_ISREG(st.st_mode):
                raise no_such_file(ref)
            return f, self._info(ref, f, st, meta_path)
        except BaseException:
            f.close()
            raise

    def _info(self, ref: FileRef, f: BinaryIO, st: os.stat_result, meta_path: str) -> FileInfo:
        """The file's info from its sidecar when that describes this very version, else
        by hashing the file (with the owner of the sidecar there is; a sidecar is made only
        where there is none, so a reader never overwrites a writer's)."""
        meta = _read_meta(meta_path)
        if meta is not None and [meta.get(k) for k in ("ino", "size", "mtime_ns")] == [
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
        ]:
            return FileInfo(ref, st.st_size, str(meta["sha256"]), float(meta["created_at"]),
                            str(meta.get("owner", "")))
        digest = hashlib.sha256()
        while block := f.read(READ_CHUNK):
            digest.update(block)
        owner = str(meta.get("owner", "")) if meta is not None else ""
        info = FileInfo(ref, st.st_size, digest.hexdigest(), st.st_mtime, owner)
        if meta is None:  # a sidecar that is not there is made, one that is garbage replaced
            self._write_meta(meta_path, info, st, replace=os.path.exists(meta_path))
        return info

    def _write_meta(self, meta_path: str, info: FileInfo, st: os.stat_result, replace: bool = True) -> None:
        """Atomically writes the sidecar (without `replace`, only where there is none);
        failures only cost a re-hash later, so they are logged, not raised."""
        record = {
            "sha256": info.sha256,
            "size": info.size,
            "created_at": info.created_at,
            "owner": info.owner,
            "ino": st.st_ino,
            "mtime_ns": st.st_mtime_ns,
        }
        temp = ""
        try:
            os.makedirs(os.path.dirname(meta_path), exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=os.path.dirname(meta_path))
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
            if replace:
                os.replace(temp, meta_path)
            else:
                with contextlib.suppress(FileExistsError):
                    os.link(temp, meta_path)
                _remove_quietly(temp)
        except OSError:
            log.warning("cannot write the sidecar %s", meta_path, exc_info=True)
            if temp:
                _remove_quietly(temp)


def _read(f: BinaryIO, remaining: int) -> Iterator[bytes]:
    with f:
        while remaining > 0:
            block = f.read(min(READ_CHUNK, remaining))
            if not block:
                return  # cannot happen: versions are replaced, never truncated in place
            remaining -= len(block)
            yield block


def _write_behind(f: BinaryIO, chunks: Iterable[bytes]) -> tuple[Any, int]:
    """Writes the chunks to f and hashes them in a thread of its own while the next ones
    arrive (hashing and writing release the GIL, so receiving, hashing and the disk overlap:
    1 GiB uploads at 180 MB/s instead of 146 here). Returns the sha256 and the size; an
    exception of `chunks` or of the writes is raised."""
    digest, size = hashlib.sha256(), 0
    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=WRITE_BEHIND_CHUNKS)
    failed: list[BaseException] = []

    def write() -> None:
        try:
            while (chunk := pending.get()) is not None:
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[f.write(view) or 0:]
        except BaseException as e:  # noqa: BLE001 - handed to the receiving thread
            failed.append(e)
            while pending.get() is not None:
                pass

    writer = threading.Thread(target=write, name="cellar-write", daemon=True)
    writer.start()
    try:
        for chunk in chunks:
            if failed:
                break
            pending.put(chunk)
            size += len(chunk)
    finally:
        pending.put(None)
        writer.join()
    if failed:
        raise failed[0]
    return digest, size


def _read_meta(meta_path: str) -> dict[str, Any] | None:
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def no_such_file(ref: FileRef) -> NotFound:
    """What a caller hears of a file that is not there (or, to the servicer, not theirs)."""
    return NotFound(f"no such file: {ref}")


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _conflict(ref: FileRef) -> FailedPrecondition:
    return FailedPrecondition(f"{ref}: a file and a directory of the same name would clash")
