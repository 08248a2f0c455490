"""The scheduler over a real etcd, with a recording executor: what it launches and kills,
and what it records, for every kind of event; no process is started."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from dagger_svc.core.records import JobStatus, WorkflowStatus
from dagger_svc.core.run import Run
from dagger_svc.executors.base import Launch
from donut_common.errors import Unavailable
from tests.dagger.conftest import ADMIN, Scheduling, job
from tests.dagger.fakes import FAILED, OK, Attempt, RecordingExecutor


def test_a_chain_runs_in_order_each_job_once(scheduling: Scheduling) -> None:
    workflow_id = scheduling.submit([job("a"), job("b"), job("c")], {"a": ["b"], "b": ["c"]})
    for name in ("a", "b", "c"):
        scheduling.executor.finish(workflow_id, name)
    w = scheduling.wait(workflow_id)
    assert w.status is WorkflowStatus.DONE and w.counts == {"succeeded": 3}
    assert [(launch.job, launch.attempt) for launch in scheduling.executor.launches] == [("a", 1), ("b", 1), ("c", 1)]
    launch = scheduling.executor.launches[0]
    assert launch.workflow_dir == str(scheduling.root / "workflows" / workflow_id)
    assert launch.owner == ADMIN.user_id and launch.spec.name == "a"


@pytest.mark.parametrize("parallelism", [1, 3])
def test_parallelism_is_never_exceeded(store: Any, tmp_path: Any, parallelism: int) -> None:
    executor = RecordingExecutor()
    running = Scheduling(store, tmp_path, executor)
    try:
        workflow_id = running.submit([job(f"j{i}") for i in range(12)], parallelism=parallelism)
        for _ in range(12):  # end whatever runs, one at a time, as soon as the slots are full
            executor.wait_for(lambda: len(executor.running_jobs(workflow_id)) == min(
                parallelism, 12 - len(executor.ended)), "the slots filled")
            executor.end(next(iter(executor.running)))
        assert running.wait(workflow_id).status is WorkflowStatus.DONE
        assert executor.peak[workflow_id] == parallelism
    finally:
        running.close()


def test_a_failure_skips_descendants_while_the_other_branch_goes_on(scheduling: Scheduling) -> None:
    workflow_id = scheduling.submit([job("a"), job("b"), job("c"), job("d"), job("other")],
                                    {"a": ["b", "c"], "b": ["d"], "c": ["d"]})
    scheduling.executor.finish(workflow_id, "a")
    scheduling.executor.finish(workflow_id, "b", FAILED)
    scheduling.executor.finish(workflow_id, "c")
    scheduling.executor.finish(workflow_id, "other")
    w = scheduling.wait(workflow_id)
    assert w.status is WorkflowStatus.FAILED
    assert scheduling.statuses(workflow_id) == {"a": "succeeded", "b": "failed", "c": "succeeded", "d": "skipped",
                                                "other": "succeeded"}
    assert "d" not in {launch.job for launch in scheduling.executor.launches}


def test_fail_fast_kills_what_runs_and_skips_the_rest(scheduling: Scheduling) -> None:
    workflow_id = scheduling.submit([job("bad"), job("slow"), job("after")], {"slow": ["after"]},
                                    parallelism=2, fail_fast=True)
    scheduling.executor.wait_for(lambda: scheduling.executor.running_jobs(workflow_id) == {"bad", "slow"}, "both run")
    scheduling.executor.finish(workflow_id, "bad", FAILED)
    assert scheduling.wait(workflow_id).status is WorkflowStatus.FAILED
    assert scheduling.executor.kills == [Attempt(workflow_id, "slow", 1)]
    assert scheduling.statuses(workflow_id) == {"bad": "failed", "slow": "terminated", "after": "skipped"}


def test_cancel_kills_running_jobs_and_terminates_the_rest(scheduling: Scheduling) -> None:
    workflow_id = scheduling.submit([job("a"), job("b")], {"a": ["b"]})
    scheduling.executor.wait_for(lambda: scheduling.executor.running_jobs(workflow_id), "a running")
    scheduling.service.cancel(ADMIN, workflow_id)
    w = scheduling.wait(workflow_id)
    assert w.status is WorkflowStatus.TERMINATED
    assert scheduling.executor.kills == [Attempt(workflow_id, "a", 1)]
    assert scheduling.statuses(workflow_id) == {"a": "terminated", "b": "terminated"}


def test_retry_reruns_only_what_did_not_succeed_as_new_attempts(scheduling: Scheduling) -> None:
    workflow_id = scheduling.submit([job("a"), job("b"), job("c")], {"a": ["b"], "b": ["c"]})
    scheduling.executor.finish(workflow_id, "a")
    scheduling.executor.finish(workflow_id, "b", FAILED)
    assert scheduling.wait(workflow_id).status is WorkflowStatus.FAILED
    scheduling.service.retry(ADMIN, workflow_id)
    scheduling.executor.finish(workflow_id, "b")
    scheduling.executor.finish(workflow_id, "c")
    assert scheduling.wait(workflow_id).status is WorkflowStatus.DONE
    assert [(launch.job, launch.attempt) for launch in scheduling.executor.launches] == [
        ("a", 1), ("b", 1), ("b", 2), ("c", 1)]
    b = scheduling.store.job(workflow_id, "b")
    assert [(a.number, a.status) for a in b.attempts] == [(1, JobStatus.FAILED), (2, JobStatus.SUCCEEDED)]


def test_a_restarted_scheduler_adopts_what_still_runs(scheduling: Scheduling) -> None:
    workflow_id = scheduling.submit([job("a"), job("b")], {"a": ["b"]})
    scheduling.executor.wait_for(lambda: scheduling.executor.running_jobs(workflow_id), "a running")
    scheduling.restart()  # the executor still has attempt 1 of a: it is not run again
    scheduling.executor.finish(workflow_id, "a")
    scheduling.executor.finish(workflow_id, "b")
    assert scheduling.wait(workflow_id).status is WorkflowStatus.DONE
    assert [(launch.job, launch.attempt) for launch in scheduling.executor.launches] == [("a", 1), ("b", 1)]


def test_an_attempt_the_executor_lost_becomes_dead_and_runs_again(scheduling: Scheduling) -> None:
    workflow_id = scheduling.submit([job("a")])
    scheduling.executor.wait_for(lambda: scheduling.executor.running_jobs(workflow_id), "a running")
    scheduling.executor.forget()
    scheduling.restart()
    scheduling.executor.finish(workflow_id, "a")
    assert scheduling.wait(workflow_id).status is WorkflowStatus.DONE
    a = scheduling.store.job(workflow_id, "a")
    assert [(at.number, at.status) for at in a.attempts] == [(1, JobStatus.DEAD), (2, JobStatus.SUCCEEDED)]


def test_an_attempt_is_recorded_running_before_it_is_launched(scheduling: Scheduling) -> None:
    store = scheduling.store
    seen: list[tuple[str, int]] = []

    class Checking(RecordingExecutor):
        def launch(self, launch: Launch) -> None:
            record = store.job(launch.workflow_id, launch.job)
            seen.append((record.status.value, record.attempt))
            super().launch(launch)

    executor = Checking(outcome_of=lambda launch: FAILED if (launch.job, launch.attempt) == ("a", 1) else OK)
    scheduling.restart(executor)
    workflow_id = scheduling.submit([job("a", retries=1), job("b")], {"a": ["b"]})
    assert scheduling.wait(workflow_id).status is WorkflowStatus.DONE
    assert seen == [("running", 1), ("running", 2), ("running", 1)]  # a, a's retry, b


def test_a_launch_whose_commit_failed_never_starts_and_the_run_goes_on(
        scheduling: Scheduling, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = scheduling.store.save_runs
    failed: list[list[str]] = []

    def first_commit_fails(runs: Any) -> Any:
        runs = list(runs)
        if not failed:
            failed.append([run.workflow_id for run in runs])
            return {run.workflow_id: Unavailable("etcd unavailable (a transaction: UNAVAILABLE)") for run in runs}
        return real_save(runs)

    monkeypatch.setattr(scheduling.store, "save_runs", first_commit_fails)
    workflow_id = scheduling.submit([job("a")])
    scheduling.executor.finish(workflow_id, "a")  # the run, reloaded, launches it (for the first time)
    assert scheduling.wait(workflow_id).status is WorkflowStatus.DONE
    assert failed == [[workflow_id]]
    assert [(launch.job, launch.attempt) for launch in scheduling.executor.launches] == [("a", 1)]
    assert scheduling.executor.kills == []


class HeldCommits:
    """Holds the scheduler's commits until `release`, counting the runs each one carries."""

    def __init__(self, scheduling: Scheduling, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        self.sizes: list[int] = []
        real_save = scheduling.store.save_runs

        def held(runs: Any) -> Any:
            runs = list(runs)
            self.open.wait(20)
            self.sizes.append(len(runs))
            return real_save(runs)

        monkeypatch.setattr(scheduling.store, "save_runs", held)

    def release(self) -> None:
        self.open.set()


def test_the_launches_of_many_runs_share_a_transaction(scheduling: Scheduling,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    executor = RecordingExecutor(outcome_of=lambda launch: OK)
    scheduling.restart(executor)
    held = HeldCommits(scheduling, monkeypatch)
    workflows = [scheduling.submit([job("a")]) for _ in range(12)]
    deadline = time.monotonic() + 10
    while sum(scheduling.scheduler.owns(w) for w in workflows) < 12:  # all taken over, waiting for a commit
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert executor.launches == []  # nothing starts before its record is written
    held.release()
    assert all(scheduling.wait(w).status is WorkflowStatus.DONE for w in workflows)
    assert max(held.sizes) >= 11  # the first commit went alone; every other run's launch went in the next


def test_a_kill_before_the_launch_is_recorded_ends_the_attempt_unstarted(
        scheduling: Scheduling, monkeypatch: pytest.MonkeyPatch) -> None:
    held = HeldCommits(scheduling, monkeypatch)
    workflow_id = scheduling.submit([job("a")])
    deadline = time.monotonic() + 10
    while not scheduling.scheduler.owns(workflow_id):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    scheduling.service.cancel(ADMIN, workflow_id)
    time.sleep(0.2)  # the cancel reaches the scheduler while the launch's commit is held
    held.release()
    assert scheduling.wait(workflow_id).status is WorkflowStatus.TERMINATED
    a = scheduling.store.job(workflow_id, "a")
    assert a.status is JobStatus.TERMINATED and a.message == "terminated before it started"
    assert scheduling.executor.launches == [] and scheduling.executor.kills == []


def test_failing_take_overs_hold_nothing_back(scheduling: Scheduling, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every other claim fails (etcd flaky): a take-over that fails is tried again a moment
    later, and never costs the other runs their progress."""
    executor = RecordingExecutor(outcome_of=lambda launch: OK)
    scheduling.restart(executor)
    real_claim = scheduling.store.claim_run
    calls = [0]

    def flaky_claim(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] % 2:
            raise Unavailable("etcd is away")
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(scheduling.store, "claim_run", flaky_claim)
    workflows = [scheduling.submit([job("a"), job("b")], {"a": ["b"]}) for _ in range(10)]
    assert all(scheduling.wait(w, timeout=30).status is WorkflowStatus.DONE for w in workflows)


class HeldClaims:
    """Holds every claim of a run (after etcd has answered it) until released."""

    def __init__(self, scheduling: Scheduling, monkeypatch: pytest.MonkeyPatch) -> None:
        self.claimed = threading.Event()
        self.open = threading.Event()
        real_claim = scheduling.store.claim_run

        def held_claim(*args: Any, **kwargs: Any) -> Any:
            snapshot = real_claim(*args, **kwargs)
            self.claimed.set()
            assert self.open.wait(30), "the claim was never let through"
            return snapshot

        monkeypatch.setattr(scheduling.store, "claim_run", held_claim)

    def wait_claimed(self) -> None:
        assert self.claimed.wait(10), "nothing was claimed"


def test_a_slow_take_over_holds_back_no_other_run(scheduling: Scheduling, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's claim takes long (etcd slow): the runs already owned go on meanwhile (the
    take-over held the step lock, so no job's end was handled and nothing committed)."""
    running = scheduling.submit([job("a"), job("b")], {"a": ["b"]})
    scheduling.executor.wait_for(lambda: scheduling.executor.running_jobs(running), "a launched")
    held = HeldClaims(scheduling, monkeypatch)
    try:
        slow = scheduling.submit([job("c")])
        held.wait_claimed()
        scheduling.executor.finish(running, "a")
        scheduling.executor.finish(running, "b")
        assert scheduling.wait(running).status is WorkflowStatus.DONE
    finally:
        held.open.set()
    scheduling.executor.finish(slow, "c")
    assert scheduling.wait(slow).status is WorkflowStatus.DONE


def test_a_cancel_asked_while_the_run_is_claimed_is_carried_out(scheduling: Scheduling,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The cancel comes after the claim read the run and before the run is taken over:
    it is carried out once it is (nothing ever starts)."""
    held = HeldClaims(scheduling, monkeypatch)
    try:
        workflow_id = scheduling.submit([job("a")])
        held.wait_claimed()
        scheduling.service.cancel(ADMIN, workflow_id)
        time.sleep(0.2)  # the cancel reaches the scheduler while the claim is held
    finally:
        held.open.set()
    assert scheduling.wait(workflow_id).status is WorkflowStatus.TERMINATED
    assert scheduling.executor.launches == []


def test_a_step_that_fails_holds_nothing_back(scheduling: Scheduling, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step fails part-way (here: the state machine fails on two jobs' ends) while
    commits come and go: later commits still go out, every run is taken up again from
    etcd and ends (the ends that were lost run again), and leaves the queue."""
    executor = RecordingExecutor(outcome_of=lambda launch: OK)
    scheduling.restart(executor)
    real_job_finished = Run.job_finished
    calls = [0]

    def sometimes_fails(run: Run, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] in (2, 5):
            raise RuntimeError("a bug")
        return real_job_finished(run, *args, **kwargs)

    monkeypatch.setattr(Run, "job_finished", sometimes_fails)
    workflows = [scheduling.submit([job("a"), job("b")], {"a": ["b"]}) for _ in range(10)]
    assert all(scheduling.wait(w, timeout=30).status is WorkflowStatus.DONE for w in workflows)
    deadline = time.monotonic() + 10
    while scheduling.store.queued_ids():  # each finished run is taken off the queue, failures or not
        assert time.monotonic() < deadline, "a finished run stayed queued"
        time.sleep(0.02)
    assert calls[0] >= 22  # both failures happened, and the jobs whose end they lost ran again


def test_a_run_that_ends_is_let_go_with_its_last_record(scheduling: Scheduling,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit that records a run's end also takes it off the queue and releases its
    claim (they were two more writes after it, on the committer, holding the step lock)."""
    let_through = threading.Event()

    def held(real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            let_through.wait(10)
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(scheduling.store, "dequeue", held(scheduling.store.dequeue))
    monkeypatch.setattr(scheduling.store, "release_claim", held(scheduling.store.release_claim))
    try:
        workflow_id = scheduling.submit([job("a")])
        scheduling.executor.finish(workflow_id, "a")
        assert scheduling.wait(workflow_id).status is WorkflowStatus.DONE
        assert workflow_id not in scheduling.store.queued_ids()
        lease = scheduling.store.grant_lease(5)
        assert scheduling.store.claim_run(workflow_id, "another-scheduler", lease) is not None  # free
        lease.revoke()
    finally:
        let_through.set()


def test_a_run_retried_as_it_is_let_go_runs_again(scheduling: Scheduling, monkeypatch: pytest.MonkeyPatch) -> None:
    """The retry comes after the commit recording the run's end and before the scheduler
    has let the run go: it is taken over again once it has."""
    written, go = threading.Event(), threading.Event()
    real_save = scheduling.store.save_runs

    def end_held(changes: Any) -> Any:
        changes = list(changes)
        result = real_save(changes)
        if any(c.workflow is not None and c.workflow.status.finished for c in changes) and not written.is_set():
            written.set()
            go.wait(10)
        return result

    monkeypatch.setattr(scheduling.store, "save_runs", end_held)
    workflow_id = scheduling.submit([job("a")])
    scheduling.executor.finish(workflow_id, "a", FAILED)
    assert written.wait(10)
    try:
        scheduling.service.retry(ADMIN, workflow_id)
        time.sleep(0.2)  # the queueing reaches the scheduler while the run is being let go
    finally:
        go.set()
    assert scheduling.executor.finish(workflow_id, "a").number == 2
    assert scheduling.wait(workflow_id).status is WorkflowStatus.DONE


def test_launches_carry_the_workflow_and_its_owner(scheduling: Scheduling) -> None:
    workflow_id = scheduling.submit([job("a", retries=2, timeout=5)])
    launch: Launch = scheduling.executor.wait_for(lambda: scheduling.executor.launches, "a launched")[0]
    assert (launch.workflow_id, launch.job, launch.attempt) == (workflow_id, "a", 1)
    assert launch.spec.retries == 2 and launch.spec.timeout == 5


def test_a_run_that_can_never_be_taken_over_ends_dead_and_holds_nothing_back(
        scheduling: Scheduling, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose records can't be read (here: a spec that is not JSON) fails every
    take-over; after a few tries, a moment apart, it ends `dead` saying why, and it is off
    the queue, while the other runs go on."""
    import dagger_svc.scheduler

    monkeypatch.setattr(dagger_svc.scheduler, "TAKE_OVER_RETRY", 0.05)
    scheduling.scheduler.stop()
    executor = RecordingExecutor(outcome_of=lambda launch: OK)
    broken = scheduling.submit([job("a"), job("b")], {"a": ["b"]})
    scheduling.store._etcd.put(scheduling.store.keys.spec(broken, "b"), b"{not json")
    fine = scheduling.submit([job("a")])
    scheduling.executor = executor
    scheduling.scheduler = scheduling.service.scheduler = scheduling._scheduler()
    assert scheduling.wait(fine).status is WorkflowStatus.DONE
    w = scheduling.wait(broken)
    assert w.status is WorkflowStatus.DEAD
    assert w.message.startswith("could not be scheduled: ") and "JSON" in w.message, w.message
    assert broken not in scheduling.store.queued_ids()
    assert executor.launches and {launch.workflow_id for launch in executor.launches} == {fine}


def test_a_ten_thousand_job_workflow_does_not_hold_back_a_small_one(scheduling: Scheduling) -> None:
    """A run whose records (3.8 MB) are read in pages, next to a small one: both start, and
    the small one finishes while the large one runs."""
    large = scheduling.submit([job(f"j{i}", args=["a" * 300]) for i in range(10_000)], parallelism=4)
    small = scheduling.submit([job("a")])
    scheduling.executor.finish(small, "a")
    assert scheduling.wait(small, timeout=60).status is WorkflowStatus.DONE
    scheduling.executor.wait_for(lambda: len(scheduling.executor.running_jobs(large)) == 4, "the large one runs")
    assert scheduling.store.workflow(large)[0].status is WorkflowStatus.RUNNING
