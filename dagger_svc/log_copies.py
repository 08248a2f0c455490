"""Ended attempts' logs copied into lasting storage, so they outlive dagger's local files.

An attempt's log is written to a local file (`logs.LogStore`), which a new machine, a
deleted data dir or another replica does not have. Once the attempt has ended (its log is
complete: `LogStore.end`), `LogCopier` copies the file as it is, markers included, through
the `LogCopies` port (cellar in the stack). It does so in its own thread, so neither the
scheduler nor log pushes ever wait for storage; a copy that fails is tried again with
backoff until it is stored.

A copy is recorded by an empty marker file beside the log (`<job>.<attempt>.copied`),
written once the copy is stored. At start the copier looks through the logs folder for logs
with no marker whose attempt has ended (per etcd), so a copy that a crash or a stop cut
short is made after the next start. A marker beside the file rather than a mark in etcd,
because what it records is about that file: it goes with the file (a deleted logs folder
has nothing left to copy), needs no cleanup, and a scan checks it without a round trip.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dagger_svc.core.records import WorkflowId
from dagger_svc.logs import LogStore
from dagger_svc.store import Store
from donut_common import names
from donut_common.errors import NotFound

log = logging.getLogger(__name__)


class LogCopies(Protocol):
    """Where the copies of ended attempts' logs are kept. Errors are donut_common.errors
    (Unavailable when the storage can't be reached)."""

    def put(self, workflow_id: str, job: str, attempt: int, source: Path, owner: str) -> None:
        """Stores the file as the attempt's copy (replacing an earlier one), as the owner's."""
        ...

    def remove(self, workflow_id: str) -> None:
        """Removes every copy kept for the workflow."""
        ...

    def read(self, workflow_id: str, job: str, attempt: int) -> Generator[bytes, None, None]:
        """The copy's bytes as they arrive (NotFound when there is none); closing the
        iterator early stops the download."""
        ...


@dataclass(frozen=True)
class CopySettings:
    first_retry: float = 1.0
    """Seconds before a failed copy is tried again; doubled after each failure."""
    max_retry: float = 60.0
    """The longest wait between two tries of a copy."""


@dataclass(order=True)
class _Due:
    at: float
    order: int
    key: tuple[str, str, int] = field(compare=False)
    ended: bool = field(compare=False)  # known to have ended (else etcd is asked)
    failures: int = field(default=0, compare=False)


def marker(log_path: Path) -> Path:
    """The file saying the log at log_path has been copied."""
    return log_path.with_suffix(".copied")


class LogCopier:
    def __init__(self, logs: LogStore, copies: LogCopies, store: Store, settings: CopySettings = CopySettings(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logs = logs
        self.copies = copies
        self.store = store
        self.settings = settings
        self.clock = clock
        self._due: list[_Due] = []
        self._busy = 0  # copies being made now
        self._order = 0
        self._stopping = False
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> LogCopier:
        """Copies every log that ends from now on, and those that ended uncopied before."""
        self.logs.on_end(self.ended)
        with self._changed:
            self._busy += 1  # the scan: not idle until it has queued what it found
        self._thread = threading.Thread(target=self._run, name="log-copier", daemon=True)
        self._thread.start()
        return self

    def ended(self, workflow_id: str, job: str, attempt: int) -> None:
        """The attempt's log is complete: copy it (in the background)."""
        self._queue((workflow_id, job, attempt), ended=True)

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no copy is queued or being made; False if timeout passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: not self._due and not self._busy, timeout)

    def stop(self) -> None:
        """Stops copying (what is left is copied after the next start)."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # ---- the copying thread ----------------------------------------------------------

    def _queue(self, key: tuple[str, str, int], ended: bool, at: float = 0.0, failures: int = 0) -> None:
        with self._changed:
            self._order += 1
            heapq.heappush(self._due, _Due(at, self._order, key, ended, failures))
            self._changed.notify_all()

    def _run(self) -> None:
        try:
            self._scan()
        except Exception:
            log.exception("logs: looking for logs left uncopied failed")
        finally:
            with self._changed:
                self._busy -= 1
                self._changed.notify_all()
        while True:
            with self._changed:
                while not self._stopping and (not self._due or self._due[0].at > self.clock()):
                    self._changed.wait(None if not self._due else self._due[0].at - self.clock())
                if self._stopping:
                    return
                due = heapq.heappop(self._due)
                self._busy += 1
            try:
                self._copy(due)
            except Exception as e:  # noqa: BLE001 - storage or etcd away: try again later
                wait = min(self.settings.max_retry, self.settings.first_retry * 2 ** due.failures)
                log.warning("logs: copying the log of %s/%s attempt %d failed (trying again in %.1f s): %s",
                            *due.key, wait, e)
                self._queue(due.key, due.ended, self.clock() + wait, due.failures + 1)
            finally:
                with self._changed:
                    self._busy -= 1
                    self._changed.notify_all()

    def _scan(self) -> None:
        """Queues every log of the folder not copied yet (whether it has ended is asked later)."""
        if not self.logs.root.is_dir():
            return
        for folder in self.logs.root.iterdir():
            if not names.matches(names.WORKFLOW_ID, folder.name) or not folder.is_dir():
                continue
            for path in folder.glob("*.log"):
                job, _, number = path.name.removesuffix(".log").rpartition(".")
                if names.matches(names.JOB_NAME, job) and number.isdigit() and not marker(path).exists():
                    self._queue((folder.name, job, int(number)), ended=False)

    def _copy(self, due: _Due) -> None:
        workflow_id, job, attempt = due.key
        path = self.logs.path(workflow_id, job, attempt)
        if marker(path).exists() or not path.exists():
            return
        try:
            if not due.ended and not self.store.job(WorkflowId(workflow_id), job).attempt_over(attempt):
                return  # still running: its end queues it again
            owner = self.store.workflow(WorkflowId(workflow_id))[0].owner
        except NotFound:
            return  # the workflow is gone: its log has no one to belong to
        self.copies.put(workflow_id, job, attempt, path, owner)
        try:
            self.store.workflow(WorkflowId(workflow_id))
        except NotFound:  # deleted while the copy was made, maybe after its copies were removed
            self.copies.remove(workflow_id)
            return
        marker(path).touch()
