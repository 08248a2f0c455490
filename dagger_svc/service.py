"""dagger's domain operations: what the gRPC servicer (and tests) call.

Validates input before anything is stored, keeps ownership and state rules in one place,
and talks to etcd through the Store and to running jobs through the Scheduler.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dagger_svc.archives import ArchiveInfo, Archiver
from dagger_svc.core.definition import Definition, parse_definition
from dagger_svc.core.limits import label_problems, submission_problems
from dagger_svc.core.records import JobRecord, JobStatus, Outcome, WorkflowId, WorkflowRecord, WorkflowStatus
from dagger_svc.core.run import prepare_retry, retry_selection
from dagger_svc.deletion import Deleter
from dagger_svc.executors.base import workflow_dir
from dagger_svc.log_copies import LogCopies
from dagger_svc.logs import LogLine, LogStore, TimedLine, read_stored
from dagger_svc.scheduler import Scheduler
from dagger_svc.store import Replica, RunView, Store, UploadMark, no_workflow
from donut_common import names
from donut_common.auth import Principal
from donut_common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Problem,
    Unavailable,
)
from streamed_job.attempt import STDERR, STDOUT, SYSTEM

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100  # workflows in a page of a listing that names no size
MAX_PAGE_SIZE = 1000
MIN_ID_PREFIX = 4
_ID_PREFIX = re.compile(rf"[0-9a-f-]{{{MIN_ID_PREFIX},36}}")
PREFIX_READS = 100  # workflows read at most to find the caller's with an id prefix
PAGE_READS = 5  # reads of a filtered listing's page at most (a page may come back short)
_PAGE_TOKEN = re.compile(r"[0-9]{15}/" + names.WORKFLOW_ID)

WATCH_INTERVAL = 0.05  # seconds between two updates of a watched workflow (the last one is never held back)


@dataclass(frozen=True)
class ReplicaState:
    """A live replica, the running workflows it owns, and when its lease ends unless renewed."""

    replica: Replica
    workflows: int
    lease_expires_at: float


@dataclass(frozen=True)
class DaggerConfig:
    data_root: Path
    """Workflow directories live under it: <data_root>/<workflow id>/."""
    default_parallelism: int = 4
    """Parallelism of a submission that names none."""
    force_delete_wait: float = 60.0
    """Seconds a forced deletion waits for the workflow it cancelled to end."""


class Uploads(Protocol):
    """The files uploaded with submissions (kept by cellar)."""

    def files(self, upload_id: str) -> dict[str, str]:
        """The paths uploaded under the id and their owners, to check `cache:` inputs and
        that the upload is the caller's."""
        ...

    def remove(self, upload_id: str) -> None:
        """Removes every file of the upload."""
        ...


