"""The scheduler: drives every owned run's state machine from events, one etcd write per wake-up.

Events (a workflow queued, a cancel asked for, a job attempt ended, a retry timer) arrive
on one queue from etcd watches and executor callbacks; each wake-up drains the queue and
feeds the runs. Changed records are written by a committer thread, the changes of every
run in as few guarded transactions as etcd's limits allow, with one commit in flight at
a time: what changes meanwhile goes into the next one, so the transaction rate never
limits throughput and a busy stack's changes are batched. Runs are taken over (claimed
and read whole) by a claimer thread, whose etcd round trips never hold a step up.

Launches are write-ahead: an attempt is started only once the commit that records it as
running has succeeded, so after any crash every attempt that may be running is in etcd,
and a restarted scheduler ends what it cannot adopt and runs it again under a new attempt
number: an attempt number never runs twice. A launch whose commit fails never starts (its
run is reloaded from etcd); a kill of an attempt not started yet ends it there. Runs are
owned through a lease-bound claim key, so a scheduler that dies loses its runs to another
(or to itself, restarted, at once).

Several schedulers (replicas) share the runs: each announces itself under its lease, a
queued or released run is claimed at once by the replica it falls to by rendezvous
hashing and by the others after SPREAD_GRACE, every write is fenced by the writer's claim
(owner and lease), nothing is launched once the lease may have ended, and an attempt's end
reported to another replica reaches the owner through etcd.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from dagger_svc.core.records import JobStatus, Outcome, WorkflowId, WorkflowStatus
from dagger_svc.core.run import MAX_LOST_ATTEMPTS, Run, Step
from dagger_svc.events import CancelAsked, Event, JobEnded, Queued, Stop, Timer
from dagger_svc.executors.base import Executor, Launch, workflow_dir
from dagger_svc.store import Claim, Lease, Replica, Revisions, RunChanges, RunSnapshot, Store
from donut_common.errors import Conflict, NotFound, Unavailable
from donut_common.metrics import JOB_LAUNCH_DELAY, JOBS_FINISHED, TAKEOVERS

log = logging.getLogger(__name__)

TAKE_OVER_RETRY = 0.5  # seconds before a run whose take-over failed is tried again (doubling each time)
TAKE_OVER_RETRY_MAX = 30.0
TAKE_OVER_RETRY_MAX_UNAVAILABLE = 4.0  # etcd away: tried again soon, so that runs resume soon after it is back
MAX_FAILED_TAKE_OVERS = 5  # failures in a row (etcd away aside) before the run is given up as dead
NOT_STARTED = Outcome(signal="SIGTERM", message="terminated before it started")
STOPPED = "stopped with the stack"
SPREAD_GRACE = 1.0  # seconds a replica leaves a queued run to the replica it falls to, before claiming it itself
LAUNCH_MARGIN = 1.0  # seconds before the lease could have ended after which nothing more is launched


@dataclass(frozen=True)
class _Claimed:
    """The claimer's answer: the run claimed and read, None (not ours to run), or why not."""

    workflow_id: WorkflowId
    claim: RunSnapshot | Exception | None


_Event = Event | _Claimed


@dataclass
class _Pending:
    """A launch waiting for the commit that records it. Its state goes from "waiting" to
    "launching" and "launched" (the committer hands it to the executor once it is
    recorded) or to "dropped" (killed before, or its commit failed). A kill that comes
    while it is being handed over is carried out by the committer right after, so a kill
    and a launch of one attempt never cross. The lock is never held across a call out."""

    launch: Launch
    state: str = "waiting"
    kill_asked: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready_at: float = field(default_factory=time.monotonic)  # when the job became ready to run

    @property
    def key(self) -> tuple[str, int]:
        return self.launch.job, self.launch.attempt

    def drop(self) -> str:
        """Keeps it from starting: "dropped"; or "later" (being launched: the committer
        kills it next) or "now" (launched: the caller kills it)."""
        with self.lock:
            if self.state in ("waiting", "dropped"):
                self.state = "dropped"
                return "dropped"
            if self.state == "launching":
                self.kill_asked = True
                return "later"
            return "now"

    def begin_launch(self) -> bool:
        with self.lock:
            if self.state != "waiting":
                return False
            self.state = "launching"
            return True

    def end_launch(self) -> bool:
        """True when a kill came while it was being launched."""
        with self.lock:
            self.state = "launched"
            return self.kill_asked


