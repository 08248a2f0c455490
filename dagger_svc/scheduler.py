"""The scheduler: drives every owned run's state machine from events, one etcd write per wake-up.

Events (a workflow queued, a cancel asked for, a job attempt ended, a retry timer) arrive
on one queue from etcd watches and executor callbacks; each wake-up drains the queue and
feeds the runs. Changed records are written by a committer thread, one guarded
transaction per run, with one commit in flight at a time: what changes meanwhile goes
into the next one, so the transaction rate never limits throughput and a busy run's
changes are batched. Commits start at most every COMMIT_INTERVAL (a run's final state
goes at once): a chain of short jobs then shares transactions instead of paying for one
per job in etcd and here. Launches start at once, before their records are committed (a
launch is idempotent per workflow, job and attempt: the Kubernetes executor adopts an
existing job of the same name); if a commit fails, every attempt launched since the last
good commit is killed and the run is reloaded from etcd, so no attempt outlives a
transition that was not recorded. Runs are owned through a lease-bound claim key, so a
scheduler that dies loses its runs to another (or to itself, restarted, at once).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dagger_svc.core.records import JobStatus, Outcome, WorkflowId
from dagger_svc.core.run import Run, Step
from dagger_svc.events import CancelAsked, CommitResult, Committed, Event, JobEnded, Queued, Stop, Timer
from dagger_svc.executors.base import Executor, Launch, workflow_dir
from dagger_svc.store import Lease, Revisions, Store
from donut_common.errors import Conflict, NotFound, Unavailable

log = logging.getLogger(__name__)

COMMIT_INTERVAL = 0.01  # seconds from one commit's start to the next one's
RELOAD_WAIT = 60.0  # seconds at most to wait for killed launches to end before a run is reloaded
TAKE_OVER_RETRY = 0.5  # seconds before a run whose take-over failed is tried again


@dataclass
class _Held:
    """A run that is not taken (back) before `until` (time.monotonic()), or, with `waiting`,
    before those (job, attempt) launches have ended, whichever comes first."""

    until: float
    waiting: set[tuple[str, int]] | None = None

    def released(self, now: float) -> bool:
        return now >= self.until or (self.waiting is not None and not self.waiting)


@dataclass
class _Owned:
    run: Run
    revisions: Revisions
    workflow_dir: str
    unsent: Step = field(default_factory=Step)              # changes not yet sent to etcd
    unconfirmed: list[Launch] = field(default_factory=list)  # launched, not yet committed


class Scheduler:
    def __init__(self, store: Store, executor: Executor, data_root: Path,
                 scheduler_id: str | None = None, lease_ttl: int = 10,
                 clock: Callable[[], float] = time.time, commit_interval: float = COMMIT_INTERVAL) -> None:
        self.store = store
        self.executor = executor
        self.data_root = data_root
        self.scheduler_id = scheduler_id or uuid.uuid4().hex
        self.lease_ttl = lease_ttl
        self.clock = clock
        self.commit_interval = commit_interval
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._owned: dict[WorkflowId, _Owned] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._unwatch: list[Callable[[], None]] = []
        self._lease: Lease | None = None
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scheduler-commit")
        self._step_lock = threading.Lock()  # one step at a time, on the loop or an executor's thread
        self._committing = False
        self._last_commit = float("-inf")         # time.monotonic() when the last commit started
        self._commit_due: float | None = None     # when unsent changes wait for the interval
        self._loop_wakes_at = float("inf")        # time.monotonic() when the idle loop wakes by itself
        # runs not taken (back) for now: their take-over failed (etcd away: a moment later), or
        # their commit failed and their killed launches have not ended (so the same attempt
        # number is not launched while the old one still runs)
        self._held: dict[WorkflowId, _Held] = {}

    # ---- life cycle ----------------------------------------------------------------

    def start(self) -> Scheduler:
        """Takes the executor's reports, holds a lease, and schedules every queued run."""
        self.executor.start(self.job_finished)
        self._lease = self.store.grant_lease(self.lease_ttl)
        revision = self.store.current_revision()
        self._unwatch = [
            self.store.watch_queue(lambda workflow_id: self._events.put(Queued(workflow_id)), after=revision),
            self.store.watch_cancels(lambda workflow_id: self._events.put(CancelAsked(workflow_id)), after=revision),
            # a scheduler let go (or died): the run may need a new owner
            self.store.watch_releases(lambda workflow_id: self._events.put(Queued(workflow_id)), after=revision),
        ]
        for workflow_id in self.store.queued_ids():
            self._events.put(Queued(workflow_id))
        for target, name in ((self._loop, "scheduler"), (self._keep_lease, "scheduler-lease")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stops scheduling; runs stay claimed until the lease ends (or are taken back at
        once by a scheduler with the same id)."""
        self._stopping.set()
        self._events.put(Stop())
        for cancel in self._unwatch:
            cancel()
        for thread in self._threads:
            thread.join(timeout=10)
        with self._step_lock:  # a step running on an executor's thread ends first
            self._committer.shutdown(wait=True)
            self._flush()
        if self._lease is not None:
            with contextlib.suppress(Unavailable):  # etcd may be gone already: the lease ends anyway
                self._lease.revoke()

    def _flush(self) -> None:
        """Records what the loop left unsent (jobs that ended as it stopped)."""
        for workflow_id, owned in list(self._owned.items()):
            if owned.unsent:
                try:
                    self.store.save_run(workflow_id, owned.unsent.workflow, owned.unsent.jobs.values(),
                                        owned.revisions)
                except Exception as e:  # noqa: BLE001 - the next scheduler resumes from etcd
                    log.warning("cannot record the last changes of run %s: %s", workflow_id, e)

    def _keep_lease(self) -> None:
        assert self._lease is not None
        while not self._stopping.wait(self.lease_ttl / 3):
            try:
                self._lease.refresh()
            except Exception as e:  # noqa: BLE001 - keep trying while etcd is away
                log.warning("cannot refresh the scheduler lease: %s", e)

    # ---- inputs (any thread) -------------------------------------------------------

    def job_finished(self, workflow_id: str, job: str, attempt: int, outcome: Outcome) -> None:
        """Called by executors. When the loop is idle the event is handled at once on the
        caller's thread (a chain's next job starts without a thread hop); otherwise it is
        queued for the loop."""
        event = JobEnded(WorkflowId(workflow_id), job, attempt, outcome)
        if self._events.empty() and not self._stopping.is_set() and self._step_lock.acquire(blocking=False):
            try:
                if self._events.empty() and not self._stopping.is_set():
                    self._step([event])
                    timeout = self._next_timeout()
                    if timeout is not None and time.monotonic() + timeout < self._loop_wakes_at:
                        self._events.put(Timer())  # the loop's wait must end in time for it
                    return
            finally:
                self._step_lock.release()
        self._events.put(event)

    def owns(self, workflow_id: str) -> bool:
        return workflow_id in self._owned

    # ---- the loop ------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            with self._step_lock:  # so that a step on another thread sees when the loop wakes
                timeout = self._next_timeout()
                self._loop_wakes_at = float("inf") if timeout is None else time.monotonic() + timeout
            try:
                first = self._events.get(timeout=timeout)
            except queue.Empty:
                first = None
            batch: list[Event] = [] if first is None else [first]
            while True:
                try:
                    batch.append(self._events.get_nowait())
                except queue.Empty:
                    break
            with self._step_lock:
                self._step(batch)

    def _step(self, batch: Iterable[Event]) -> None:
        batch = list(batch)
        try:
            self._handle(batch)
        except Exception:
            log.exception("scheduler step failed; it will be retried from etcd")
            if any(isinstance(event, Committed) for event in batch):
                self._committing = False  # that commit is over, whatever became of the rest
            self._stopping.wait(0.5)  # etcd away, most likely: not in a tight loop
            self._reload_all()
            for event in batch:  # runs that were being taken over
                if isinstance(event, Queued):
                    self._events.put(event)

    def _next_timeout(self) -> float | None:
        now = self.clock()
        waits = [w - now for o in self._owned.values() if (w := o.run.next_wakeup()) is not None]
        if self._commit_due is not None:
            waits.append(self._commit_due - time.monotonic())
        waits.extend(held.until - time.monotonic() for held in self._held.values())
        return max(0.0, min(waits)) if waits else None

    def _handle(self, batch: list[Event]) -> None:
        now = self.clock()
        steps: dict[WorkflowId, Step] = {}

        def add(workflow_id: WorkflowId, step: Step) -> None:
            if step:
                steps[workflow_id] = steps[workflow_id].merge(step) if workflow_id in steps else step

        commits: list[Committed] = []
        for event in batch:
            match event:
                case Stop():
                    return
                case Committed():
                    commits.append(event)  # after this batch's own changes are queued up
                case Queued(workflow_id):
                    if workflow_id not in self._owned and workflow_id not in self._held:
                        try:
                            started = self._take_over(workflow_id, now)
                        except Exception as e:  # noqa: BLE001 - this run only; the others go on
                            log.warning("cannot take run %s over (%s); trying again shortly", workflow_id, e)
                            self._owned.pop(workflow_id, None)
                            self._held[workflow_id] = _Held(time.monotonic() + TAKE_OVER_RETRY)
                            continue
                        if started is not None:
                            add(workflow_id, started)
                case CancelAsked(workflow_id):
                    owned = self._owned.get(workflow_id)
                    if owned is not None:
                        add(workflow_id, owned.run.cancel(now))
                case JobEnded(workflow_id, job, attempt, outcome):
                    owned = self._owned.get(workflow_id)
                    if owned is not None:
                        add(workflow_id, owned.run.job_finished(job, attempt, outcome, now))
                    elif (held := self._held.get(workflow_id)) is not None and held.waiting is not None:
                        held.waiting.discard((job, attempt))
                case Timer():
                    pass  # what is due is looked at below
        for workflow_id, owned in self._owned.items():
            wakeup = owned.run.next_wakeup()
            if wakeup is not None and wakeup <= now:
                add(workflow_id, owned.run.tick(now))
        for workflow_id, held in list(self._held.items()):
            if held.released(time.monotonic()):
                del self._held[workflow_id]
                self._events.put(Queued(workflow_id))
        for workflow_id, step in steps.items():
            self._carry_out(workflow_id, step)
        for committed in commits:
            self._committed(committed)
        self._commit_next()

    def _carry_out(self, workflow_id: WorkflowId, step: Step) -> None:
        """Launches and kills now; the records wait for the next commit. A launch is
        undone if the commit that records it fails."""
        owned = self._owned[workflow_id]
        for job in step.launch:
            launch = Launch(workflow_id=workflow_id, job=job, attempt=owned.run.jobs[job].attempt,
                            spec=owned.run.definition.jobs[job], workflow_dir=owned.workflow_dir,
                            upload_id=owned.run.workflow.upload_id, owner=owned.run.workflow.owner)
            owned.unconfirmed.append(launch)
            self.executor.launch(launch)
        for job in step.kill:
            self.executor.kill(workflow_id, job, owned.run.jobs[job].attempt)
        owned.unsent = owned.unsent.merge(step) if owned.unsent else step

    def _commit_next(self) -> None:
        """Sends every run's unsent records, one transaction per run, unless a commit is
        already on its way: then they go together with whatever follows, once it is done."""
        if self._committing:
            return
        pending = [owned for owned in self._owned.values() if owned.unsent]
        now = time.monotonic()
        due = self._last_commit + self.commit_interval
        if pending and now < due and not any(owned.run.finished for owned in pending):
            self._commit_due = due  # the loop wakes up for it
            return
        self._commit_due = None
        batch = {}
        for workflow_id, owned in self._owned.items():
            if owned.unsent:
                batch[workflow_id] = (owned.unsent, len(owned.unconfirmed))
                owned.unsent = Step()
        if batch:
            self._committing = True
            self._last_commit = now
            self._committer.submit(self._commit, batch)

    def _commit(self, batch: dict[WorkflowId, tuple[Step, int]]) -> None:
        """On the committer thread: one guarded transaction per run."""
        results: dict[WorkflowId, CommitResult] = {}
        for workflow_id, (step, launched) in batch.items():
            owned = self._owned.get(workflow_id)
            if owned is None:
                continue
            try:
                self.store.save_run(workflow_id, step.workflow, step.jobs.values(), owned.revisions)
                results[workflow_id] = CommitResult(None, launched)
            except Exception as e:  # noqa: BLE001 - handed to the loop, which reloads the run
                results[workflow_id] = CommitResult(e, launched)
        self._events.put(Committed(results))

    def _committed(self, committed: Committed) -> None:
        self._committing = False
        for workflow_id, result in committed.results.items():
            error, launched = result.error, result.launched
            owned = self._owned.get(workflow_id)
            if owned is None:
                continue
            if error is None:
                del owned.unconfirmed[:launched]
                if owned.run.finished and not owned.unsent:
                    requeued = not self.store.dequeue(workflow_id, owned.revisions)
                    self._forget(workflow_id)
                    log.info("workflow %s %s", workflow_id, owned.run.workflow.status.value)
                    if requeued:  # retried while its last commit was on its way
                        self._events.put(Queued(workflow_id))
                continue
            if isinstance(error, Conflict):
                log.info("run %s changed under us; reloading it", workflow_id)
            else:
                log.warning("cannot record run %s (%s); reloading it", workflow_id, error)
            for launch in owned.unconfirmed:
                self.executor.kill(workflow_id, launch.job, launch.attempt)
            jobs = owned.run.jobs  # a launch its job still shows running has not reported its end yet
            waiting = {(launch.job, launch.attempt) for launch in owned.unconfirmed
                       if jobs[launch.job].status is JobStatus.RUNNING and jobs[launch.job].attempt == launch.attempt}
            self._forget(workflow_id)
            if waiting:
                self._held[workflow_id] = _Held(time.monotonic() + RELOAD_WAIT, waiting)
            else:
                self._events.put(Queued(workflow_id))

    # ---- ownership -----------------------------------------------------------------

    def _take_over(self, workflow_id: WorkflowId, now: float) -> Step | None:
        """Claims the run and starts (or resumes) it; None when it is someone else's or over."""
        try:
            stored, revision = self.store.workflow(workflow_id)
            if stored.status.finished:  # (unless a retry queued it again since that read)
                self.store.dequeue(workflow_id, self.store.workflow_revisions(workflow_id, revision))
                return None  # checked before claiming, so releasing a claim never loops
        except NotFound:
            return None
        assert self._lease is not None
        snapshot = self.store.claim_run(workflow_id, self.scheduler_id, self._lease)
        if snapshot is None:
            return None
        workflow = snapshot.workflow
        if workflow is None or workflow.status.finished:
            self._release(workflow_id)
            return None
        run = Run(workflow, snapshot.definition, snapshot.jobs, cancel_requested=snapshot.cancel_requested)
        directory = workflow_dir(self.data_root, workflow_id)
        directory.mkdir(parents=True, exist_ok=True)
        self._owned[workflow_id] = _Owned(run, snapshot.revisions, str(directory))
        lost = [name for name in run.running_jobs if self.executor.lost(workflow_id, name, run.jobs[name].attempt)]
        return run.start(now, lost=lost)

    def _release(self, workflow_id: WorkflowId) -> None:
        self.store.release_claim(workflow_id)

    def _forget(self, workflow_id: WorkflowId) -> None:
        self._owned.pop(workflow_id, None)
        with contextlib.suppress(Unavailable):  # the lease will drop it
            self._release(workflow_id)

    def _reload_all(self) -> None:
        for workflow_id in list(self._owned):
            self._owned.pop(workflow_id)
            self._events.put(Queued(workflow_id))