class DaggerService:
    def __init__(self, store: Store, logs: LogStore, scheduler: Scheduler, config: DaggerConfig,
                 uploads: Uploads | None = None, log_copies: LogCopies | None = None,
                 deleter: Deleter | None = None, archiver: Archiver | None = None) -> None:
        self.store = store
        self.logs = logs
        self.scheduler = scheduler
        self.config = config
        self.uploads = uploads
        self.log_copies = log_copies
        self.deleter = deleter or Deleter(store, logs, config.data_root)
        self.archiver = archiver

    # ---- workflows -----------------------------------------------------------------

    def create(self, caller: Principal, definition_text: bytes, name: str = "", parallelism: int = 0,
               fail_fast: bool = False, upload_id: str = "", labels: Mapping[str, str] | None = None) -> WorkflowRecord:
        caller.require_user()
        labels = dict(labels or {})
        problems = submission_problems(name, parallelism, zero_means="the default") + label_problems(labels)
        upload_ok = not upload_id or names.matches(names.UPLOAD_ID, upload_id)
        if not upload_ok:
            problems.append(Problem("upload_id", "must be letters, digits, '.', '_' or '-'"))
        try:
            definition = parse_definition(definition_text)
        except InvalidArgument as e:
            problems.extend(e.problems)
        else:
            if upload_ok:
                problems.extend(self._upload_problems(caller, definition, upload_id))
        if problems:
            if upload_ok and upload_id:
                self._remove_refused_upload(caller, upload_id)
            raise InvalidArgument(problems)
        return self._store_new(definition, name, parallelism or self.config.default_parallelism,
                               fail_fast, upload_id, caller.user_id, labels)

    def _remove_refused_upload(self, caller: Principal, upload_id: str) -> None:
        """Removes the upload of a refused submission if it is wholly the caller's and no
        stored workflow uses it (marked so in the store first, which a workflow being stored
        with it meanwhile cannot pass). A failure is only logged: the refusal stands."""
        if self.uploads is None:
            return
        try:
            files = self.uploads.files(upload_id)
            if files and set(files.values()) == {caller.user_id} \
                    and self.store.mark_upload(upload_id, UploadMark.REMOVED) is UploadMark.REMOVED:
                self.uploads.remove(upload_id)
        except Exception:  # cellar or etcd away: the upload stays, the refusal is what matters
            log.warning("cannot remove upload %s of a refused submission", upload_id, exc_info=True)

    def _upload_problems(self, caller: Principal, definition: Definition, upload_id: str) -> list[Problem]:
        """A problem for every `cache:` input that was not uploaded with the submission and
        for an upload id with nothing in it. Someone else's upload (its files would be
        readable by the workflow's jobs) is refused in the same words as one with nothing
        in it, so an upload id says nothing of whether it exists."""
        if self.uploads is None:
            return []
        present = self.uploads.files(upload_id) if upload_id else {}
        if not caller.is_admin and any(owner != caller.user_id for owner in present.values()):
            present = {}
        problems = []
        if upload_id and not present:
            problems.append(Problem("upload_id", f"nothing was uploaded under '{upload_id}'"))
        return problems + _cache_problems(definition, present)

    def _store_new(self, definition: Definition, name: str, parallelism: int, fail_fast: bool,
                   upload_id: str, owner: str, labels: Mapping[str, str]) -> WorkflowRecord:
        if upload_id and self.store.mark_upload(upload_id, UploadMark.USED) is UploadMark.REMOVED:
            raise InvalidArgument([Problem("upload_id", f"'{upload_id}' was removed with a refused submission: "
                                                        "upload the files again under a new id")])
        workflow_id = WorkflowId(str(uuid.uuid4()))
        jobs = {job: JobRecord(job) for job in definition.jobs}
        workflow = WorkflowRecord(
            id=workflow_id, name=name or workflow_id[:8], owner=owner, parallelism=parallelism,
            fail_fast=fail_fast, created_at=time.time(), upload_id=upload_id, job_total=len(jobs),
            counts={JobStatus.WAITING.value: len(jobs)}, labels=dict(labels),
        )
        self.store.create_workflow(workflow, definition, jobs)
        return workflow

    def validate(self, caller: Principal, definition_text: bytes,
                 uploads: Collection[str] | None = None) -> Definition:
        """The definition, parsed; with `uploads`, its `cache:` inputs must be among them."""
        caller.require_user()
        definition = parse_definition(definition_text)
        problems = [] if uploads is None else _cache_problems(definition, uploads)
        if problems:
            raise InvalidArgument(problems)
        return definition

    def get(self, caller: Principal, workflow_id: str) -> WorkflowRecord:
        return self._get_versioned(caller, workflow_id)[0]

    def _get_versioned(self, caller: Principal, workflow_id: str) -> tuple[WorkflowRecord, int]:
        caller.require_user()
        workflow, revision = self.store.workflow(checked_id(workflow_id))
        _check_owner(caller, workflow)
        return workflow, revision

    def run(self, caller: Principal, workflow_id: str) -> RunView:
        """The workflow with its definition and jobs, all as they were at one moment."""
        caller.require_user()
        view = self.store.run(checked_id(workflow_id))
        _check_owner(caller, view.workflow)
        return view

    def workdir(self, workflow_id: WorkflowId) -> Path:
        return workflow_dir(self.config.data_root, workflow_id)

    def list_workflows(self, caller: Principal, statuses: set[WorkflowStatus] | None = None, page_size: int = 0,
                       page_token: str = "", labels: Mapping[str, str] | None = None, mine: bool = False,
                       ) -> tuple[list[WorkflowRecord], str]:
        """A page of the caller's workflows (an admin's: everybody's), newest first, and the
        token of the next page ("" after the last); with mine, the caller's own only, admins
        too. With a status or label filter a page reads
        at most PAGE_READS pages' worth of workflows, so it may hold fewer than asked."""
        caller.require_user()
        labels = dict(labels or {})
        problems = label_problems(labels)
        if page_size < 0:
            problems.append(Problem("page_size", f"must be 0 (the default, {DEFAULT_PAGE_SIZE}) or more"))
        if page_token and not _PAGE_TOKEN.fullmatch(page_token):
            problems.append(Problem("page_token", "not a token this listing gave (start again without one)"))
        if problems:
            raise InvalidArgument(problems)
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        owner = None if caller.is_admin and not mine else caller.user_id
        found: list[WorkflowRecord] = []
        position = page_token
        for _ in range(PAGE_READS):
            read, position = self.store.workflow_page(owner, position, size - len(found))
            found += [w for w in read if (not statuses or w.status in statuses) and caller.owns(w.owner)
                      and labels.items() <= w.labels.items()]
            if len(found) == size or not position:
                break
        return found, position

    def find_workflows(self, caller: Principal, id_prefix: str, limit: int) -> list[WorkflowRecord]:
        """Up to `limit` of the caller's workflows (an admin's: anybody's) whose id starts
        with `id_prefix`, in id order: what a short id the user typed may mean."""
        caller.require_user()
        if not _ID_PREFIX.fullmatch(id_prefix):
            raise InvalidArgument([Problem("id_prefix", f"not the start of a workflow id (at least "
                                           f"{MIN_ID_PREFIX} characters of it): {id_prefix!r}")])
        # others' workflows read here are dropped; ids are random, so few share a prefix
        read = self.store.workflows_by_prefix(id_prefix, PREFIX_READS)
        return [w for w in read if caller.owns(w.owner)][:limit]

    def cancel(self, caller: Principal, workflow_id: str) -> WorkflowRecord:
        workflow = self.get(caller, workflow_id)
        if workflow.status.finished:
            raise FailedPrecondition(f"workflow {workflow_id} already ended ({workflow.status.value})")
        self.store.request_cancel(workflow.id)
        return workflow

    def retry(self, caller: Principal, workflow_id: str, only: Sequence[str] = (),
              restart_successful: bool = False) -> WorkflowRecord:
        """Runs an ended workflow's unsuccessful jobs again; with `only`, just those among
        the named jobs and their descendants; with `restart_successful`, succeeded ones too."""
        workflow, revision = self._get_versioned(caller, workflow_id)
        selected = retry_selection(self.store.definition(workflow.id), only) if only else None
        if not workflow.status.finished:
            raise FailedPrecondition(f"workflow {workflow_id} is still {workflow.status.value}; retry it once it ends")
        if workflow.archived and not self.workdir(workflow.id).exists():
            raise FailedPrecondition(f"the directory of workflow {workflow_id} was removed once archived, so its "
                                     "jobs' files are gone: clone it to run it again")
        revisions = self.store.workflow_revisions(workflow.id, revision)
        jobs = self.store.jobs(workflow.id, revisions)
        queued, changed = prepare_retry(workflow, jobs, time.time(), selected, restart_successful)
        if not changed:
            among = "the chosen jobs and their descendants" if only else "every job"
            raise FailedPrecondition(f"workflow {workflow_id} has nothing to retry: {among} succeeded "
                                     "(--restart-successful runs them again)")
        self.store.clear_cancel(workflow.id)
        self.store.save_run(workflow.id, queued, changed.values(), revisions, enqueue=True)
        return queued

    def clone(self, caller: Principal, workflow_id: str, name: str = "", parallelism: int = 0) -> WorkflowRecord:
        original = self.get(caller, workflow_id)
        definition = self.store.definition(original.id)
        problems = submission_problems(name, parallelism, zero_means="the original's")
        if problems:
            raise InvalidArgument(problems)
        return self._store_new(definition, name or original.name, parallelism or original.parallelism,
                               original.fail_fast, original.upload_id, caller.user_id, original.labels)

    def delete(self, caller: Principal, workflow_id: str, force: bool = False) -> None:
        """Deletes an ended workflow with everything it has; a queued or running one only
        with force, which cancels it and waits (config.force_delete_wait) for it to end.
        A deletion that was cut short is finished."""
        caller.require_user()
        checked = checked_id(workflow_id)
        try:
            workflow, revision = self.store.workflow(checked)
        except NotFound:
            marked = self.store.deleting_workflow(checked)
            if marked is None or not caller.owns(marked.owner):
                raise
            self.deleter.finish(marked)
            return
        _check_owner(caller, workflow)
        if not workflow.status.finished:
            if not force:
                raise FailedPrecondition(f"workflow {workflow.id} is {workflow.status.value}: cancel it first, "
                                         "or delete it with force (which cancels it first)")
            workflow, revision = self._cancelled(caller, workflow)
        self.deleter.delete(workflow, revision)

    def _cancelled(self, caller: Principal, workflow: WorkflowRecord) -> tuple[WorkflowRecord, int]:
        """The workflow and its revision once the cancel asked for it now has ended it."""
        self.store.request_cancel(workflow.id)
        deadline = time.monotonic() + self.config.force_delete_wait
        for _ in self.watch(caller, workflow.id, is_active=lambda: time.monotonic() < deadline):
            pass
        workflow, revision = self.store.workflow(workflow.id)
        if not workflow.status.finished:
            raise FailedPrecondition(f"workflow {workflow.id} was cancelled but is still {workflow.status.value} "
                                     f"after {self.config.force_delete_wait:g}s; try again once it has ended")
        return workflow, revision

    def archive(self, caller: Principal, workflow_id: str) -> ArchiveInfo:
        """Stores the ended workflow's directory as one .tar.gz (see dagger_svc.archives)."""
        workflow, revision = self._get_versioned(caller, workflow_id)
        if not workflow.status.finished:
            raise FailedPrecondition(f"workflow {workflow_id} is still {workflow.status.value}; "
                                     "archive it once it ends")
        if self.archiver is None:
            raise Unavailable("this server keeps no archives")
        return self.archiver.archive(workflow, revision)

    def watch(self, caller: Principal, workflow_id: str, is_active: Callable[[], bool] = lambda: True,
              min_interval: float = WATCH_INTERVAL) -> Iterator[WorkflowRecord]:
        """The workflow now, then as it changes (at most one update per min_interval,
        the newest; the final state at once), until it has ended."""
        workflow_id = self.get(caller, workflow_id).id
        latest = _Latest(min_interval)
        cancel = self.store.watch_workflow(workflow_id, latest.offer, after=self.store.current_revision())
        try:
            workflow = self.store.workflow(workflow_id)[0]
            yield workflow
            latest.sent()
            while not workflow.status.finished and is_active():
                changed = latest.take(timeout=1.0)
                if changed is _NOTHING:
                    continue
                if changed is None:
                    raise NotFound(f"workflow {workflow_id} was deleted")
                assert isinstance(changed, WorkflowRecord)
                workflow = changed
                yield workflow
                latest.sent()
        finally:
            cancel()

    def watch_run(self, caller: Principal, workflow_id: str, is_active: Callable[[], bool] = lambda: True,
                  min_interval: float = WATCH_INTERVAL) -> Iterator[RunView]:
        """The run now, then as it changes, until it has ended: views of the workflow record
        with only the job records written since the view before (at most one view per
        min_interval, the newest; the final state at once, whole, so that no job record
        that came late is missed)."""
        view = self.run(caller, workflow_id)
        latest = _Latest(min_interval)
        changed: dict[str, JobRecord] = {}
        lock = threading.Lock()
        newest: list[WorkflowRecord | None] = [view.workflow]  # offered again when only a job changed

        def on_workflow(workflow: WorkflowRecord | None) -> None:
            with lock:
                newest[0] = workflow
                latest.offer(workflow)

        def on_job(job: JobRecord) -> None:
            with lock:
                changed[job.name] = job
                if newest[0] is not None:  # (not after a deletion)
                    latest.offer(newest[0])

        cancels = [self.store.watch_jobs(view.workflow.id, on_job, after=view.revision),
                   self.store.watch_workflow(view.workflow.id, on_workflow, after=view.revision)]
        try:
            yield view
            latest.sent()
            while not view.workflow.status.finished and is_active():
                value = latest.take(timeout=1.0)
                if value is _NOTHING:
                    continue
                if value is None:
                    raise NotFound(f"workflow {view.workflow.id} was deleted")
                assert isinstance(value, WorkflowRecord)
                with lock:
                    jobs, changed = dict(changed), {}
                view = self.store.run(view.workflow.id) if value.status.finished \
                    else RunView(value, view.definition, jobs)
                yield view
                latest.sent()
        finally:
            for cancel in cancels:
                cancel()

    # ---- replicas ------------------------------------------------------------------

    def replicas(self, caller: Principal) -> list[ReplicaState]:
        """The live replicas, each with the running workflows it owns and when its lease ends."""
        if not caller.is_admin:
            raise PermissionDenied("only admins may list the replicas")
        owners = self.store.owners()
        now = time.time()
        found = []
        for replica in self.store.replicas():
            left = self.store.replica_lease_left(replica)
            if left >= 0:
                found.append(ReplicaState(replica, owners.get(replica.id, 0), now + left))
        return found

    # ---- jobs ----------------------------------------------------------------------

    def job(self, caller: Principal, workflow_id: str, name: str) -> tuple[Definition, JobRecord]:
        view = self.run(caller, workflow_id)
        if name not in view.jobs:
            raise NotFound(f"workflow {workflow_id} has no job '{name}'")
        return view.definition, view.jobs[name]

    # ---- logs and reports ----------------------------------------------------------

    def tail_logs(self, caller: Principal, workflow_id: str, job: str, attempt: int = 0, offset: int = 0,
                  follow: bool = False,
                  is_active: Callable[[], bool] = lambda: True,
                  tail: int = 0) -> Iterator[tuple[int, int, list[TimedLine]]]:
        """(attempt, index of the first line, lines) of one attempt (0: the current one),
        only its last `tail` lines when tail is set; with follow, then of every attempt
        after it, until the job has ended."""
        workflow_id = self.get(caller, workflow_id).id
        record = self.store.job(workflow_id, job)
        if attempt < 0:
            raise InvalidArgument([Problem("attempt", "must be 0 (the current one) or more")])
        if attempt > record.attempt:
            raise NotFound(f"job '{job}' has no attempt {attempt} (it has had {record.attempt})")
        current = attempt or max(record.attempt, 1)
        if not follow:
            yield from ((current, index, lines) for index, lines in
                        self._attempt_lines(workflow_id, job, current, offset, None, tail))
            return
        watched = _WatchedJob(self.store, workflow_id, job, self.logs.wake)

        def attempt_over() -> bool:
            return not is_active() or watched.gone or watched.record.attempt_over(current)

        try:
            while True:
                for index, lines in self._attempt_lines(workflow_id, job, current, offset, attempt_over, tail):
                    offset = index + len(lines)
                    yield current, index, lines
                if not is_active() or watched.gone:
                    return
                watched.changed.clear()
                record = watched.record
                if record.status.finished and record.attempt <= current:
                    return
                if record.attempt > current:
                    current, offset, tail = current + 1, 0, 0
                else:
                    watched.changed.wait(0.2)  # the next attempt has not started yet (retry backoff)
        finally:
            watched.cancel()

    def _attempt_lines(self, workflow_id: WorkflowId, job: str, attempt: int, offset: int,
                       follow_until: Callable[[], bool] | None,
                       tail: int = 0) -> Iterator[tuple[int, list[TimedLine]]]:
        """From the local file while there is one (or while the attempt may still write it),
        else from the copy of the ended attempt's log."""
        if (self.log_copies is None or self.logs.path(workflow_id, job, attempt).exists()
                or not self.store.job(workflow_id, job).attempt_over(attempt)):
            return self.logs.read_timed(workflow_id, job, attempt, offset, follow_until, tail=tail)
        return self._copied_lines(self.log_copies, workflow_id, job, attempt, offset, tail)

    @staticmethod
    def _copied_lines(copies: LogCopies, workflow_id: str, job: str, attempt: int,
                      offset: int, tail: int = 0) -> Iterator[tuple[int, list[TimedLine]]]:
        chunks = copies.read(workflow_id, job, attempt)
        try:
            if tail:  # a copy is read from its start: only the last lines are kept on the way
                kept = deque(((index + i, line) for index, lines in read_stored(chunks, offset)
                              for i, line in enumerate(lines)), maxlen=tail)
                for start in range(0, len(kept), 1000):
                    some = list(itertools.islice(kept, start, start + 1000))
                    yield some[0][0], [line for _, line in some]
                return
            yield from read_stored(chunks, offset)
        except NotFound:
            return  # no copy: the attempt wrote no line, or its file was lost before it was copied
        finally:
            chunks.close()

    def push_logs(self, caller: Principal, workflow_id: str, job: str, attempt: int, sequence: int,
                  lines: list[LogLine]) -> int:
        _check_job_caller(caller, workflow_id, job, attempt)
        if not {stream for stream, _ in lines} <= {STDOUT, STDERR, SYSTEM}:
            bad = next(i for i, (stream, _) in enumerate(lines) if stream not in (STDOUT, STDERR, SYSTEM))
            raise InvalidArgument([Problem(f"lines[{bad}].stream", "must be stdout, stderr or system")])
        return self.logs.append(workflow_id, job, attempt, lines, sequence=sequence)

    def report(self, caller: Principal, workflow_id: str, job: str, attempt: int, outcome: Outcome) -> None:
        _check_job_caller(caller, workflow_id, job, attempt)
        self.logs.end(workflow_id, job, attempt)
        self.scheduler.report(workflow_id, job, attempt, outcome)