@dataclass
class _Owned:
    run: Run
    revisions: Revisions
    workflow_dir: str
    unsent: Step = field(default_factory=Step)                   # changes not yet sent to etcd
    unsent_launches: list[_Pending] = field(default_factory=list)  # launches among them
    pending: dict[tuple[str, int], _Pending] = field(default_factory=dict)  # not started yet
    ready_at: dict[str, float] = field(default_factory=dict)  # jobs ready to run -> since when (monotonic)
    recorded_attempts: dict[str, int] = field(default_factory=dict)  # job -> how many ended attempts etcd holds

    def count_ended_attempts(self, recorded: Step) -> None:
        """Counts the attempts whose end a commit just recorded (those etcd did not hold)."""
        for name, job in recorded.jobs.items():
            for attempt in job.attempts[self.recorded_attempts.get(name, 0):]:
                JOBS_FINISHED.labels(attempt.status.value).inc()
            self.recorded_attempts[name] = len(job.attempts)


class Scheduler:
    def __init__(self, store: Store, executor: Executor, data_root: Path,
                 scheduler_id: str | None = None, lease_ttl: int = 10,
                 clock: Callable[[], float] = time.time, max_lost_attempts: int = MAX_LOST_ATTEMPTS,
                 announce: Replica | None = None) -> None:
        self.store = store
        self.executor = executor
        self.data_root = data_root
        self.scheduler_id = scheduler_id or uuid.uuid4().hex
        self.lease_ttl = lease_ttl
        self.clock = clock
        self.max_lost_attempts = max_lost_attempts
        self.replica = replace(announce or Replica(""), id=self.scheduler_id, pid=os.getpid(), started_at=clock())
        self._replicas: set[str] = set()  # the live replicas' ids (this one's among them)
        self._spread: set[WorkflowId] = set()  # runs left to another replica for SPREAD_GRACE already
        self._lease_valid_until = 0.0  # time.monotonic() before which the lease surely holds
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._to_claim: queue.SimpleQueue[WorkflowId | None] = queue.SimpleQueue()  # for the claimer
        self._claiming: dict[WorkflowId, bool] = {}  # runs with the claimer -> a cancel came meanwhile
        self._ended_while_claiming: dict[WorkflowId, list[JobEnded]] = {}  # attempt ends reported meanwhile
        self._queued_at_end: set[WorkflowId] = set()  # queued while their last commit was on its way
        self._owned: dict[WorkflowId, _Owned] = {}
        # kept up to date step by step, so that a step costs O(the runs it touches), not O(owned runs)
        self._unsent: dict[WorkflowId, None] = {}   # runs with changes not yet sent (in order)
        self._wakeups: dict[WorkflowId, float] = {}  # runs with a timer (a retry backoff) -> when
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._unwatch: list[Callable[[], None]] = []
        self._lease: Lease | None = None
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scheduler-commit")
        self._step_lock = threading.Lock()  # one step at a time, on the loop or an executor's thread
        self._committing = False
        self._draining = False
        self._loop_wakes_at = float("inf")  # time.monotonic() when the idle loop wakes by itself
        self._held: dict[WorkflowId, float] = {}  # runs whose take-over failed -> when to try again
        self._failed_take_overs: dict[WorkflowId, int] = {}  # -> how many times in a row

    # ---- life cycle ----------------------------------------------------------------

    def start(self) -> Scheduler:
        """Takes the executor's reports, holds a lease, and schedules every queued run."""
        self.executor.start(self.job_finished)
        granted = time.monotonic()
        self._lease = self.store.grant_lease(self.lease_ttl)
        self._lease_valid_until = granted + self.lease_ttl
        self.store.announce(replace(self.replica, lease=self._lease.id), self._lease)
        revision = self.store.current_revision()
        self._replicas = {replica.id for replica in self.store.replicas()}
        self._unwatch = [
            self.store.watch_replicas(self._replica_changed, after=revision),
            self.store.watch_reports(lambda workflow_id, job, attempt, outcome: self._events.put(
                JobEnded(workflow_id, job, attempt, outcome)), after=revision),
            self.store.watch_queue(lambda workflow_id: self._events.put(Queued(workflow_id)), after=revision),
            self.store.watch_cancels(lambda workflow_id: self._events.put(CancelAsked(workflow_id)), after=revision),
            # a scheduler let go (or died): the run may need a new owner
            self.store.watch_releases(lambda workflow_id: self._events.put(Queued(workflow_id)), after=revision),
        ]
        for workflow_id in self.store.queued_ids():
            self._events.put(Queued(workflow_id))
        for target, name in ((self._loop, "scheduler"), (self._claimer, "scheduler-claim"),
                             (self._keep_lease, "scheduler-lease")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def drain(self) -> None:
        """The stack is stopping: nothing more is launched, and an attempt that ends from
        now on is recorded `dead` ("stopped with the stack"), to run again as a new attempt
        at the next start; call `stop` once the executor has stopped every attempt."""
        with self._step_lock:
            self._draining = True
            for owned in self._owned.values():
                owned.run.pause()

    def stop(self) -> None:
        """Stops scheduling; runs stay claimed until the lease ends (or are taken back at
        once by a scheduler with the same id)."""
        self._stopping.set()
        self._events.put(Stop())
        self._to_claim.put(None)
        for cancel in self._unwatch:
            cancel()
        for thread in self._threads:
            thread.join(timeout=10)
        self._committer.shutdown(wait=True)  # the commit on its way ends (it takes the step lock)
        with self._step_lock:  # a step running on an executor's thread ends first
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
                                        owned.revisions, claim=self._claim_of_mine())
                    owned.count_ended_attempts(owned.unsent)
                except Exception as e:  # noqa: BLE001 - the next scheduler resumes from etcd
                    log.warning("cannot record the last changes of run %s: %s", workflow_id, e)

    def _keep_lease(self) -> None:
        """Refreshes the lease; one that ended (etcd was away longer than its life, so
        every claim bound to it is gone) is replaced, and the runs are claimed again."""
        while not self._stopping.wait(self.lease_ttl / 3):
            assert self._lease is not None
            asked = time.monotonic()
            try:
                if self._lease.refresh():
                    self._lease_valid_until = asked + self.lease_ttl
                    continue
                lease = self.store.grant_lease(self.lease_ttl)
                self.store.announce(replace(self.replica, lease=lease.id), lease)
            except Unavailable as e:
                log.warning("cannot refresh the scheduler lease: %s", e)
                continue
            log.warning("the scheduler lease ended (etcd was away, or this process was stalled); "
                        "claiming the runs again")
            with self._step_lock:
                self._lease = lease
                self._lease_valid_until = asked + self.lease_ttl
                self._claim_again()

    def _replica_changed(self, replica_id: str, alive: bool) -> None:
        if alive:
            self._replicas.add(replica_id)
        else:
            self._replicas.discard(replica_id)

    def _falls_to_another(self, workflow_id: WorkflowId) -> bool:
        """Whether a live replica other than this one is the one the run falls to
        (rendezvous hashing: each replica ranks runs by a hash of the run and its id)."""
        replicas = self._replicas | {self.scheduler_id}
        return max(replicas, key=lambda r: hashlib.blake2b(f"{workflow_id}/{r}".encode(), digest_size=8).digest()) \
            != self.scheduler_id

    def _may_launch(self) -> bool:
        """False when the lease may have ended (this process stalled, or etcd was away)
        and etcd does not say it holds: the run may have a new owner, which would run the
        attempt again."""
        if time.monotonic() < self._lease_valid_until - LAUNCH_MARGIN:
            return True
        lease, asked = self._lease, time.monotonic()
        assert lease is not None
        try:
            if not lease.refresh():
                return False
        except Unavailable:
            return False
        self._lease_valid_until = asked + self.lease_ttl
        return True

    # ---- inputs (any thread) -------------------------------------------------------

    def job_finished(self, workflow_id: str, job: str, attempt: int, outcome: Outcome) -> None:
        """Called by executors. When the loop is idle the event is handled at once on the
        caller's thread (a chain's next job starts without a thread hop); otherwise it is
        queued for the loop."""
        if self._draining and not outcome.succeeded:
            outcome = replace(outcome, lost=True, message=STOPPED)
        event = JobEnded(WorkflowId(workflow_id), job, attempt, outcome)
        log.info("%s/%s attempt %d ended: %s", workflow_id, job, attempt,
                 "succeeded" if outcome.succeeded else outcome.message or f"exit {outcome.exit_code}")
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

    def report(self, workflow_id: str, job: str, attempt: int, outcome: Outcome) -> None:
        """An attempt's end from its wrapper: handled here when this replica owns the run,
        else left in etcd for its owner."""
        if self.owns(workflow_id):
            self.job_finished(workflow_id, job, attempt, outcome)
        else:
            self.store.forward_report(WorkflowId(workflow_id), job, attempt, outcome)

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
            batch: list[_Event] = [] if first is None else [first]
            while True:
                try:
                    batch.append(self._events.get_nowait())
                except queue.Empty:
                    break
            with self._step_lock:
                self._step(batch)

    def _claimer(self) -> None:
        """Claims and reads the runs the loop hands over, one after another, and gives them
        back to the loop: the etcd round trips of taking a run over never hold up the step
        lock, nor with it the commits and the handling of every job's end."""
        while (workflow_id := self._to_claim.get()) is not None:
            try:
                claim: RunSnapshot | Exception | None = self._claim(workflow_id)
            except Exception as e:  # noqa: BLE001 - handled by the loop, for this run only
                claim = e
            self._events.put(_Claimed(workflow_id, claim))

    def _step(self, batch: Iterable[_Event]) -> None:
        batch = list(batch)
        try:
            self._handle(batch)
        except Exception:
            log.exception("scheduler step failed; it will be retried from etcd")
            self._stopping.wait(0.5)  # etcd away, most likely: not in a tight loop
            self._reload_all()
            for event in batch:  # runs that were being taken over
                if isinstance(event, (Queued, _Claimed)):
                    self._claiming.pop(event.workflow_id, None)
                    self._ended_while_claiming.pop(event.workflow_id, None)
                    self._events.put(Queued(event.workflow_id))

    def _next_timeout(self) -> float | None:
        now = self.clock()
        waits = [w - now for w in self._wakeups.values()]
        waits.extend(until - time.monotonic() for until in self._held.values())
        return max(0.0, min(waits)) if waits else None

    def _handle(self, batch: list[_Event]) -> None:
        now = self.clock()
        steps: dict[WorkflowId, Step] = {}
        touched: set[WorkflowId] = set()  # runs fed an event: their timers may have changed

        def add(workflow_id: WorkflowId, step: Step) -> None:
            touched.add(workflow_id)
            if step:
                steps[workflow_id] = steps[workflow_id].merge(step) if workflow_id in steps else step

        for event in batch:
            match event:
                case Stop():
                    return
                case Queued(workflow_id):
                    owned = self._owned.get(workflow_id)
                    if owned is not None and owned.run.finished:
                        self._queued_at_end.add(workflow_id)  # retried, maybe: looked at once it is let go
                    elif owned is None and workflow_id not in self._held and workflow_id not in self._claiming:
                        if workflow_id not in self._spread and self._falls_to_another(workflow_id):
                            self._spread.add(workflow_id)  # its replica has a head start
                            self._held[workflow_id] = time.monotonic() + SPREAD_GRACE
                            continue
                        self._spread.discard(workflow_id)
                        self._claiming[workflow_id] = False
                        self._to_claim.put(workflow_id)
                case _Claimed(workflow_id, claim):
                    cancel = self._claiming.pop(workflow_id, False)
                    ended = self._ended_while_claiming.pop(workflow_id, [])
                    started = None if workflow_id in self._owned else self._take_over(workflow_id, claim, now)
                    if started is not None:
                        add(workflow_id, started)
                        run = self._owned[workflow_id].run
                        for end in ended:  # (a report left in etcd after the claim read the run)
                            add(workflow_id, run.job_finished(end.job, end.attempt, end.outcome, now))
                        if cancel:
                            add(workflow_id, run.cancel(now))
                case CancelAsked(workflow_id):
                    owned = self._owned.get(workflow_id)
                    if owned is not None:
                        add(workflow_id, owned.run.cancel(now))
                    elif workflow_id in self._claiming:
                        self._claiming[workflow_id] = True  # asked after the claim read it, maybe
                case JobEnded(workflow_id, job, attempt, outcome):
                    owned = self._owned.get(workflow_id)
                    if owned is not None:
                        add(workflow_id, owned.run.job_finished(job, attempt, outcome, now))
                    elif workflow_id in self._claiming:
                        self._ended_while_claiming.setdefault(workflow_id, []).append(event)
                case Timer():
                    pass  # what is due is looked at below
        for workflow_id, wakeup in list(self._wakeups.items()):
            if wakeup <= now:
                owned = self._owned.get(workflow_id)
                if owned is None:
                    del self._wakeups[workflow_id]  # let go meanwhile
                else:
                    add(workflow_id, owned.run.tick(now))
        for workflow_id in touched:
            owned = self._owned.get(workflow_id)
            timer = None if owned is None else owned.run.next_wakeup()
            if timer is None:
                self._wakeups.pop(workflow_id, None)
            else:
                self._wakeups[workflow_id] = timer
        for workflow_id, until in list(self._held.items()):
            if time.monotonic() >= until:
                del self._held[workflow_id]
                self._events.put(Queued(workflow_id))
        for workflow_id, step in steps.items():
            self._carry_out(workflow_id, step)
        self._commit_next()

    def _carry_out(self, workflow_id: WorkflowId, step: Step) -> None:
        """Kills now; launches once the next commit has recorded them (with the rest of
        the step's records)."""
        owned = self._owned[workflow_id]
        now = time.monotonic()
        for name, record in step.jobs.items():
            if record.status is JobStatus.QUEUED and record.retry_at is None:
                owned.ready_at.setdefault(name, now)
        for job in step.launch:
            pending = _Pending(Launch(
                workflow_id=workflow_id, job=job, attempt=owned.run.jobs[job].attempt,
                spec=owned.run.definition.jobs[job], workflow_dir=owned.workflow_dir,
                upload_id=owned.run.workflow.upload_id, owner=owned.run.workflow.owner),
                ready_at=owned.ready_at.pop(job, now))
            owned.unsent_launches.append(pending)
            owned.pending[pending.key] = pending
        for job in step.kill:
            attempt = owned.run.jobs[job].attempt
            waiting = owned.pending.get((job, attempt))
            dropped = "now" if waiting is None else waiting.drop()
            if dropped == "dropped":
                del owned.pending[(job, attempt)]
                self._events.put(JobEnded(workflow_id, job, attempt, NOT_STARTED))
            elif dropped == "now":
                self.executor.kill(workflow_id, job, attempt)
        owned.unsent = owned.unsent.merge(step) if owned.unsent else step
        self._unsent[workflow_id] = None

    def _commit_next(self) -> None:
        """Sends every run's unsent records in one commit, unless a commit is already on
        its way: then they go together with whatever follows, once it is done."""
        if self._committing:
            return
        batch = []
        for workflow_id in self._unsent:
            owned = self._owned.get(workflow_id)
            if owned is not None and owned.unsent:
                batch.append((workflow_id, owned.unsent, owned.unsent_launches))
                owned.unsent, owned.unsent_launches = Step(), []
        self._unsent.clear()
        if batch:
            self._committing = True
            self._committer.submit(self._commit, batch)

    def _commit(self, batch: list[tuple[WorkflowId, Step, list[_Pending]]]) -> None:
        """On the committer thread: records the changes of every run in the batch, then
        starts the launches they record (the others never start)."""
        changes = []
        for workflow_id, step, _ in batch:
            owned = self._owned.get(workflow_id)
            if owned is not None:
                changes.append(RunChanges(workflow_id, step.workflow, list(step.jobs.values()), owned.revisions,
                                          let_go=True, claim=self._claim_of_mine()))
        errors = self.store.save_runs(changes)
        for workflow_id, _, launches in batch:
            if errors.get(workflow_id, False) is None:
                for pending in launches:
                    self._launch(pending)
        with self._step_lock:  # what follows goes out at once, from here: no hop to the loop
            try:
                self._committed(batch, errors)
            except Exception:
                log.exception("scheduler step failed; it will be retried from etcd")
                self._reload_all()
            finally:
                self._committing = False
            if not self._stopping.is_set():
                self._commit_next()

    def _launch(self, pending: _Pending) -> None:
        if self._draining or not pending.begin_launch():
            return  # killed meanwhile: ended already; or the stack is stopping (it runs at the next start)
        launch = pending.launch
        if not self._may_launch():
            log.warning("not launching %s/%s attempt %d: the lease may have ended", launch.workflow_id, launch.job,
                        launch.attempt)
            pending.end_launch()
            self._events.put(JobEnded(WorkflowId(launch.workflow_id), launch.job, launch.attempt,
                                      Outcome(lost=True, message="not launched: its scheduler's lease may have "
                                                                 "ended")))
            return
        log.info("launching %s/%s attempt %d", launch.workflow_id, launch.job, launch.attempt)
        try:
            self.executor.launch(launch)
            JOB_LAUNCH_DELAY.observe(time.monotonic() - pending.ready_at)
        except Exception as e:  # an executor's bug: the attempt fails, the run goes on
            log.exception("cannot launch %s/%s attempt %d", launch.workflow_id, launch.job, launch.attempt)
            self._events.put(JobEnded(WorkflowId(launch.workflow_id), launch.job, launch.attempt,
                                      Outcome(message=f"cannot be launched: {e!r}")))
        if pending.end_launch():
            self.executor.kill(launch.workflow_id, launch.job, launch.attempt)

    def _committed(self, batch: list[tuple[WorkflowId, Step, list[_Pending]]],
                   errors: dict[WorkflowId, Exception | None]) -> None:
        """The bookkeeping after a commit: a run that ended is let go, a run whose commit
        failed is reloaded from etcd (its launches never started)."""
        for workflow_id, step, launches in batch:
            owned = self._owned.get(workflow_id)
            if owned is None or workflow_id not in errors:
                continue
            error = errors[workflow_id]
            for pending in launches:
                owned.pending.pop(pending.key, None)
                if error is not None:
                    pending.drop()  # its commit failed: it never started
            if error is None:
                owned.count_ended_attempts(step)
                if owned.run.finished and not owned.unsent:  # the commit let it go (queue, claim)
                    del self._owned[workflow_id]
                    log.info("workflow %s %s", workflow_id, owned.run.workflow.status.value)
                    if workflow_id in self._queued_at_end:
                        self._queued_at_end.remove(workflow_id)
                        self._events.put(Queued(workflow_id))
                continue
            if isinstance(error, Conflict):
                log.info("run %s changed under us; reloading it", workflow_id)
            else:
                log.warning("cannot record run %s (%s); reloading it", workflow_id, error)
            for pending in owned.pending.values():
                pending.drop()
            self._forget(workflow_id)
            self._events.put(Queued(workflow_id))

    # ---- ownership -----------------------------------------------------------------

    def _take_over(self, workflow_id: WorkflowId, claim: RunSnapshot | Exception | None, now: float) -> Step | None:
        """Starts (or resumes) a run the claimer claimed; None when it is not ours to run.
        A take-over that failed is tried again after a doubling delay (and never holds back
        another run)."""
        try:
            if isinstance(claim, Exception):
                raise claim
            started = None if claim is None else self._adopt(workflow_id, claim, now)
        except Exception as e:  # noqa: BLE001 - this run only; the others go on
            failures = self._failed_take_overs[workflow_id] = self._failed_take_overs.get(workflow_id, 0) + 1
            if failures >= MAX_FAILED_TAKE_OVERS and not isinstance(e, Unavailable) \
                    and self._give_up(workflow_id, e, now):
                self._owned.pop(workflow_id, None)
                return None
            cap = TAKE_OVER_RETRY_MAX_UNAVAILABLE if isinstance(e, Unavailable) else TAKE_OVER_RETRY_MAX
            delay = min(TAKE_OVER_RETRY * 2 ** (failures - 1), cap)
            log.warning("cannot take run %s over (%s); trying again in %.1fs", workflow_id, e, delay)
            self._owned.pop(workflow_id, None)
            self._held[workflow_id] = time.monotonic() + delay
            return None
        self._failed_take_overs.pop(workflow_id, None)
        return started

    def _claim_of_mine(self) -> Claim:
        assert self._lease is not None
        return Claim(self.scheduler_id, self._lease.id)

    def _claim(self, workflow_id: WorkflowId) -> RunSnapshot | None:
        """Claims the run and reads it; None when it is someone else's or over."""
        try:
            stored, revision, queued = self.store.workflow_in_queue(workflow_id)
            if stored.status.finished:  # checked before claiming, so releasing a claim never loops
                if queued:  # (unless a retry queued it again since that read)
                    self.store.dequeue(workflow_id, self.store.workflow_revisions(workflow_id, revision))
                return None
        except NotFound:
            return None
        assert self._lease is not None
        snapshot = self.store.claim_run(workflow_id, self.scheduler_id, self._lease)
        if snapshot is None:
            return None
        if snapshot.workflow is None or snapshot.workflow.status.finished:
            self._release(workflow_id)
            return None
        return snapshot

    def _adopt(self, workflow_id: WorkflowId, snapshot: RunSnapshot, now: float) -> Step:
        """Starts (or resumes) a run just claimed."""
        assert snapshot.workflow is not None
        run = Run(snapshot.workflow, snapshot.definition, snapshot.jobs, cancel_requested=snapshot.cancel_requested,
                  max_lost_attempts=self.max_lost_attempts)
        directory = workflow_dir(self.data_root, workflow_id)
        directory.mkdir(parents=True, exist_ok=True)
        self._owned[workflow_id] = _Owned(run, snapshot.revisions, str(directory),
                                          recorded_attempts={n: len(j.attempts) for n, j in snapshot.jobs.items()})
        if run.workflow.status is WorkflowStatus.RUNNING:  # picked up mid-run, not a fresh queued one
            TAKEOVERS.inc()
        reported = {(job, attempt): outcome for job, attempt, outcome in snapshot.reports}
        running = [(name, run.jobs[name].attempt) for name in run.running_jobs]
        ended = [(name, attempt) for name, attempt in running if (name, attempt) in reported]
        lost = [name for name, attempt in running
                if (name, attempt) not in reported and self.executor.lost(workflow_id, name, attempt)]
        log.info("took run %s over (%s)%s", workflow_id, run.workflow.status.value,
                 f"; lost attempts of {', '.join(lost)}" if lost else "")
        step = run.start(now, lost=lost)
        for name, attempt in ended:  # ended, and said so to another replica meanwhile
            step = step.merge(run.job_finished(name, attempt, reported[(name, attempt)], now))
        return step

    def _give_up(self, workflow_id: WorkflowId, error: Exception, now: float) -> bool:
        """Ends a run that fails every take-over (its records can't be read, say): `dead`,
        saying why, and off the queue. False if that could not be recorded either."""
        message = f"could not be scheduled: {type(error).__name__}: {error}"
        try:
            self.store.give_up(workflow_id, message, now)
        except Exception as e:  # noqa: BLE001 - it is tried again later
            log.warning("cannot end run %s (%s)", workflow_id, e)
            return False
        log.error("run %s %s", workflow_id, message)
        self._failed_take_overs.pop(workflow_id, None)
        return True

    def _release(self, workflow_id: WorkflowId) -> None:
        self.store.release_claim(workflow_id, self.scheduler_id)

    def _forget(self, workflow_id: WorkflowId) -> None:
        self._owned.pop(workflow_id, None)
        self._queued_at_end.discard(workflow_id)
        with contextlib.suppress(Unavailable):  # the lease will drop it
            self._release(workflow_id)

    def _claim_again(self) -> None:
        """Claims every owned run with the current lease, keeping what is known of it;
        a run that can't be claimed (another scheduler has it) is let go."""
        assert self._lease is not None
        for workflow_id in list(self._owned):
            try:
                claimed = self.store.claim_run(workflow_id, self.scheduler_id, self._lease) is not None
            except Unavailable:
                claimed = False
            if not claimed:
                self._owned.pop(workflow_id)
                self._events.put(Queued(workflow_id))

    def _reload_all(self) -> None:
        for workflow_id in list(self._owned):
            self._owned.pop(workflow_id)
            self._events.put(Queued(workflow_id))
