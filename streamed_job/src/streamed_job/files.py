"""A job's files: inputs fetched or checked before the command, outputs checked after it.

Every path is relative to the job's work dir and must stay inside the workflow
directory, symlinks included; errors name the input or output and say why.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Callable

from streamed_job.spec import RunSpec

MAX_DOWNLOAD_BYTES = 10 * 1024**3
DOWNLOAD_TIMEOUT = 60.0
DOWNLOAD_TRIES = 3

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
                   max_download_bytes: int = MAX_DOWNLOAD_BYTES) -> None:
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
        if item.origin:
            target.parent.mkdir(parents=True, exist_ok=True)
            _download(item.origin, target, place, max_download_bytes)
            note(f"fetched {item.origin} -> {item.local} ({target.stat().st_size} bytes)")
        elif item.cache:
            if fetch_cache is None:
                raise FileProblem(f"{place}: no cellar to fetch cache file {item.cache!r} from")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                fetch_cache(item.cache, target)
            except FileProblem:
                raise
            except Exception as e:
                raise FileProblem(f"{place}: cannot fetch cache file {item.cache!r}: {e}") from e
            note(f"fetched cache {item.cache} -> {item.local}")
        elif not target.exists():
            raise FileProblem(f"{place}: missing (no such file in the workflow directory)")


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


def _download(url: str, target: Path, place: str, limit: int) -> None:
    delay = 1.0
    for attempt in range(1, DOWNLOAD_TRIES + 1):
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, replacing(target) as out:
                copied = 0
                while True:
                    chunk = response.read(1024 * 1024)
                    if not chunk:
                        break
                    copied += len(chunk)
                    if copied > limit:
                        raise FileProblem(f"{place}: {url} is larger than {limit} bytes")
                    out.write(chunk)
            return
        except urllib.error.HTTPError as e:
            if e.code < 500 or attempt == DOWNLOAD_TRIES:
                raise FileProblem(f"{place}: GET {url} answered {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            if attempt == DOWNLOAD_TRIES:
                reason = getattr(e, "reason", e)
                raise FileProblem(f"{place}: cannot download {url}: {reason}") from None
        time.sleep(delay)
        delay *= 2


def outputs_to_save(spec: RunSpec) -> list[tuple[str, Path]]:
    """(result name, file) of every `save` output; raises FileProblem for a declared
    output that does not exist. The name is the path as declared (relative to the work
    dir), or relative to the workflow dir for an output outside the work dir."""
    saved = []
    for i, item in enumerate(spec.outputs):
        relative = os.path.normpath(os.path.join(spec.workdir_prefix, item.local))
        try:
            path = inside(spec.workflow_dir, relative)
        except FileProblem as e:
            raise FileProblem(f"outputs[{i}] ({item.local}): {e}") from None
        if not path.is_file():
            raise FileProblem(f"outputs[{i}] ({item.local}): missing after the command ended")
        if item.save and path.stat().st_nlink > 1:  # it could be any file of the host's, linked in
            raise FileProblem(f"outputs[{i}] ({item.local}): a hard link (only a file of its own can be saved)")
        if item.save:
            declared = os.path.normpath(item.local)
            saved.append((relative if declared.startswith("..") else declared, path))
    return saved
