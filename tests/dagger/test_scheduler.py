"""The scheduler over a real etcd, with a recording executor: what it launches and kills,
and what it records, for every kind of event; no process is started."""

from __future__ import annotations

from typing import Any

import pytest

from dagger_svc.core.records import JobStatus, WorkflowStatus
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


def test_a_launch_whose_commit_failed_is_killed_and_run_again_only_once_it_ended(
        scheduling: Scheduling, monkeypatch: pytest.MonkeyPatch) -> None:
    executor = RecordingExecutor(end_on_kill=False)
    scheduling.restart(executor)
    real_save = scheduling.store.save_run
    failed: list[str] = []

    def first_commit_fails(workflow_id: str, *args: Any, **kwargs: Any) -> None:
        if not failed:
            failed.append(workflow_id)
            raise Unavailable("etcd is away")
        real_save(workflow_id, *args, **kwargs)

    monkeypatch.setattr(scheduling.store, "save_run", first_commit_fails)
    workflow_id = scheduling.submit([job("a")])
    executor.wait_for(lambda: executor.kills, "the unrecorded launch killed")
    assert executor.kills == [Attempt(workflow_id, "a", 1)]
    assert len(executor.launches) == 1  # not launched again while the killed one still runs
    executor.end(Attempt(workflow_id, "a", 1), FAILED)  # the kill takes effect
    executor.finish(workflow_id, "a")  # the run, reloaded, launches again
    assert scheduling.wait(workflow_id).status is WorkflowStatus.DONE
    assert failed == [workflow_id] and len(executor.launches) == 2


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


def test_a_step_that_fails_holds_nothing_back(scheduling: Scheduling, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step fails part-way (here a launch raises) while commits come and go: later
    commits still go out and every run is taken up again from etcd."""
    executor = RecordingExecutor(outcome_of=lambda launch: OK)
    scheduling.restart(executor)
    real_launch = executor.launch
    failures = [3, 7]  # which launches raise

    def sometimes_raises(launch: Launch) -> None:
        failures[:] = [n - 1 for n in failures]
        if 0 in failures:
            raise RuntimeError("a bug in an executor")
        real_launch(launch)

    monkeypatch.setattr(executor, "launch", sometimes_raises)
    workflows = [scheduling.submit([job("a"), job("b")], {"a": ["b"]}) for _ in range(10)]
    assert all(scheduling.wait(w, timeout=30).status is WorkflowStatus.DONE for w in workflows)


def test_short_jobs_share_commits_and_the_final_state_is_not_held_back(store: Any, tmp_path: Any) -> None:
    """With a long commit interval a chain of quick jobs runs on (launches don't wait for
    commits), its changes go to etcd in a few transactions, and the final state at once."""
    running = Scheduling(store, tmp_path, RecordingExecutor(outcome_of=lambda launch: OK))
    running.scheduler.commit_interval = 30.0
    try:
        before = store.current_revision()
        workflow_id = running.submit([job(f"j{i}") for i in range(20)], {f"j{i}": [f"j{i + 1}"] for i in range(19)},
                                     parallelism=1)
        assert running.wait(workflow_id, timeout=20).status is WorkflowStatus.DONE  # well before 30 s
        assert set(running.statuses(workflow_id).values()) == {"succeeded"}
        # create, claim, the first launch, the final state; then dequeue and release: not one per job
        assert store.current_revision() - before <= 8
    finally:
        running.close()


def test_launches_carry_the_workflow_and_its_owner(scheduling: Scheduling) -> None:
    workflow_id = scheduling.submit([job("a", retries=2, timeout=5)])
    launch: Launch = scheduling.executor.wait_for(lambda: scheduling.executor.launches, "a launched")[0]
    assert (launch.workflow_id, launch.job, launch.attempt) == (workflow_id, "a", 1)
    assert launch.spec.retries == 2 and launch.spec.timeout == 5
