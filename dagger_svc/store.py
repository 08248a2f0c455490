"""dagger's state in etcd: workflows, job specs and job records, guarded writes, watches.

Every write of a record is a transaction that checks the record's last known revision
(`mod_revision`), so two writers can never both move a job on; a lost race raises
`Conflict` and the caller re-reads. Large writes go in chunks under etcd's per-transaction
limits, with the workflow record (the visible part) last. The JSON kept in etcd stays in
here: callers get records, definitions and typed watches. Every failure to reach etcd is
an `Unavailable` (see `donut_common.etcd`).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast

from dagger_svc.core.definition import Definition, StoredJob
from dagger_svc.core.records import (
    JobDoc,
    JobRecord,
    Outcome,
    WorkflowDoc,
    WorkflowId,
    WorkflowRecord,
    WorkflowStatus,
)
from dagger_svc.keys import Keys
from donut_common import etcd
from donut_common.errors import Conflict, NotFound, Unavailable

MAX_OPS_PER_TXN = 120          # etcd refuses more than 128 (--max-txn-ops)
MAX_BYTES_PER_TXN = 1_000_000  # etcd refuses requests over 1.5 MiB
CACHED_JOB_SPECS = 50_000      # job specs of the definitions kept in memory (a stored definition never changes)
Revisions = dict[str, int]     # key -> mod_revision last seen
Lease = etcd.Lease


@dataclass(frozen=True)
class RunView:
    """A workflow, its definition and its job records, as they were at one revision."""

    workflow: WorkflowRecord
    definition: Definition
    jobs: dict[str, JobRecord]
    revision: int = 0
    """The etcd revision it was read at."""


@dataclass(frozen=True)
class Claim:
    """Who owns a run: the scheduler `owner`, through a claim key bound to its lease."""

    owner: str
    lease: int


@dataclass(frozen=True)
class RunChanges:
    """A run's changed records, to be written if its keys still have `revisions` and,
    with `claim`, only while that claim on the run holds (fencing: a writer that lost its
    lease, stalled or cut off, writes nothing). With `let_go`, a run whose workflow record
    says it ended is let go in the same transaction: it leaves the queue and its claim is
    released."""

    workflow_id: WorkflowId
    workflow: WorkflowRecord | None
    jobs: list[JobRecord]
    revisions: Revisions
    let_go: bool = False
    claim: Claim | None = None


@dataclass(frozen=True)
class Replica:
    """A live scheduler replica, as it announced itself (bound to its lease)."""

    id: str
    endpoint: str = ""
    pid: int = 0
    started_at: float = 0.0
    metrics_url: str = ""
    lease: int = 0


_RunWrites = tuple[RunChanges, list[tuple[str, bytes]], list[etcd.Op]]  # a run's changes, its writes, its let-go
_REPLICA_FIELDS = ("endpoint", "pid", "started_at", "metrics_url", "lease")


@dataclass(frozen=True)
class RunSnapshot:
    """A run as its new owner found it, read in the transaction that claimed it."""

    workflow: WorkflowRecord | None
    definition: Definition
    jobs: dict[str, JobRecord]
    revisions: Revisions
    cancel_requested: bool
    reports: list[tuple[str, int, Outcome]] = dataclasses.field(default_factory=list)
    """Attempt ends that reached another replica: (job, attempt, outcome)."""


def _dump(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _workflow(value: bytes) -> WorkflowRecord:
    return WorkflowRecord.from_dict(cast(WorkflowDoc, json.loads(value)))


def _job(value: bytes) -> JobRecord:
    return JobRecord.from_dict(cast(JobDoc, json.loads(value)))


def _replica(key: str, value: bytes) -> Replica:
    info = json.loads(value)
    return Replica(key.rsplit("/", 1)[1], **{name: info[name] for name in _REPLICA_FIELDS if name in info})


def _report(key: str, value: bytes) -> tuple[str, int, Outcome]:
    """(job, attempt, outcome) of a forwarded report."""
    _, job, attempt = key.rsplit("/", 2)
    return job, int(attempt), Outcome(**json.loads(value))


def _definition(values: Iterable[bytes]) -> Definition:
    return Definition.from_stored(cast(StoredJob, json.loads(value)) for value in values)


class UploadMark(str, Enum):
    """What became of an upload first: a stored workflow uses it, or a refused submission
    removed it. Whichever comes first stays, so an upload in use is never removed."""

    USED = "used"
    REMOVED = "removed"


def no_workflow(workflow_id: str) -> NotFound:
    """What a caller hears of a workflow that is not there (or, unless an admin, not theirs)."""
    return NotFound(f"no workflow {workflow_id}")


class Store:
    def __init__(self, client: etcd.Etcd, keys: Keys | None = None) -> None:
        self._etcd = client
        self.keys = keys or Keys()
        self._definitions: OrderedDict[WorkflowId, Definition] = OrderedDict()
        self._definitions_lock = threading.Lock()

    def close(self) -> None:
        """Closes the etcd client; broken watches are not taken up again after this."""
        self._etcd.close()

    # ---- guarded writes ------------------------------------------------------------

    def _put_guarded(self, writes: Iterable[tuple[str, bytes]], revisions: Revisions,
                     unguarded: frozenset[str] = frozenset(), then: Sequence[etcd.Op] = (),
                     fence: Sequence[etcd.Compare] = ()) -> None:
        """Writes values whose keys still have the revisions in `revisions` (0: absent),
        in chunks that fit etcd's limits, updating `revisions`; the last write lands in
        the last chunk, with the operations `then`. Keys in `unguarded` are written
        whatever their revision; every chunk also checks `fence`. Raises Conflict when
        another writer got there first (or the fence no longer holds)."""
        chunk: list[tuple[str, bytes]] = []
        size = 0
        pending = list(writes)
        for i, (key, value) in enumerate(pending):
            chunk.append((key, value))
            size += len(key) + len(value)
            final = i == len(pending) - 1
            if final or len(chunk) >= MAX_OPS_PER_TXN - len(then) - len(fence) or size >= MAX_BYTES_PER_TXN:
                result = self._etcd.txn(
                    [*fence, *(etcd.mod_equals(k, revisions.get(k, 0)) for k, _ in chunk if k not in unguarded)],
                    [etcd.put(k, v) for k, v in chunk] + (list(then) if final else []),
                )
                if not result.succeeded:
                    raise Conflict(f"someone else changed {chunk[0][0]} (or another key of its batch)")
                for k, _ in chunk:
                    revisions[k] = result.revision
                chunk, size = [], 0

    # ---- workflows -----------------------------------------------------------------

    def create_workflow(self, workflow: WorkflowRecord, definition: Definition,
                        jobs: Mapping[str, JobRecord]) -> None:
        """Stores specs and job records, then the workflow record that makes it visible.
        A failure part-way leaves only invisible keys, which are removed."""
        writes: list[tuple[str, bytes]] = []
        for stored in definition.stored():
            name = stored["spec"]["name"]
            writes.append((self.keys.spec(workflow.id, name), _dump(stored)))
            writes.append((self.keys.job(workflow.id, name), _dump(jobs[name].to_dict())))
        writes += [(key, b"") for key in self._listed(workflow)]  # (listed without a record: skipped)
        writes.append((self.keys.workflow(workflow.id), _dump(workflow.to_dict())))
        writes.append((self.keys.queued(workflow.id), b"1"))
        try:
            self._put_guarded(writes, {}, unguarded=frozenset({self.keys.queued(workflow.id)}))
        except Exception:
            self._delete_workflow_keys(workflow)
            raise

    def _listed(self, workflow: WorkflowRecord) -> list[str]:
        return [self.keys.listed(owner, workflow.created_at or 0, workflow.id) for owner in (None, workflow.owner)]

    def _delete_workflow_keys(self, workflow: WorkflowRecord) -> None:
        for prefix in (self.keys.specs(workflow.id), self.keys.jobs(workflow.id)):
            self._etcd.delete_prefix(prefix)
        for key in (self.keys.workflow(workflow.id), self.keys.queued(workflow.id), self.keys.cancel(workflow.id),
                    *self._listed(workflow)):
            self._etcd.delete(key)

    def workflow(self, workflow_id: WorkflowId) -> tuple[WorkflowRecord, int]:
        """The workflow record and its revision."""
        found = self._etcd.get(self.keys.workflow(workflow_id))
        if found is None:
            raise no_workflow(workflow_id)
        return _workflow(found.value), found.mod_revision

    def workflow_in_queue(self, workflow_id: WorkflowId) -> tuple[WorkflowRecord, int, bool]:
        """The workflow record, its revision, and whether the run is queued, read together."""
        reads = [etcd.get(self.keys.workflow(workflow_id)), etcd.get(self.keys.queued(workflow_id))]
        result = self._etcd.txn([], reads)  # (reads only: no write, no fsync)
        workflow_kvs, queued_kvs = result.ranges
        if not workflow_kvs:
            raise NotFound(f"no workflow {workflow_id}")
        return _workflow(workflow_kvs[0].value), workflow_kvs[0].mod_revision, bool(queued_kvs)

    def workflows(self) -> list[WorkflowRecord]:
        """Every workflow (a scan of them all: for upgrades and tests)."""
        return [_workflow(kv.value) for kv in self._etcd.get_prefix(self.keys.workflows)]

    def workflow_page(self, owner: str | None, after: str, size: int) -> tuple[list[WorkflowRecord], str]:
        """Up to `size` workflows of the owner (None: of everybody), newest first, from just
        after the position `after` ("": the newest); and the position of the last one read
        ("" when there is nothing older)."""
        prefix = self.keys.listing(owner)
        entries = self._etcd.get_range(prefix, prefix + after if after else etcd.prefix_end(prefix), size,
                                       newest_first=True)
        return self._listed_page(prefix, entries, size)

    def workflows_by_prefix(self, id_prefix: str, limit: int) -> list[WorkflowRecord]:
        """Up to `limit` workflows whose id starts with `id_prefix`, in id order (one range read)."""
        start = self.keys.workflow(id_prefix)
        return [_workflow(kv.value) for kv in self._etcd.get_range(start, etcd.prefix_end(start), limit)]

    # ---- uploads -------------------------------------------------------------------

    def mark_upload(self, upload_id: str, mark: UploadMark) -> UploadMark:
        """Gives the upload this mark unless it has one already; the mark it has now."""
        key = self.keys.upload(upload_id)
        while True:
            if self._etcd.txn([etcd.absent(key)], [etcd.put(key, mark.value)]).succeeded:
                return mark
            found = self._etcd.get(key)
            if found is not None:  # (marks are never removed: this is only in case)
                return UploadMark(found.value.decode())

    def upgrade(self) -> None:
        """Brings what earlier versions stored up to date, once per etcd: workflows stored
        before uploads were marked mark theirs used; those stored before the listing keys
        get theirs."""
        steps = {"upload-marks": self._mark_uploads_used, "workflow-listing": self._list_workflows}
        for name, step in steps.items():
            done = self.keys.upgrade(name)
            if self._etcd.get(done) is None:
                for workflow in self.workflows():
                    step(workflow)
                self._etcd.put(done, b"1")

    def _mark_uploads_used(self, workflow: WorkflowRecord) -> None:
        if workflow.upload_id:
            self.mark_upload(workflow.upload_id, UploadMark.USED)

    def _list_workflows(self, workflow: WorkflowRecord) -> None:
        self._etcd.txn([], [etcd.put(key, b"") for key in self._listed(workflow)])

    def definition(self, workflow_id: WorkflowId) -> Definition:
        return _definition(kv.value for kv in self._etcd.get_prefix(self.keys.specs(workflow_id)))

    def jobs(self, workflow_id: WorkflowId, revisions: Revisions | None = None) -> dict[str, JobRecord]:
        """The job records (with `revisions`, their revisions are noted there)."""
        jobs = {}
        for kv in self._etcd.get_prefix(self.keys.jobs(workflow_id)):
            job = _job(kv.value)
            jobs[job.name] = job
            if revisions is not None:
                revisions[kv.key] = kv.mod_revision
        return jobs

    def job(self, workflow_id: WorkflowId, name: str) -> JobRecord:
        found = self._etcd.get(self.keys.job(workflow_id, name))
        if found is None:
            raise NotFound(f"workflow {workflow_id} has no job '{name}'")
        return _job(found.value)

    def job_at(self, workflow_id: WorkflowId, name: str) -> tuple[JobRecord, int]:
        """The job record and the store's revision when it was read (to watch from)."""
        result = self._etcd.txn([], [etcd.get(self.keys.job(workflow_id, name))])
        if not result.ranges[0]:
            raise NotFound(f"workflow {workflow_id} has no job '{name}'")
        return _job(result.ranges[0][0].value), result.revision

    def run(self, workflow_id: WorkflowId) -> RunView:
        """The workflow with its definition and job records, all as they were at one revision."""
        result = self._etcd.txn([], [etcd.get(self.keys.workflow(workflow_id))])
        if not result.ranges[0]:
            raise no_workflow(workflow_id)
        definition = self._stored_definition(workflow_id, result.revision)
        job_kvs = self._etcd.get_prefix(self.keys.jobs(workflow_id), revision=result.revision)
        jobs = {job.name: job for job in (_job(kv.value) for kv in job_kvs)}
        return RunView(_workflow(result.ranges[0][0].value), definition, jobs, result.revision)

    def _stored_definition(self, workflow_id: WorkflowId, revision: int) -> Definition:
        """The definition of a stored workflow (one whose record was seen at `revision`),
        from memory when it was read before."""
        with self._definitions_lock:
            if (found := self._definitions.get(workflow_id)) is not None:
                self._definitions.move_to_end(workflow_id)
                return found
        definition = _definition(kv.value for kv in self._etcd.get_prefix(self.keys.specs(workflow_id),
                                                                           revision=revision))
        with self._definitions_lock:
            self._definitions[workflow_id] = definition
            while sum(len(d.jobs) for d in self._definitions.values()) > CACHED_JOB_SPECS \
                    and len(self._definitions) > 1:
                self._definitions.popitem(last=False)
        return definition

    def save_run(self, workflow_id: WorkflowId, workflow: WorkflowRecord | None, jobs: Iterable[JobRecord],
                 revisions: Revisions, enqueue: bool = False, claim: Claim | None = None) -> None:
        """One guarded write of a run's changed records (with `claim`, fenced by it); the
        workflow record goes last (with enqueue, followed by the queue key that wakes a
        scheduler)."""
        writes = self._run_writes(RunChanges(workflow_id, workflow, list(jobs), revisions))
        queue_key = self.keys.queued(workflow_id)
        if enqueue:
            writes.append((queue_key, b"1"))
        self._put_guarded(writes, revisions, unguarded=frozenset({queue_key}),
                          fence=self._fence(workflow_id, claim))

    def save_runs(self, runs: Iterable[RunChanges]) -> dict[WorkflowId, Exception | None]:
        """Writes the changes of many runs in as few guarded transactions as etcd's limits
        allow (runs that fit together share one); per run, None once it is recorded, or
        why not (Conflict: another writer changed one of its records; Unavailable). A
        shared transaction that is refused is tried again run by run, so one run's
        conflict is never another's."""
        results: dict[WorkflowId, Exception | None] = {}
        group: list[_RunWrites] = []
        ops = size = 0
        for run in runs:
            writes = self._run_writes(run)
            let_go = self._let_go(run)
            run_ops = len(writes) + len(let_go) + 2
            run_size = sum(len(k) + len(v) for k, v in writes)
            if group and (ops + run_ops > MAX_OPS_PER_TXN or size + run_size > MAX_BYTES_PER_TXN):
                self._save_group(group, results)
                group, ops, size = [], 0, 0
            group.append((run, writes, let_go))
            ops, size = ops + run_ops, size + run_size
        if group:
            self._save_group(group, results)
        return results

    def _save_group(self, group: list[_RunWrites], results: dict[WorkflowId, Exception | None]) -> None:
        if len(group) == 1 or sum(len(w) + len(let_go) for _, w, let_go in group) > MAX_OPS_PER_TXN:
            for run, run_writes, let_go in group:  # (a run too large for one transaction goes in chunks)
                try:
                    self._put_guarded(run_writes, run.revisions, then=let_go,
                                      fence=self._fence(run.workflow_id, run.claim))
                    results[run.workflow_id] = None
                except (Conflict, Unavailable) as e:
                    results[run.workflow_id] = e
            return
        try:
            result = self._etcd.txn(
                [*(c for run, _, _ in group for c in self._fence(run.workflow_id, run.claim)),
                 *(etcd.mod_equals(k, run.revisions.get(k, 0)) for run, run_writes, _ in group for k, _ in run_writes)],
                [etcd.put(k, v) for _, run_writes, _ in group for k, v in run_writes]
                + [op for _, _, let_go in group for op in let_go])
        except Unavailable as e:
            results.update({run.workflow_id: e for run, _, _ in group})
            return
        if not result.succeeded:
            for one in group:  # whose record changed? each run on its own
                self._save_group([one], results)
            return
        for run, run_writes, _ in group:
            for k, _ in run_writes:
                run.revisions[k] = result.revision
            results[run.workflow_id] = None

    def _fence(self, workflow_id: WorkflowId, claim: Claim | None) -> list[etcd.Compare]:
        """What a write by the holder of `claim` checks: the claim is still its own, under
        the same lease (none without a claim)."""
        if claim is None:
            return []
        key = self.keys.claim(workflow_id)
        return [etcd.value_equals(key, claim.owner.encode()), etcd.lease_equals(key, claim.lease)]

    def _run_writes(self, run: RunChanges) -> list[tuple[str, bytes]]:
        writes = [(self.keys.job(run.workflow_id, j.name), _dump(j.to_dict())) for j in run.jobs]
        if run.workflow is not None:
            writes.append((self.keys.workflow(run.workflow_id), _dump(run.workflow.to_dict())))
        return writes

    def _let_go(self, run: RunChanges) -> list[etcd.Op]:
        """What lets an ended run go with its last records: it leaves the queue and its
        owner's claim is released."""
        if not run.let_go or run.workflow is None or not run.workflow.status.finished:
            return []
        return self._letting_go(run.workflow_id)

    def _letting_go(self, workflow_id: WorkflowId) -> list[etcd.Op]:
        """Off the queue, its owner's claim released, and due to be archived."""
        return [etcd.delete(self.keys.queued(workflow_id)), etcd.delete(self.keys.claim(workflow_id)),
                etcd.put(self.keys.to_archive(workflow_id), b""), etcd.delete_prefix(self.keys.reports(workflow_id))]

    def workflow_revisions(self, workflow_id: WorkflowId, revision: int) -> Revisions:
        """The revisions a guarded write of the workflow record checks (read at `revision`)."""
        return {self.keys.workflow(workflow_id): revision}

    # ---- deletion ------------------------------------------------------------------

    def mark_deleting(self, workflow: WorkflowRecord, revision: int) -> None:
        """Moves the workflow record (still at `revision`) to its deletion mark, out of its
        listings, in one transaction: from then on the workflow is not found, listed,
        watched, retried or cloned. Raises Conflict when the record changed meanwhile."""
        key = self.keys.workflow(workflow.id)
        ops = [etcd.put(self.keys.deleting(workflow.id), _dump(workflow.to_dict())), etcd.delete(key),
               *(etcd.delete(listed) for listed in self._listed(workflow))]
        if not self._etcd.txn([etcd.mod_equals(key, revision)], ops).succeeded:
            raise Conflict(f"workflow {workflow.id} changed while it was being deleted")

    def deleting(self) -> list[WorkflowRecord]:
        """The workflows marked for deletion whose deletion has not been finished."""
        return [_workflow(kv.value) for kv in self._etcd.get_prefix(self.keys.deleting())]

    def deleting_workflow(self, workflow_id: WorkflowId) -> WorkflowRecord | None:
        """The workflow's record if it is marked for deletion."""
        found = self._etcd.get(self.keys.deleting(workflow_id))
        return None if found is None else _workflow(found.value)

    def remove_deleted(self, workflow: WorkflowRecord) -> None:
        """Removes every key of a workflow marked for deletion, the mark with them, in one
        transaction (ranges go as one operation each, so it fits whatever the workflow's size)."""
        workflow_id = workflow.id
        self._etcd.txn([], [
            etcd.delete_prefix(self.keys.specs(workflow_id)), etcd.delete_prefix(self.keys.jobs(workflow_id)),
            etcd.delete_prefix(self.keys.reports(workflow_id)),
            *(etcd.delete(key) for key in (
                self.keys.workflow(workflow_id), self.keys.queued(workflow_id), self.keys.cancel(workflow_id),
                self.keys.claim(workflow_id), self.keys.to_archive(workflow_id), *self._listed(workflow),
                self.keys.deleting(workflow_id)))])

    def workflows_created_before(self, before: float, after: str, size: int) -> tuple[list[WorkflowRecord], str]:
        """Up to `size` workflows created before `before` (of everybody), oldest first, from
        just after the position `after` ("": the oldest); and the position of the last one
        read ("" when there is nothing more)."""
        prefix = self.keys.listing(None)
        end = self.keys.listed(None, before, "")
        entries = self._etcd.get_range(prefix + after + "\0" if after else prefix, end, size)
        return self._listed_page(prefix, entries, size)

    def _listed_page(self, prefix: str, entries: list[etcd.KeyValue], size: int) -> tuple[list[WorkflowRecord], str]:
        """The records of a page of listing entries (under `prefix`), and the position of the
        last one read ("" when the page is not full: nothing more)."""
        position = entries[-1].key.removeprefix(prefix) if len(entries) == size else ""
        return self._records([kv.key.rsplit("/", 1)[1] for kv in entries]), position

    def _records(self, ids: list[str]) -> list[WorkflowRecord]:
        """The records of those ids that have one, in the order of the ids."""
        found: dict[str, WorkflowRecord] = {}
        for start in range(0, len(ids), MAX_OPS_PER_TXN):
            result = self._etcd.txn([], [etcd.get(self.keys.workflow(i)) for i in ids[start:start + MAX_OPS_PER_TXN]])
            found.update((w.id, w) for w in (_workflow(kv.value) for kvs in result.ranges for kv in kvs))
        return [found[i] for i in ids if i in found]

    # ---- archives ------------------------------------------------------------------

    def archives_due(self) -> list[WorkflowId]:
        """The runs that ended and whose directory has not been archived since."""
        return [self.keys.workflow_id(kv.key) for kv in self._etcd.get_prefix(self.keys.archive_due)]

    def watch_archives_due(self, on_due: Callable[[WorkflowId], None], after: int) -> Callable[[], None]:
        """Calls on_due for every run that ended after revision `after`. Returns cancel."""
        def on_event(key: str, value: bytes | None) -> None:
            if value is not None:
                on_due(self.keys.workflow_id(key))

        return self._etcd.watch_prefix(self.keys.archive_due, on_event, start_revision=after + 1)

    def record_archive(self, workflow: WorkflowRecord, revision: int, done: bool) -> int:
        """Writes the workflow record (saying it was archived) if it is still at `revision`
        (Conflict if not: a retry ran it again meanwhile); with done, it is no longer due.
        Returns the record's new revision."""
        key = self.keys.workflow(workflow.id)
        ops = [etcd.put(key, _dump(workflow.to_dict()))]
        if done:
            ops.append(etcd.delete(self.keys.to_archive(workflow.id)))
        result = self._etcd.txn([etcd.mod_equals(key, revision)], ops)
        if not result.succeeded:
            raise Conflict(f"workflow {workflow.id} changed while it was being archived")
        return result.revision

    def archive_done(self, workflow_id: WorkflowId, revision: int | None = None) -> bool:
        """The run is no longer due to be archived (with `revision`, only if its workflow
        record is still at it: not run again by a retry meanwhile); False if it changed."""
        compare = [] if revision is None else [etcd.mod_equals(self.keys.workflow(workflow_id), revision)]
        return self._etcd.txn(compare, [etcd.delete(self.keys.to_archive(workflow_id))]).succeeded

    # ---- ownership -----------------------------------------------------------------

    def grant_lease(self, ttl: int) -> Lease:
        """A lease that ends `ttl` seconds after its last refresh; what it binds goes with it."""
        return self._etcd.lease(ttl)

    def claim_run(self, workflow_id: WorkflowId, owner: str, lease: Lease) -> RunSnapshot | None:
        """Claims the run for `owner` (free, or already `owner`'s: a restarted scheduler)
        with a key bound to `lease`, reading the whole run in the same transaction; None
        when another scheduler holds it."""
        key = self.keys.claim(workflow_id)
        claim = etcd.put(key, owner, lease=lease.id)
        reads = [etcd.get(self.keys.workflow(workflow_id)), etcd.get(self.keys.cancel(workflow_id)),
                 etcd.get_prefix(self.keys.reports(workflow_id))]
        for compare in (etcd.absent(key), etcd.value_equals(key, owner.encode())):
            result = self._etcd.txn([compare], [claim, *reads])
            if result.succeeded:
                break
        else:
            return None
        workflow_kvs, cancel_kvs, report_kvs = result.ranges
        # the rest as it was when claimed, in pages (a large run's records exceed one answer)
        job_kvs = self._etcd.get_prefix(self.keys.jobs(workflow_id), revision=result.revision)
        revisions: Revisions = {}
        workflow = None
        for kv in workflow_kvs:
            workflow = _workflow(kv.value)
            revisions[kv.key] = kv.mod_revision
        jobs = {}
        for kv in job_kvs:
            job = _job(kv.value)
            jobs[job.name] = job
            revisions[kv.key] = kv.mod_revision
        definition = self._stored_definition(workflow_id, result.revision) if workflow is not None \
            else _definition(kv.value for kv in self._etcd.get_prefix(self.keys.specs(workflow_id),
                                                                       revision=result.revision))
        return RunSnapshot(workflow, definition, jobs, revisions, bool(cancel_kvs),
                           [_report(kv.key, kv.value) for kv in report_kvs])

    def give_up(self, workflow_id: WorkflowId, message: str, now: float) -> None:
        """Takes a run that can't be scheduled off the queue, its workflow `dead` with the
        message (unless it has ended, or its record can't be read either), and its claim
        released, in one transaction."""
        key = self.keys.workflow(workflow_id)
        found = self._etcd.get(key)
        ops = self._letting_go(workflow_id)
        if found is not None:
            try:
                workflow: WorkflowRecord | None = _workflow(found.value)
            except (ValueError, KeyError, TypeError):
                workflow = None
            if workflow is not None and not workflow.status.finished:
                ops.append(etcd.put(key, _dump(dataclasses.replace(
                    workflow, status=WorkflowStatus.DEAD, message=message, finished_at=now).to_dict())))
        compare = [etcd.mod_equals(key, found.mod_revision if found is not None else 0)]
        if not self._etcd.txn(compare, ops).succeeded:
            raise Conflict(f"someone else changed {key}")

    def release_claim(self, workflow_id: WorkflowId, owner: str) -> None:
        """Lets the run go, if `owner` still holds it (never another's claim)."""
        key = self.keys.claim(workflow_id)
        self._etcd.txn([etcd.value_equals(key, owner.encode())], [etcd.delete(key)])

    def owners(self) -> dict[str, int]:
        """How many runs each scheduler holds a claim on."""
        counts: dict[str, int] = {}
        for kv in self._etcd.get_prefix(self.keys.claims):
            counts[kv.value.decode()] = counts.get(kv.value.decode(), 0) + 1
        return counts

    # ---- replicas ------------------------------------------------------------------

    def announce(self, replica: Replica, lease: Lease) -> None:
        """Says the replica is alive, for as long as its lease lasts."""
        info = {name: getattr(replica, name) for name in _REPLICA_FIELDS} | {"lease": lease.id}
        self._etcd.txn([], [etcd.put(self.keys.scheduler(replica.id), _dump(info), lease=lease.id)])

    def replicas(self) -> list[Replica]:
        """The live replicas, by id."""
        return [_replica(kv.key, kv.value) for kv in self._etcd.get_prefix(self.keys.schedulers)]

    def replica_lease_left(self, replica: Replica) -> int:
        """Seconds before the replica's lease ends unless it is refreshed (-1: ended)."""
        return self._etcd.lease_remaining(replica.lease)

    def watch_replicas(self, on_change: Callable[[str, bool], None], after: int) -> Callable[[], None]:
        """Calls on_change(replica id, alive) for every replica that came or went after
        revision `after`. Returns cancel."""
        def on_event(key: str, value: bytes | None) -> None:
            on_change(key.rsplit("/", 1)[1], value is not None)

        return self._etcd.watch_prefix(self.keys.schedulers, on_event, start_revision=after + 1)

    # ---- reports that reached another replica than the run's owner ------------------

    def forward_report(self, workflow_id: WorkflowId, job: str, attempt: int, outcome: Outcome) -> None:
        """Leaves an attempt's end for the run's owner, wherever it runs (and for the next one)."""
        self._etcd.put(self.keys.report(workflow_id, job, attempt), _dump(dataclasses.asdict(outcome)))

    def watch_reports(self, on_report: Callable[[WorkflowId, str, int, Outcome], None],
                      after: int) -> Callable[[], None]:
        """Calls on_report for every attempt end left after revision `after`. Returns cancel."""
        def on_event(key: str, value: bytes | None) -> None:
            if value is not None:
                on_report(WorkflowId(key.split("/")[-3]), *_report(key, value))

        return self._etcd.watch_prefix(self.keys.all_reports, on_event, start_revision=after + 1)

    def queued_ids(self) -> list[WorkflowId]:
        return [self.keys.workflow_id(kv.key) for kv in self._etcd.get_prefix(self.keys.queue)]

    def dequeue(self, workflow_id: WorkflowId, revisions: Revisions | None = None) -> bool:
        """Removes the run from the queue; with revisions, only if its workflow record is
        still the one we wrote (not queued again by a retry meanwhile)."""
        compare = []
        if revisions is not None:
            workflow_key = self.keys.workflow(workflow_id)
            compare.append(etcd.mod_equals(workflow_key, revisions.get(workflow_key, 0)))
        return self._etcd.txn(compare, [etcd.delete(self.keys.queued(workflow_id))]).succeeded

    # ---- cancel requests -----------------------------------------------------------

    def request_cancel(self, workflow_id: WorkflowId) -> None:
        self._etcd.put(self.keys.cancel(workflow_id), str(time.time()))

    def clear_cancel(self, workflow_id: WorkflowId) -> None:
        self._etcd.delete(self.keys.cancel(workflow_id))

    # ---- watching ------------------------------------------------------------------

    def current_revision(self) -> int:
        return self._etcd.revision()

    def watch_queue(self, on_queued: Callable[[WorkflowId], None], after: int) -> Callable[[], None]:
        """Calls on_queued for every run queued after revision `after`. Returns cancel."""
        def on_event(key: str, value: bytes | None) -> None:
            if value is not None:
                on_queued(self.keys.workflow_id(key))

        return self._etcd.watch_prefix(self.keys.queue, on_event, start_revision=after + 1)

    def watch_cancels(self, on_cancel: Callable[[WorkflowId], None], after: int) -> Callable[[], None]:
        """Calls on_cancel for every cancel asked for after revision `after`. Returns cancel."""
        def on_event(key: str, value: bytes | None) -> None:
            if value is not None:
                on_cancel(self.keys.workflow_id(key))

        return self._etcd.watch_prefix(self.keys.cancels, on_event, start_revision=after + 1)

    def watch_releases(self, on_released: Callable[[WorkflowId], None], after: int) -> Callable[[], None]:
        """Calls on_released for every run whose owner let it go (or died) after revision
        `after`. Returns cancel."""
        def on_event(key: str, value: bytes | None) -> None:
            if value is None:
                on_released(self.keys.workflow_id(key))

        return self._etcd.watch_prefix(self.keys.claims, on_event, start_revision=after + 1)

    def watch_workflow(self, workflow_id: WorkflowId, on_change: Callable[[WorkflowRecord | None], None],
                       after: int) -> Callable[[], None]:
        """Calls on_change with the workflow record (None once deleted) on every change
        after revision `after`. Returns cancel."""
        def on_event(key: str, value: bytes | None) -> None:
            on_change(None if value is None else _workflow(value))

        return self._etcd.watch_prefix(self.keys.workflow(workflow_id), on_event, start_revision=after + 1)

    def watch_jobs(self, workflow_id: WorkflowId, on_change: Callable[[JobRecord], None],
                   after: int) -> Callable[[], None]:
        """Calls on_change with every job record of the workflow written after revision
        `after`. Returns cancel."""
        def on_event(key: str, value: bytes | None) -> None:
            if value is not None:
                on_change(_job(value))

        return self._etcd.watch_prefix(self.keys.jobs(workflow_id), on_event, start_revision=after + 1)

    def watch_job(self, workflow_id: WorkflowId, name: str, on_change: Callable[[JobRecord | None], None],
                  after: int) -> Callable[[], None]:
        """Calls on_change with the job's record (None once deleted) on every change after
        revision `after`. Returns cancel."""
        def on_event(key: str, value: bytes | None) -> None:
            if key == self.keys.job(workflow_id, name):
                on_change(None if value is None else _job(value))

        return self._etcd.watch_prefix(self.keys.job(workflow_id, name), on_event, start_revision=after + 1)

    # ---- log pulses ----------------------------------------------------------------

    def pulse_logs(self, replica: str, count: int) -> None:
        """Tells the other replicas that this one stored log lines (one small key, overwritten)."""
        self._etcd.put(self.keys.log_pulse(replica), str(count))

    def end_log_pulses(self, replica: str) -> None:
        self._etcd.delete(self.keys.log_pulse(replica))

    def watch_log_pulses(self, on_pulse: Callable[[str], None], after: int) -> Callable[[], None]:
        """Calls on_pulse with the replica's id for every pulse after revision `after`. Returns cancel."""
        def on_event(key: str, value: bytes | None) -> None:
            if value is not None:
                on_pulse(key[len(self.keys.log_pulses):])

        return self._etcd.watch_prefix(self.keys.log_pulses, on_event, start_revision=after + 1)
