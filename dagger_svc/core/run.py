"""The DAG state machine of one workflow run: events in, changed records and commands out.

Pure: no clock, no I/O. The scheduler feeds it events (start, a job finished, cancel, a
timer) with the time on each, persists the changed records in one guarded etcd
transaction, then carries out the commands (launch, kill). Every event costs O(the jobs
it touches), never O(the DAG), so large DAGs schedule as fast as small ones.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from dagger_svc.core.definition import Definition
from dagger_svc.core.records import (
    FINISHED_JOB_STATUSES,
    RETRYABLE_JOB_STATUSES,
    AttemptRecord,
    JobRecord,
    JobStatus,
    Outcome,
    WorkflowRecord,
    WorkflowStatus,
)
from donut_common.errors import InvalidArgument, Problem

LOST = Outcome(lost=True, message="lost by its executor")
MAX_LOST_ATTEMPTS = 3  # times a job whose attempt was lost runs again, one loss after another, before it is dead
RETRY_BACKOFF_BASE = 1.0  # seconds before the first automatic retry; doubles each time
RETRY_BACKOFF_MAX = 300.0


def retry_backoff(retry_number: int) -> float:
    """Seconds to wait before automatic retry number `retry_number` (1, 2, ...)."""
    return min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_BASE * 2.0 ** (retry_number - 1))


@dataclass
class Step:
    """The result of feeding events: records to persist, then commands to carry out."""

    jobs: dict[str, JobRecord] = field(default_factory=dict)
    workflow: WorkflowRecord | None = None
    launch: list[str] = field(default_factory=list)
    kill: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.jobs or self.workflow or self.launch or self.kill)

    def merge(self, later: Step) -> Step:
        self.jobs.update(later.jobs)
        self.workflow = later.workflow or self.workflow
        self.launch.extend(later.launch)
        self.kill.extend(later.kill)
        return self


class Run:
    """One workflow's jobs and the indexes that make each event O(1)-ish."""

    def __init__(
        self,
        workflow: WorkflowRecord,
        definition: Definition,
        jobs: Mapping[str, JobRecord],
        cancel_requested: bool = False,
        max_lost_attempts: int = MAX_LOST_ATTEMPTS,
    ) -> None:
        self.workflow = workflow
        self.max_lost_attempts = max_lost_attempts
        self.definition = definition
        self.jobs: dict[str, JobRecord] = {name: jobs.get(name) or JobRecord(name) for name in definition.jobs}
        self.cancelling = cancel_requested  # the user asked to cancel
        self.paused = False                 # launch nothing more (the scheduler is stopping)
        self.stopping = cancel_requested    # nothing more is launched (cancel or fail-fast)
        self._counts = Counter(j.status for j in self.jobs.values())
        self._unmet = {
            name: sum(self.jobs[p].status is not JobStatus.SUCCEEDED for p in parents)
            for name, parents in definition.parents.items()
        }
        self._ready: deque[str] = deque()
        self._backoff: list[tuple[float, str]] = []
        self._running: set[str] = set()
        for name, job in self.jobs.items():
            if job.status is JobStatus.QUEUED:
                if job.retry_at is not None:
                    heapq.heappush(self._backoff, (job.retry_at, name))
                else:
                    self._ready.append(name)
            elif job.status is JobStatus.RUNNING:
                self._running.add(name)
        self._step = Step()

    # ---- queries -------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.workflow.status.finished

    @property
    def running_jobs(self) -> frozenset[str]:
        return frozenset(self._running)

    def next_wakeup(self) -> float | None:
        """When `tick` has work to do (a retry backoff ends), if ever."""
        return self._backoff[0][0] if self._backoff and not self.stopping else None

    # ---- events --------------------------------------------------------------------

    def start(self, now: float, lost: Iterable[str] = ()) -> Step:
        """Begin (or resume) the run. `lost` names running jobs whose attempt the
        executor no longer has (e.g. the scheduler restarted): they run again without
        using up a retry."""
        if self.finished:
            return self._take()
        if self.workflow.status is WorkflowStatus.QUEUED:
            self._set_workflow(status=WorkflowStatus.RUNNING, started_at=now, finished_at=None, message="")
        for name in lost:
            if self.jobs[name].status is JobStatus.RUNNING:
                self._running.discard(name)
                self._failed(self.jobs[name], LOST, now)
        # What the last commit may not have recorded in full (a large one is several
        # transactions): the descendants of jobs that did not succeed are skipped, and
        # with fail-fast a failure stops everything.
        for name, job in list(self.jobs.items()):
            if job.status in (JobStatus.FAILED, JobStatus.DEAD, JobStatus.SKIPPED):
                self._skip_descendants(name, now)
        if self.workflow.fail_fast and not self.cancelling and (self._counts[JobStatus.FAILED]
                                                                or self._counts[JobStatus.DEAD]):
            self._stop_everything(now, JobStatus.SKIPPED, "skipped: fail-fast after a failure")
        for name, job in self.jobs.items():
            if job.status is JobStatus.WAITING and self._unmet[name] == 0:
                self._enqueue(name)
        if self.cancelling:
            return self.cancel(now)
        self._fill_slots(now)
        self._check_finished(now)
        return self._take()

    def job_finished(self, name: str, attempt: int, outcome: Outcome, now: float) -> Step:
        job = self.jobs.get(name)
        if job is None or job.status is not JobStatus.RUNNING or job.attempt != attempt:
            return self._take()  # a stale or repeated report
        self._running.discard(name)
        if outcome.succeeded:
            self._set_job(self._end_attempt(job, JobStatus.SUCCEEDED, outcome, now))
            for child in self.definition.children[name]:
                self._unmet[child] -= 1
                if self._unmet[child] == 0 and self.jobs[child].status is JobStatus.WAITING:
                    self._enqueue(child)
        elif self.stopping:
            self._set_job(self._end_attempt(job, JobStatus.TERMINATED, outcome, now))
        else:
            self._failed(job, outcome, now)
        if not self.stopping:
            self._fill_slots(now)
        self._check_finished(now)
        return self._take()

    def tick(self, now: float) -> Step:
        """Moves jobs whose retry backoff has ended back into the ready queue."""
        while self._backoff and self._backoff[0][0] <= now and not self.stopping:
            _, name = heapq.heappop(self._backoff)
            job = self.jobs[name]
            if job.status is JobStatus.QUEUED and job.retry_at is not None:
                self._set_job(replace(job, retry_at=None))
                self._ready.append(name)
        if not self.stopping and not self.finished:
            self._fill_slots(now)
        return self._take()

    def cancel(self, now: float) -> Step:
        """Kills running jobs and marks every job that has not finished terminated."""
        if self.finished:
            return self._take()
        self.cancelling = True
        self._stop_everything(now, JobStatus.TERMINATED, "terminated: the workflow was cancelled")
        self._check_finished(now)
        return self._take()

    # ---- transitions ---------------------------------------------------------------

    def _stop_everything(self, now: float, status: JobStatus, message: str) -> None:
        self.stopping = True
        for job in list(self.jobs.values()):
            if job.status in (JobStatus.WAITING, JobStatus.QUEUED):
                self._set_job(replace(job, status=status, message=message, retry_at=None, finished_at=now))
        self._ready.clear()
        self._backoff.clear()
        self._step.kill.extend(sorted(self._running))

    def _enqueue(self, name: str) -> None:
        self._set_job(replace(self.jobs[name], status=JobStatus.QUEUED, message=""))
        self._ready.append(name)

    def pause(self) -> Step:
        """Launches nothing more (the stack is stopping); what runs still reports its end."""
        self.paused = True
        return self._take()

    def _fill_slots(self, now: float) -> None:
        while self._ready and len(self._running) < self.workflow.parallelism and not self.paused:
            name = self._ready.popleft()
            job = self.jobs[name]
            if job.status is not JobStatus.QUEUED or job.retry_at is not None:
                continue
            self._set_job(
                replace(
                    job,
                    status=JobStatus.RUNNING,
                    attempt=job.attempt + 1,
                    exit_code=None,
                    signal="",
                    message="",
                    started_at=now,
                    finished_at=None,
                )
            )
            self._running.add(name)
            self._step.launch.append(name)

    def _failed(self, job: JobRecord, outcome: Outcome, now: float) -> None:
        """An attempt that did not succeed: lost to the infrastructure (its replica died,
        its pod was deleted), it runs again at once, up to `max_lost_attempts` times in a
        row, and is `dead` after that; failed, it is retried after a backoff while it has
        retries (lost attempts use none); else it ends."""
        name = job.name
        if outcome.lost and _lost_in_a_row(job) < self.max_lost_attempts:
            ended = self._end_attempt(job, JobStatus.DEAD, outcome, now)
            self._set_job(replace(ended, status=JobStatus.QUEUED, round_start=job.round_start + 1))
            self._ready.append(name)
            return
        ended = self._end_attempt(job, JobStatus.DEAD if outcome.lost else JobStatus.FAILED, outcome, now)
        retries_used = job.attempt - job.round_start - 1
        if not outcome.lost and retries_used < self.definition.jobs[name].retries:
            retry_at = now + retry_backoff(retries_used + 1)
            self._set_job(replace(ended, status=JobStatus.QUEUED, retry_at=retry_at))
            heapq.heappush(self._backoff, (retry_at, name))
        else:
            self._set_job(ended)
            self._skip_descendants(name, now)
            if self.workflow.fail_fast:
                self._stop_everything(now, JobStatus.SKIPPED, "skipped: fail-fast after a failure")

    def _end_attempt(self, job: JobRecord, status: JobStatus, outcome: Outcome, now: float) -> JobRecord:
        started = outcome.started_at or job.started_at
        finished = outcome.finished_at or now
        message = outcome.message or _describe(status, outcome)
        attempt = AttemptRecord(
            number=job.attempt,
            status=status,
            exit_code=outcome.exit_code,
            signal=outcome.signal,
            message=message,
            started_at=started,
            finished_at=finished,
        )
        return replace(
            job,
            status=status,
            exit_code=outcome.exit_code,
            signal=outcome.signal,
            message=message,
            started_at=started,
            finished_at=finished,
            attempts=(*job.attempts, attempt),
        )

    def _skip_descendants(self, name: str, now: float) -> None:
        todo = deque(self.definition.children[name])
        while todo:
            child = todo.popleft()
            job = self.jobs[child]
            if job.status in (JobStatus.WAITING, JobStatus.QUEUED):
                self._set_job(
                    replace(job, status=JobStatus.SKIPPED, message=f"skipped: upstream job '{name}' did not succeed",
                            retry_at=None, finished_at=now)
                )
                todo.extend(self.definition.children[child])

    def _check_finished(self, now: float) -> None:
        if self.finished or self._running:
            return
        if sum(self._counts[s] for s in FINISHED_JOB_STATUSES) != len(self.jobs):
            return
        if self.cancelling:
            status, message = WorkflowStatus.TERMINATED, "cancelled"
        elif self._counts[JobStatus.FAILED]:
            status, message = WorkflowStatus.FAILED, f"{self._counts[JobStatus.FAILED]} job(s) failed"
        elif self._counts[JobStatus.DEAD]:
            status, message = WorkflowStatus.DEAD, f"{self._counts[JobStatus.DEAD]} job(s) lost by the executor"
        else:
            status, message = WorkflowStatus.DONE, ""
        self._set_workflow(status=status, finished_at=now, message=message)

    # ---- bookkeeping ---------------------------------------------------------------

    def _set_job(self, job: JobRecord) -> None:
        old = self.jobs[job.name]
        if old.status is not job.status:
            self._counts[old.status] -= 1
            self._counts[job.status] += 1
        self.jobs[job.name] = job
        self._step.jobs[job.name] = job
        if self._step.workflow is None:
            self._step.workflow = self.workflow  # counts change with every job change

    def _set_workflow(self, **changes: object) -> None:
        self.workflow = replace(self.workflow, **changes)  # type: ignore[arg-type]
        self._step.workflow = self.workflow

    def _take(self) -> Step:
        step, self._step = self._step, Step()
        if step.workflow is not None:
            counts = {s.value: n for s, n in self._counts.items() if n}
            self.workflow = replace(self.workflow, counts=counts, job_total=len(self.jobs))
            step.workflow = self.workflow
        return step


