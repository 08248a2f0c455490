"""Deleting a workflow with everything it has, and the retention sweep that deletes old ones.

A deletion is safe against a crash half-way. First the workflow record moves to its
deletion mark in one transaction guarded by its revision (a retry racing it loses): from
then on the workflow is not found, listed, watched, retried or cloned. Then its files go:
the cellar objects of every kind in WORKFLOW_FILE_KINDS, its work directory, dagger's log
files. Last its remaining keys go with the mark, in one transaction. A mark left behind
(a crash, cellar away) is finished later by `Deleter.finish_interrupted`, which the
retention sweep runs at start and on every pass. The upload (`cache`) is not the
workflow's alone (clones share it) and stays.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dagger_svc.core.records import WorkflowId, WorkflowRecord
from dagger_svc.executors.base import remove_tree, workflow_dir
from dagger_svc.logs import LogStore
from dagger_svc.store import Store
from donut_common.errors import Conflict, NotFound, Unavailable

log = logging.getLogger(__name__)

WORKFLOW_FILE_KINDS = ("result", "archive", "log")
"""The cellar kinds whose scope is a workflow id: all of them go with the workflow."""
RETENTION_PAGE = 100  # workflows read at a time by the retention sweep
DAY = 86400.0


class WorkflowFiles(Protocol):
    """What cellar keeps of a workflow, as its deletion removes it."""

    def remove(self, kind: str, workflow_id: WorkflowId) -> None:
        """Removes every file of that kind kept for the workflow (none: nothing to do);
        Unavailable when cellar can't be reached."""
        ...


@dataclass(frozen=True)
class Deleter:
    store: Store
    logs: LogStore
    data_root: Path
    """Where workflow directories live (see `workflow_dir`)."""
    files: WorkflowFiles | None = None
    """cellar's files of workflows (None: there is no cellar, e.g. in scheduler tests)."""
    leftovers: Callable[[str], None] | None = None
    """Removes what the executor keeps of a workflow's attempts elsewhere (a cluster's
    finished Jobs and their Secrets); a failure there is only logged (its reaper goes on)."""

    def delete(self, workflow: WorkflowRecord, revision: int) -> None:
        """Deletes the workflow, whose record is at `revision` (Conflict if it changed)."""
        self.store.mark_deleting(workflow, revision)
        self.finish(workflow)

    def finish(self, workflow: WorkflowRecord) -> None:
        """Removes the files and keys of a workflow marked for deletion (again, if an
        earlier attempt was cut short: every step may run twice)."""
        try:  # the local logs first: none is left for the log copier to copy
            self.logs.remove(workflow.id)
            remove_tree(workflow_dir(self.data_root, workflow.id))
        except OSError as e:
            raise Unavailable(f"cannot remove the files of workflow {workflow.id}: {e}") from e
        if self.files is not None:
            for kind in WORKFLOW_FILE_KINDS:
                self.files.remove(kind, workflow.id)
        if self.leftovers is not None:
            try:
                self.leftovers(workflow.id)
            except Exception:  # the executor's own reaper removes them later
                log.warning("cannot remove the executor's leftovers of workflow %s", workflow.id, exc_info=True)
        self.store.remove_deleted(workflow)

    def finish_interrupted(self) -> int:
        """Finishes every deletion that was cut short; how many were finished (a failure
        is logged, and the deletion tried again next time)."""
        finished = 0
        for workflow in self.store.deleting():
            try:
                self.finish(workflow)
                finished += 1
            except Unavailable as e:
                log.warning("cannot finish deleting workflow %s yet: %s", workflow.id, e)
        return finished

    def delete_ended_before(self, before: float) -> int:
        """Deletes every workflow that ended before `before` (seconds since the epoch);
        how many. Reads only the workflows created before then (the by-time index)."""
        deleted, position = 0, ""
        while True:
            page, position = self.store.workflows_created_before(before, position, RETENTION_PAGE)
            deleted += sum(self._delete_if_ended_before(workflow.id, before) for workflow in page
                           if _ended_before(workflow, before))
            if not position:
                return deleted

    def _delete_if_ended_before(self, workflow_id: WorkflowId, before: float) -> int:
        try:
            workflow, revision = self.store.workflow(workflow_id)  # (the revision the deletion is guarded by)
            if not _ended_before(workflow, before):
                return 0
            self.delete(workflow, revision)
        except (Conflict, NotFound):
            return 0  # retried or deleted meanwhile: looked at again next pass
        except Unavailable as e:
            log.warning("cannot delete workflow %s yet: %s", workflow.id, e)
            return 0
        return 1


@dataclass(frozen=True)
class RetentionSettings:
    days: float = 0.0
    """Workflows that ended more than this many days ago are deleted (0: none ever are)."""
    interval: float = 300.0
    """Seconds between two sweeps."""


class Retention:
    """A background thread that finishes interrupted deletions at start and, when a
    retention is set, deletes the workflows that ended longer ago than it, every interval."""

    def __init__(self, deleter: Deleter, settings: RetentionSettings, clock: Callable[[], float]) -> None:
        self.deleter = deleter
        self.settings = settings
        self.clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        """Sweeps run so far (tests wait on it)."""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def sweep(self) -> int:
        """One pass: interrupted deletions finished, old workflows deleted; how many."""
        done = self.deleter.finish_interrupted()
        if self.settings.days > 0:
            done += self.deleter.delete_ended_before(self.clock() - self.settings.days * DAY)
        return done

    def _run(self) -> None:
        while True:
            try:
                self.sweep()
            except Exception:  # etcd away: tried again next pass
                log.warning("retention sweep failed", exc_info=True)
            self.passes += 1
            if self.settings.days <= 0 or self._stopping.wait(self.settings.interval):
                return


def _ended_before(workflow: WorkflowRecord, before: float) -> bool:
    return workflow.status.finished and (workflow.finished_at or workflow.created_at or 0) < before