class _WatchedJob:
    """A followed job's record, kept current by an etcd watch: a follower checks whether
    its attempt is over at every wake-up without asking etcd each time, and is woken when
    the record changes (wherever the attempt ended) or goes (the workflow was deleted)."""

    def __init__(self, store: Store, workflow_id: WorkflowId, job: str, wake: Callable[[], None]) -> None:
        self.record, revision = store.job_at(workflow_id, job)
        self.gone = False
        self.changed = threading.Event()

        def on_change(record: JobRecord | None) -> None:
            if record is None:
                self.gone = True
            else:
                self.record = record
            self.changed.set()
            wake()

        self.cancel = store.watch_job(workflow_id, job, on_change, revision)


_NOTHING = object()


class _Latest:
    """The newest state of a watched workflow, handed over at most once per interval, except
    a final state (or a deletion), which wakes the reader at once. The watch thread offers
    every change; the reader is woken only when something is due."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._value: object = _NOTHING
        self._due = threading.Event()
        self._lock = threading.Lock()
        self._sent_at = 0.0

    def offer(self, workflow: WorkflowRecord | None) -> None:
        with self._lock:
            if isinstance(self._value, WorkflowRecord) and self._value.status.finished:
                return  # the final state, not yet sent, ends the watch: what follows (a deletion) is not seen
            self._value = workflow
            final = workflow is None or workflow.status.finished
            if final or time.monotonic() >= self._sent_at + self.interval:
                self._due.set()

    def sent(self) -> None:
        with self._lock:
            self._sent_at = time.monotonic()

    def take(self, timeout: float) -> object:
        """The newest unsent value once due (or _NOTHING after timeout)."""
        with self._lock:
            pending = self._value is not _NOTHING
            wait = self._sent_at + self.interval - time.monotonic() if pending else timeout
        self._due.wait(max(0.0, wait))
        with self._lock:
            self._due.clear()
            value, self._value = self._value, _NOTHING
            return value


def _cache_problems(definition: Definition, present: Collection[str]) -> list[Problem]:
    """A problem for every `cache:` input that is not among the uploaded paths."""
    wanted = [(f"jobs[{j}].inputs[{i}].cache", item.cache) for j, spec in enumerate(definition.jobs.values())
              for i, item in enumerate(spec.inputs) if item.cache]
    return [Problem(place, f"'{path}' was not uploaded with this workflow (submit --upload)")
            for place, path in wanted if path not in present]


def _check_job_caller(caller: Principal, workflow_id: str, job: str, attempt: int) -> None:
    """Only the attempt itself (its job token), a service or an admin speaks for an attempt."""
    if caller.attempt != (workflow_id, job, attempt) and not caller.is_service and not caller.is_admin:
        raise PermissionDenied(f"this token may not act for job {workflow_id}/{job} attempt {attempt}")


def checked_id(workflow_id: str) -> WorkflowId:
    """The id, if it is one; InvalidArgument otherwise."""
    if not names.matches(names.WORKFLOW_ID, workflow_id):
        raise InvalidArgument([Problem("id", f"not a workflow id: {workflow_id!r}")])
    return WorkflowId(workflow_id)


def _check_owner(caller: Principal, workflow: WorkflowRecord) -> None:
    """Someone else's workflow is, to the caller, one that does not exist (so an id says
    nothing of whether it names a workflow); a token that may not act as a user is told so
    whatever the id names."""
    caller.require_user()
    if not caller.owns(workflow.owner):
        raise no_workflow(workflow.id)
