"""Workflow archives: a finished workflow's directory as one `.tar.gz` kept by cellar.

The ArchiveWorkflow RPC and `--archive-finished` make them the same way, here. The
directory is tarred and gzipped while it is sent (a thread writes the tar into a pipe that
the upload reads from, a chunk at a time, so an archive is never whole in memory);
symbolic links are stored as links, never followed. An archive counts only once storage
says it holds the size and sha256 that were sent; only then is it recorded on the
workflow (`archived_at`, `archive_sha256`) and, with `delete_workdirs`, the directory
removed from the shared volume.

In the background (`start`) the runs due to be archived are archived one at a time: every
run's end writes an etcd mark in the transaction that records it (see keys.py), read at
start and watched after, and removed once the archive is recorded (and the directory
gone, with `delete_workdirs`). So a run that ended while the stack was down, or while
archiving was off, is archived after the next start; a failure is tried again after a
doubling delay.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import queue
import tarfile
import threading
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from dagger_svc.core.records import WorkflowId, WorkflowRecord
from dagger_svc.executors.base import remove_tree, workflow_dir
from dagger_svc.store import Store
from donut_common.errors import FailedPrecondition, NotFound, Unavailable

log = logging.getLogger(__name__)

ARCHIVE_PATH = "workflow.tar.gz"  # the archive's path in cellar (kind archive, scope the workflow id)
CHUNK_BYTES = 1024 * 1024
RETRY_FIRST = 1.0  # seconds before a failed archive is tried again (doubling each time)
RETRY_MAX = 300.0


@dataclass(frozen=True)
class ArchiveInfo:
    """A stored archive, as storage describes it."""

    path: str
    size: int
    sha256: str
    created_at: float


class ArchiveStorage(Protocol):
    """Where archives are kept (cellar, through its client)."""

    def put(self, workflow_id: str, owner: str, chunks: Iterable[bytes]) -> ArchiveInfo:
        """Stores the workflow's archive for its owner (who may then read it), replacing
        an earlier one; nothing is stored unless the chunks end normally."""
        ...

    def stat(self, workflow_id: str) -> ArchiveInfo:
        """The stored archive (NotFound when there is none)."""
        ...


class _TarGz:
    """The directory as a .tar.gz, made while it is read; its size and sha256 once read
    to the end, or why it could not be made (`error`)."""

    def __init__(self, directory: Path, stopping: threading.Event) -> None:
        self.directory = directory
        self.stopping = stopping
        self.size = 0
        self.digest = hashlib.sha256()
        self.error: Exception | None = None

    def _write(self, fd: int) -> None:
        raw = os.fdopen(fd, "wb")
        try:
            gz = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0)
            tar = tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - closed below
            for name in sorted(os.listdir(self.directory)):
                tar.add(self.directory / name, arcname=name)  # recursive; links as links
            tar.close()
            gz.close()  # the gzip trailer only after every member: a failed archive never looks whole
        except BrokenPipeError:
            pass  # the reader went away (the upload failed): it knows why
        except Exception as e:  # noqa: BLE001 - handed to the reader
            self.error = FailedPrecondition(f"cannot archive {self.directory}: {e}")
        finally:
            with contextlib.suppress(OSError):
                raw.close()

    def chunks(self) -> Generator[bytes]:
        read_end, write_end = os.pipe()
        writer = threading.Thread(target=self._write, args=(write_end,), name="archive-tar", daemon=True)
        writer.start()
        try:
            with os.fdopen(read_end, "rb") as source:
                while chunk := source.read(CHUNK_BYTES):
                    if self.stopping.is_set():
                        self.error = Unavailable("archiving stopped with the stack")
                        raise self.error
                    self.size += len(chunk)
                    self.digest.update(chunk)
                    yield chunk
        finally:  # (closing the read end ends a writer that is still writing)
            writer.join()
        if self.error is not None:
            raise self.error


class Archiver:
    def __init__(self, store: Store, storage: ArchiveStorage, data_root: Path, delete_workdirs: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.storage = storage
        self.data_root = data_root
        self.delete_workdirs = delete_workdirs
        self.clock = clock
        self.problems: dict[WorkflowId, str] = {}
        """Runs whose last background archive failed -> why (until it succeeds)."""
        self._due: queue.SimpleQueue[WorkflowId | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._unwatch: Callable[[], None] | None = None

    def archive(self, workflow: WorkflowRecord, revision: int) -> ArchiveInfo:
        """Stores the directory of the ended workflow (read at `revision`) as its archive,
        checks what storage holds, and records it on the workflow."""
        directory = workflow_dir(self.data_root, workflow.id)
        if not directory.is_dir():
            if workflow.archived:  # archived, then its directory removed: that archive stands
                return self.storage.stat(workflow.id)
            raise FailedPrecondition(f"workflow {workflow.id} has no directory to archive")
        archive = _TarGz(directory, self._stopping)
        chunks = archive.chunks()
        try:
            self.storage.put(workflow.id, workflow.owner, chunks)
        except Exception as e:
            if archive.error is not None:
                raise archive.error from e
            raise
        finally:
            with contextlib.suppress(ValueError):  # (still being read by the upload's thread: it ends it)
                chunks.close()  # a refused upload may leave it unread: this ends its writer
        stored = self.storage.stat(workflow.id)
        sent = (archive.size, archive.digest.hexdigest())
        if (stored.size, stored.sha256) != sent:
            raise Unavailable(f"the archive of workflow {workflow.id} was not stored as sent: storage holds "
                              f"{stored.size} bytes (sha256 {stored.sha256}), {sent[0]} were sent (sha256 {sent[1]})")
        recorded = replace(workflow, archived_at=max(self.clock(), workflow.finished_at or 0),
                           archive_sha256=stored.sha256)
        self.store.record_archive(recorded, revision, done=not self.delete_workdirs)
        return stored

    # ---- in the background ---------------------------------------------------------

    def start(self) -> Archiver:
        """Archives every run due now, and each one that ends from now on."""
        revision = self.store.current_revision()
        self._unwatch = self.store.watch_archives_due(self._due.put, after=revision)
        for workflow_id in self.store.archives_due():
            self._due.put(workflow_id)
        self._thread = threading.Thread(target=self._loop, name="archiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops archiving (an archive being made is dropped, and made after the next start)."""
        self._stopping.set()
        if self._unwatch is not None:
            self._unwatch()
        self._due.put(None)
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        retries: dict[WorkflowId, tuple[float, float]] = {}  # -> (when, delay)
        while not self._stopping.is_set():
            now = time.monotonic()
            wait = min((when for when, _ in retries.values()), default=now + 3600) - now
            try:
                workflow_id = self._due.get(timeout=max(0.0, wait))
            except queue.Empty:
                workflow_id = min(retries, key=lambda w: retries[w][0])
            if workflow_id is None:
                return
            try:
                self._settle(workflow_id)
            except Exception as e:  # noqa: BLE001 - tried again later; the other runs go on
                if self._stopping.is_set():
                    return
                delay = min(retries[workflow_id][1] * 2, RETRY_MAX) if workflow_id in retries else RETRY_FIRST
                retries[workflow_id] = (time.monotonic() + delay, delay)
                self.problems[workflow_id] = str(e)
                log.warning("cannot archive workflow %s (trying again in %.0fs): %s", workflow_id, delay, e)
            else:
                retries.pop(workflow_id, None)
                self.problems.pop(workflow_id, None)

    def _settle(self, workflow_id: WorkflowId) -> None:
        """Archives the run if it is due (and removes its directory, with delete_workdirs)."""
        try:
            workflow, revision = self.store.workflow(workflow_id)
        except NotFound:
            self.store.archive_done(workflow_id)
            return
        if not workflow.status.finished:
            return  # run again by a retry: its end marks it due again
        if not workflow.archived:
            directory = workflow_dir(self.data_root, workflow_id)
            if not directory.is_dir():
                log.warning("workflow %s has no directory to archive", workflow_id)
                self.store.archive_done(workflow_id, revision)
                return
            self.archive(workflow, revision)
            log.info("archived workflow %s", workflow_id)
            workflow, revision = self.store.workflow(workflow_id)
            if not workflow.archived:
                return
        if self.delete_workdirs:
            self._remove_directory(workflow, revision)

    def _remove_directory(self, workflow: WorkflowRecord, revision: int) -> None:
        """Removes the archived run's directory once storage still holds the archive
        recorded on it; then the run is no longer due."""
        stored = self.storage.stat(workflow.id)
        if stored.sha256 != workflow.archive_sha256:
            raise Unavailable(f"storage holds another archive of workflow {workflow.id} than the one recorded "
                              f"(sha256 {stored.sha256}, not {workflow.archive_sha256}); its directory stays")
        directory = workflow_dir(self.data_root, workflow.id)
        if directory.is_dir() and not directory.is_symlink():
            remove_tree(directory)
            log.info("removed the directory of archived workflow %s", workflow.id)
        self.store.archive_done(workflow.id, revision)
