"""A job's files: inputs fetched or checked before the command, outputs checked after it.

Every path is relative to the job's work dir and must stay inside the workflow
directory, symlinks included; errors name the input or output and say why. An output is
a regular file of its own or a directory, saved file by file; another job of the workflow
may still be changing the directory, so nothing in it is reached through a link.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from streamed_job.origin import DownloadError, Fetching, download
from streamed_job.spec import FetchSettings, RunSpec

MAX_DIRECTORY_FILES = 10_000  # files saved from one directory output

FetchCache = Callable[[str, Path], object]  # (cache path, destination)
Note = Callable[[str], None]               # a line for the job's log


class FileProblem(Exception):
    """An input or output that can't be had; the message names it and says why."""


def inside(root: str, relative: str) -> Path:
    """root/relative, refusing anything (.., absolute paths, symlinks) that leads outside root."""
    base = Path(root).resolve()
    if os.path.isabs(relative):
        raise FileProblem(f"{relative}: must be a relative path")
    try:
        target = (base / relative).resolve()
    except (RuntimeError, OSError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        raise FileProblem(f"{relative}: cannot be resolved ({e})") from None
    if target != base and base not in target.parents:
        raise FileProblem(f"{relative}: leads outside the workflow directory")
    return target


def prepare_inputs(spec: RunSpec, fetch_cache: FetchCache | None, note: Note,
                   settings: FetchSettings, fetching: Fetching) -> None:
    """Fetches or checks every input, in order, within the time `fetching` allows."""
    if spec.workdir_prefix:
        inside(spec.workflow_dir, spec.workdir_prefix)
    if not os.path.isdir(spec.workdir):
        Path(spec.workdir).mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(spec.inputs):
        place = f"inputs[{i}] ({item.local})"
        try:
            target = inside(spec.workflow_dir, os.path.join(spec.workdir_prefix, item.local))
        except FileProblem as e:
            raise FileProblem(f"{place}: {e}") from None
        if item.origin or item.cache:
            target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if item.origin:
                with replacing(target) as out:
                    size = download(item.origin, out, settings, fetching)
                note(f"fetched {item.origin} -> {item.local} ({size} bytes)")
            elif item.cache:
                if fetch_cache is None:
                    raise FileProblem(f"no cellar to fetch cache file {item.cache!r} from")
                fetching.check()
                try:
                    fetch_cache(item.cache, target)
                except Exception as e:
                    fetching.check()  # a stopped fetch says why it stopped
                    raise FileProblem(f"cannot fetch cache file {item.cache!r}: {e}") from e
                note(f"fetched cache {item.cache} -> {item.local}")
            elif not target.exists():
                raise FileProblem("missing (no such file in the workflow directory)")
        except (FileProblem, DownloadError) as e:
            raise FileProblem(f"{place}: {e}") from None


@contextlib.contextmanager
def replacing(target: Path) -> Iterator[BinaryIO]:
    """A new file beside `target` that becomes it once written whole: a partial target is
    never seen, and the temporary file's name is fresh and created exclusively, so nothing
    planted beforehand (a symbolic link) is followed."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


@dataclass(frozen=True)
class Saved:
    """A file to keep as a result: its result name, where it is, and which file it was
    when it was checked (device, inode)."""

    name: str
    path: Path
    identity: tuple[int, int]

    def open(self) -> BinaryIO:
        """The file, opened without following a link (O_NONBLOCK: a FIFO put in its place
        does not block), if it is still the file that was checked."""
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self.identity:
                raise FileProblem(f"{self.name}: replaced while it was being saved")
            _own_file(st, self.name)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise


def outputs_to_save(spec: RunSpec, note: Note) -> list[Saved]:
    """Every file of the `save` outputs; raises FileProblem for a declared output that
    does not exist or is neither a regular file nor a directory. A file's name is its path
    as declared (relative to the work dir), or relative to the workflow dir for an output
    outside the work dir; the files of a directory are named `<directory>/<path inside it>`."""
    saved: list[Saved] = []
    for i, item in enumerate(spec.outputs):
        place = f"outputs[{i}] ({item.local})"
        relative = os.path.normpath(os.path.join(spec.workdir_prefix, item.local))
        try:
            path = inside(spec.workflow_dir, relative)
        except FileProblem as e:
            raise FileProblem(f"{place}: {e}") from None
        try:
            st = path.lstat()  # resolved: no link is left in it
        except FileNotFoundError:
            raise FileProblem(f"{place}: missing after the command ended") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise FileProblem(f"{place}: neither a regular file nor a directory")
        if not item.save:
            continue
        declared = os.path.normpath(item.local)
        name = relative if declared.startswith("..") else declared
        if stat.S_ISDIR(st.st_mode):
            saved += _directory_files(path, name, place, note)
        else:
            _own_file(st, place)
            saved.append(Saved(name, path, (st.st_dev, st.st_ino)))
    return saved


def _own_file(st: os.stat_result, place: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise FileProblem(f"{place}: not a regular file")
    if st.st_nlink > 1:  # it could be any file of the host's, linked in
        raise FileProblem(f"{place}: a hard link (only a file of its own can be saved)")


def _directory_files(root: Path, name: str, place: str, note: Note) -> list[Saved]:
    """The regular files under `root`, at most MAX_DIRECTORY_FILES. Symbolic links and
    special files are skipped with a note, never followed: the walk holds each directory
    open and enters only real directories, so no link swapped in leads it elsewhere."""
    files: list[Saved] = []

    def fail(error: OSError) -> None:
        raise error

    for top, dirs, names, dirfd in os.fwalk(root, onerror=fail):  # links to directories are not entered
        dirs.sort()
        for entry in sorted(dirs + names):
            st = os.stat(entry, dir_fd=dirfd, follow_symlinks=False)
            inner = os.path.relpath(os.path.join(top, entry), root).replace(os.sep, "/")
            if stat.S_ISDIR(st.st_mode):
                continue  # walked into
            try:
                inner.encode("utf-8")
            except UnicodeEncodeError:
                note(f"{place}: skipped {inner!r}: its name is not UTF-8")
                continue
            if not stat.S_ISREG(st.st_mode):
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                note(f"{place}: skipped {inner}: {kind}")
                continue
            _own_file(st, f"{place}: {inner}")
            if len(files) == MAX_DIRECTORY_FILES:
                raise FileProblem(f"{place}: more than {MAX_DIRECTORY_FILES} files")
            files.append(Saved(inner if name == "." else posixpath.join(name, inner), Path(top, entry),
                               (st.st_dev, st.st_ino)))
    return files