def retry_selection(definition: Definition, only: Sequence[str]) -> frozenset[str]:
    """The jobs a retry may reset: those named and their descendants (none named: every job).
    A name the workflow does not have is an InvalidArgument at `jobs[i]`."""
    problems = [Problem(f"jobs[{i}]", f"the workflow has no job '{name}'")
                for i, name in enumerate(only) if name not in definition.jobs]
    if problems:
        raise InvalidArgument(problems)
    if not only:
        return frozenset(definition.jobs)
    selected = set(only)
    todo = deque(only)
    while todo:
        for child in definition.children[todo.popleft()]:
            if child not in selected:
                selected.add(child)
                todo.append(child)
    return frozenset(selected)


def prepare_retry(
    workflow: WorkflowRecord, jobs: Mapping[str, JobRecord], now: float,
    selected: Collection[str] | None = None, restart_successful: bool = False,
) -> tuple[WorkflowRecord, dict[str, JobRecord]]:
    """The records that make a finished workflow run again: failed, skipped, terminated
    and dead jobs (among `selected`, if given) go back to waiting, keeping their attempts;
    succeeded ones stay, unless `restart_successful`."""
    resettable = RETRYABLE_JOB_STATUSES | {JobStatus.SUCCEEDED} if restart_successful else RETRYABLE_JOB_STATUSES
    changed = {
        name: replace(
            job, status=JobStatus.WAITING, round_start=job.attempt, message="", retry_at=None,
            exit_code=None, signal="", started_at=None, finished_at=None,
        )
        for name, job in jobs.items()
        if job.status in resettable and (selected is None or name in selected)
    }
    counts = Counter(job.status.value for job in jobs.values())
    counts[JobStatus.WAITING.value] += len(changed)
    for name in changed:
        counts[jobs[name].status.value] -= 1
    queued = replace(
        workflow, status=WorkflowStatus.QUEUED, message="", finished_at=None,
        counts={k: v for k, v in counts.items() if v},
    )
    return queued, changed


def _lost_in_a_row(job: JobRecord) -> int:
    """How many of the job's last attempts were lost to the infrastructure, one after another."""
    count = 0
    for attempt in reversed(job.attempts):
        if attempt.status is not JobStatus.DEAD:
            break
        count += 1
    return count


def _describe(status: JobStatus, outcome: Outcome) -> str:
    if status is JobStatus.SUCCEEDED:
        return ""
    if outcome.signal:
        return f"killed by {outcome.signal}"
    if outcome.exit_code is not None:
        return f"exited with code {outcome.exit_code}"
    return str(status.value)


