"""The DAG state machine, driven directly: events in, records and commands out."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagger_svc.core.definition import Definition, JobSpec
from dagger_svc.core.records import JobRecord, JobStatus, Outcome, WorkflowRecord, WorkflowStatus
from dagger_svc.core.run import Run, Step, prepare_retry, retry_backoff, retry_selection
from donut_common.errors import InvalidArgument

OK = Outcome(exit_code=0)
FAIL = Outcome(exit_code=1)


def make_run(children: dict[str, list[str]], parallelism: int = 1, retries: dict[str, int] | None = None,
             fail_fast: bool = False, jobs: dict[str, JobRecord] | None = None,
             workflow: WorkflowRecord | None = None) -> Run:
    specs = [JobSpec(name, image="x", cmd="true", args=(), retries=(retries or {}).get(name, 0)) for name in children]
    workflow = workflow or WorkflowRecord(id="w", name="w", parallelism=parallelism, fail_fast=fail_fast)
    return Run(workflow, Definition.of(specs, children), jobs or {})


def drive(run: Run, first: Step, results: dict[str, list[Outcome]], now: float = 0.0) -> list[list[str]]:
    """Runs to the end, finishing launched jobs in launch order; returns the running sets seen."""
    running: list[str] = list(first.launch)
    seen = [list(running)]
    while running or run.next_wakeup() is not None:
        if not running:
            now = run.next_wakeup() or now
            running.extend(run.tick(now).launch)
            continue
        name = running.pop(0)
        outcome = results.get(name, [OK]).pop(0) if results.get(name) else OK
        now += 1
        step = run.job_finished(name, run.jobs[name].attempt, outcome, now)
        running.extend(step.launch)
        seen.append(list(running))
    return seen


CHAIN = {"a": ["b"], "b": ["c"], "c": []}
DIAMOND = {"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}


def test_chain_runs_in_order_and_finishes_done() -> None:
    run = make_run(CHAIN)
    first = run.start(0.0)
    assert first.launch == ["a"]
    assert first.workflow is not None and first.workflow.status is WorkflowStatus.RUNNING
    assert run.jobs["b"].status is JobStatus.WAITING
    step = run.job_finished("a", 1, OK, 1.0)
    assert step.launch == ["b"] and step.jobs["a"].status is JobStatus.SUCCEEDED
    run.job_finished("b", 1, OK, 2.0)
    last = run.job_finished("c", 1, OK, 3.0)
    assert last.workflow is not None and last.workflow.status is WorkflowStatus.DONE
    assert last.workflow.counts == {"succeeded": 3}
    assert run.finished


@pytest.mark.parametrize("parallelism", [1, 2, 8])
def test_parallelism_is_never_exceeded(parallelism: int) -> None:
    middle = [f"m{i}" for i in range(20)]
    children = {"root": middle, **{m: ["end"] for m in middle}, "end": []}
    run = make_run(children, parallelism=parallelism)
    seen = drive(run, run.start(0.0), {})
    assert max(len(s) for s in seen) == min(parallelism, 20)
    assert run.workflow.status is WorkflowStatus.DONE


def test_failure_skips_descendants_and_independent_branch_continues() -> None:
    run = make_run({**DIAMOND, "e": []}, parallelism=4)
    drive(run, run.start(0.0), {"b": [FAIL]})
    status = {n: j.status for n, j in run.jobs.items()}
    assert status == {"a": JobStatus.SUCCEEDED, "b": JobStatus.FAILED, "c": JobStatus.SUCCEEDED,
                      "d": JobStatus.SKIPPED, "e": JobStatus.SUCCEEDED}
    assert run.jobs["b"].message == "exited with code 1"
    assert "upstream job 'b'" in run.jobs["d"].message
    assert run.workflow.status is WorkflowStatus.FAILED


def test_fail_fast_kills_running_jobs_and_skips_the_rest() -> None:
    run = make_run({"a": [], "b": [], "c": ["d"], "d": []}, parallelism=2, fail_fast=True)
    assert run.start(0.0).launch == ["a", "b"]
    step = run.job_finished("a", 1, FAIL, 1.0)
    assert step.kill == ["b"] and step.launch == []
    assert run.jobs["c"].status is JobStatus.SKIPPED
    end = run.job_finished("b", 1, Outcome(exit_code=143, signal="SIGTERM"), 2.0)
    assert run.jobs["b"].status is JobStatus.TERMINATED
    assert end.workflow is not None and end.workflow.status is WorkflowStatus.FAILED


def test_cancel_terminates_everything() -> None:
    run = make_run(DIAMOND, parallelism=2)
    run.start(0.0)
    step = run.cancel(1.0)
    assert step.kill == ["a"]
    assert {run.jobs[n].status for n in "bcd"} == {JobStatus.TERMINATED}
    assert not run.finished  # a is still running until its end is reported
    end = run.job_finished("a", 1, Outcome(exit_code=143, signal="SIGTERM"), 2.0)
    assert run.jobs["a"].status is JobStatus.TERMINATED
    assert end.workflow is not None and end.workflow.status is WorkflowStatus.TERMINATED
    assert run.cancel(3.0).workflow is None  # cancelling an ended run changes nothing


def test_cancel_of_a_job_that_succeeds_anyway_still_terminates_the_workflow() -> None:
    run = make_run(CHAIN)
    run.start(0.0)
    run.cancel(1.0)
    run.job_finished("a", 1, OK, 2.0)
    assert run.jobs["a"].status is JobStatus.SUCCEEDED
    assert run.workflow.status is WorkflowStatus.TERMINATED


def test_retries_back_off_exponentially_and_keep_every_attempt() -> None:
    run = make_run({"a": []}, retries={"a": 2})
    run.start(0.0)
    step = run.job_finished("a", 1, FAIL, 10.0)
    assert step.launch == [] and run.jobs["a"].status is JobStatus.QUEUED
    assert run.jobs["a"].retry_at == 10.0 + retry_backoff(1)
    assert run.next_wakeup() == 11.0
    assert run.tick(10.5).launch == []
    assert run.tick(11.0).launch == ["a"]
    assert run.jobs["a"].attempt == 2
    run.job_finished("a", 2, FAIL, 12.0)
    assert run.jobs["a"].retry_at == 12.0 + retry_backoff(2) == 14.0
    run.tick(14.0)
    run.job_finished("a", 3, OK, 15.0)
    job = run.jobs["a"]
    assert job.status is JobStatus.SUCCEEDED and job.attempt == 3
    assert [(a.number, a.status) for a in job.attempts] == [
        (1, JobStatus.FAILED), (2, JobStatus.FAILED), (3, JobStatus.SUCCEEDED)]
    assert run.workflow.status is WorkflowStatus.DONE


def test_retries_run_out() -> None:
    run = make_run({"a": ["b"], "b": []}, retries={"a": 1})
    drive(run, run.start(0.0), {"a": [FAIL, FAIL]})
    assert run.jobs["a"].status is JobStatus.FAILED and run.jobs["a"].attempt == 2
    assert run.jobs["b"].status is JobStatus.SKIPPED


def test_stale_and_repeated_reports_are_ignored() -> None:
    run = make_run(CHAIN)
    run.start(0.0)
    assert not run.job_finished("a", 2, OK, 1.0)   # wrong attempt
    assert not run.job_finished("b", 1, OK, 1.0)   # not running
    assert run.job_finished("a", 1, OK, 1.0)
    assert not run.job_finished("a", 1, OK, 1.0)   # repeated


def test_resume_reruns_lost_jobs_without_using_a_retry() -> None:
    run = make_run(CHAIN)
    run.start(0.0)
    run.job_finished("a", 1, OK, 1.0)
    # A new scheduler loads the records as they were stored and finds b's process gone.
    resumed = make_run(CHAIN, jobs=dict(run.jobs), workflow=run.workflow)
    step = resumed.start(5.0, lost=["b"])
    assert step.launch == ["b"]
    b = resumed.jobs["b"]
    assert b.attempt == 2 and b.round_start == 1
    assert b.attempts[0].status is JobStatus.DEAD
    assert resumed.jobs["a"].status is JobStatus.SUCCEEDED and resumed.jobs["a"].attempt == 1


def test_resume_keeps_adopted_jobs_running() -> None:
    run = make_run(CHAIN)
    run.start(0.0)
    resumed = make_run(CHAIN, jobs=dict(run.jobs), workflow=run.workflow)
    assert resumed.start(5.0, lost=[]).launch == []
    assert resumed.job_finished("a", 1, OK, 6.0).launch == ["b"]


def test_resume_skips_what_a_commit_cut_short_left_waiting() -> None:
    """A failure's skipped descendants may not all have reached etcd (a large commit is
    several transactions): resuming skips them again, and the run finishes."""
    run = make_run(DIAMOND, parallelism=2)
    run.start(0.0)
    run.job_finished("a", 1, OK, 1.0)
    run.job_finished("b", 1, FAIL, 2.0)
    stored = dict(run.jobs)
    stored["d"] = JobRecord("d")  # its skip was in the part that was not written
    resumed = make_run(DIAMOND, parallelism=2, jobs=stored, workflow=run.workflow)
    resumed.start(5.0)
    assert resumed.jobs["d"].status is JobStatus.SKIPPED
    last = resumed.job_finished("c", 1, OK, 6.0)
    assert last.workflow is not None and last.workflow.status is WorkflowStatus.FAILED


def test_resume_remembers_fail_fast() -> None:
    run = make_run({"a": [], "b": [], "c": []}, parallelism=2, retries={"b": 2}, fail_fast=True)
    run.start(0.0)
    stored = dict(run.jobs)
    stored["a"] = run.job_finished("a", 1, FAIL, 1.0).jobs["a"]  # recorded; the fail-fast stop was not
    resumed = make_run({"a": [], "b": [], "c": []}, parallelism=2, retries={"b": 2}, fail_fast=True,
                       jobs={"a": stored["a"], "b": stored["b"], "c": JobRecord("c", status=JobStatus.QUEUED)},
                       workflow=run.workflow)
    step = resumed.start(5.0, lost=["b"])
    assert step.launch == [] and resumed.jobs["b"].status is JobStatus.SKIPPED
    assert resumed.jobs["c"].status is JobStatus.SKIPPED
    assert resumed.finished and resumed.workflow.status is WorkflowStatus.FAILED


def test_retry_reruns_only_what_did_not_succeed() -> None:
    run = make_run({**DIAMOND, "e": []}, parallelism=4)
    drive(run, run.start(0.0), {"b": [FAIL]})
    queued, changed = prepare_retry(run.workflow, run.jobs, 100.0)
    assert set(changed) == {"b", "d"}
    assert queued.status is WorkflowStatus.QUEUED
    assert queued.counts == {"succeeded": 3, "waiting": 2}
    again = make_run({**DIAMOND, "e": []}, parallelism=4, jobs={**run.jobs, **changed}, workflow=queued)
    first = again.start(101.0)
    assert first.launch == ["b"]
    drive(again, first, {})
    assert again.workflow.status is WorkflowStatus.DONE
    assert again.jobs["b"].attempt == 2 and again.jobs["a"].attempt == 1


@pytest.mark.parametrize("max_lost", [0, 1, 3])
def test_a_job_lost_again_and_again_is_given_up_dead(max_lost: int) -> None:
    workflow = WorkflowRecord(id="w", name="w", parallelism=1)
    specs = [JobSpec(name, image="x", cmd="true", args=(), retries=2) for name in ("a", "b")]
    run = Run(workflow, Definition.of(specs, {"a": ["b"], "b": []}), {}, max_lost_attempts=max_lost)
    run.start(0.0)
    for attempt in range(1, max_lost + 2):  # re-run max_lost times, then given up; its retries untouched
        assert run.jobs["a"].status is JobStatus.RUNNING and run.jobs["a"].attempt == attempt
        run.job_finished("a", attempt, Outcome(lost=True, message="pod vanished"), float(attempt))
    assert run.jobs["a"].status is JobStatus.DEAD and run.jobs["a"].message == "pod vanished"
    assert run.jobs["a"].attempt == max_lost + 1
    assert run.workflow.status is WorkflowStatus.DEAD


def test_lost_attempts_use_up_no_retry() -> None:
    workflow = WorkflowRecord(id="w", name="w", parallelism=1)
    run = Run(workflow, Definition.of([JobSpec("a", image="x", cmd="true", args=(), retries=1)], {"a": []}), {},
              max_lost_attempts=1)
    run.start(0.0)
    run.job_finished("a", 1, Outcome(lost=True), 1.0)  # lost: run again at once
    run.job_finished("a", 2, Outcome(exit_code=1), 2.0)  # failed: its one retry, after a backoff
    assert run.jobs["a"].status is JobStatus.QUEUED and run.jobs["a"].retry_at is not None
    run.tick(run.jobs["a"].retry_at)
    run.job_finished("a", 3, Outcome(exit_code=0), 100.0)
    assert run.jobs["a"].status is JobStatus.SUCCEEDED and run.workflow.status is WorkflowStatus.DONE


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    n = draw(st.integers(1, 12))
    names = [f"j{i}" for i in range(n)]
    return {name: sorted({names[k] for k in draw(st.lists(st.integers(i + 1, n - 1), max_size=3))}
                         if i < n - 1 else set())
            for i, name in enumerate(names)}


@settings(max_examples=200, deadline=None)
@given(dag=dags(), parallelism=st.integers(1, 4), failing=st.sets(st.integers(0, 11)),
       fail_fast=st.booleans(), data=st.data())
def test_random_runs_keep_the_invariants(dag: dict[str, list[str]], parallelism: int, failing: set[int],
                                          fail_fast: bool, data: st.DataObject) -> None:
    run = make_run(dag, parallelism=parallelism, fail_fast=fail_fast)
    running = list(run.start(0.0).launch)
    now = 0.0
    ran: list[str] = []
    while running:
        assert len(running) <= parallelism
        name = running.pop(data.draw(st.integers(0, len(running) - 1)))
        for parent in run.definition.parents[name]:
            assert run.jobs[parent].status is JobStatus.SUCCEEDED
        ran.append(name)
        now += 1
        step = run.job_finished(name, run.jobs[name].attempt, FAIL if int(name[1:]) in failing else OK, now)
        running.extend(j for j in step.launch if j not in running)
        running = [j for j in running if run.jobs[j].status is JobStatus.RUNNING]
    assert run.finished
    assert all(job.status.finished for job in run.jobs.values())
    assert Counter(j.status.value for j in run.jobs.values()) == Counter(run.workflow.counts)
    assert len(ran) == len(set(ran))


def test_an_attempt_lost_to_the_infrastructure_runs_again_without_using_a_retry() -> None:
    run = make_run({"a": []}, retries={"a": 0})
    assert run.start(0.0).launch == ["a"]
    again = run.job_finished("a", 1, Outcome(lost=True, message="stopped with the stack"), 1.0)
    assert again.launch == ["a"] and run.jobs["a"].attempt == 2
    assert [(at.number, at.status, at.message) for at in run.jobs["a"].attempts] == [
        (1, JobStatus.DEAD, "stopped with the stack")]
    last = run.job_finished("a", 2, FAIL, 2.0)  # its own failure: no retries left
    assert last.workflow is not None and last.workflow.status is WorkflowStatus.FAILED


def test_a_paused_run_launches_nothing_more_but_records_ends() -> None:
    run = make_run({"a": ["b"], "b": []})
    run.start(0.0)
    run.pause()
    step = run.job_finished("a", 1, OK, 1.0)
    assert step.launch == [] and run.jobs["a"].status is JobStatus.SUCCEEDED
    assert run.jobs["b"].status is JobStatus.QUEUED


def _failed_diamond() -> Run:
    """DIAMOND plus a lone `e`: b fails, so d is skipped; a, c and e succeed."""
    run = make_run({**DIAMOND, "e": []}, parallelism=4)
    drive(run, run.start(0.0), {"b": [FAIL]})
    return run


@pytest.mark.parametrize(("only", "restart_successful", "reset"), [
    ((), False, {"b", "d"}),
    ((), True, {"a", "b", "c", "d", "e"}),
    (("b",), False, {"b", "d"}),
    (("c",), False, {"d"}),
    (("c",), True, {"c", "d"}),
    (("a",), True, {"a", "b", "c", "d"}),
    (("e",), False, set()),
    (("e", "d"), True, {"e", "d"}),
])
def test_retry_resets_the_chosen_jobs_and_their_descendants(only: tuple[str, ...], restart_successful: bool,
                                                            reset: set[str]) -> None:
    run = _failed_diamond()
    selected = retry_selection(run.definition, only) if only else None
    queued, changed = prepare_retry(run.workflow, run.jobs, 100.0, selected, restart_successful)
    assert set(changed) == reset
    assert all(job.status is JobStatus.WAITING and job.round_start == run.jobs[name].attempt
               for name, job in changed.items())
    assert sum(queued.counts.values()) == 5 and queued.counts.get("waiting", 0) == len(reset)


def test_retry_selection_names_every_unknown_job() -> None:
    with pytest.raises(InvalidArgument) as refused:
        retry_selection(make_run(DIAMOND).definition, ["a", "zz", "b", "yy"])
    assert [(p.place, p.message) for p in refused.value.problems] == [
        ("jobs[1]", "the workflow has no job 'zz'"), ("jobs[3]", "the workflow has no job 'yy'")]


def test_a_restarted_successful_job_runs_again_and_its_descendants_after_it() -> None:
    run = make_run(CHAIN)
    drive(run, run.start(0.0), {})
    queued, changed = prepare_retry(run.workflow, run.jobs, 100.0, retry_selection(run.definition, ["b"]), True)
    again = make_run(CHAIN, jobs={**run.jobs, **changed}, workflow=queued)
    first = again.start(101.0)
    assert first.launch == ["b"]
    drive(again, first, {})
    assert again.workflow.status is WorkflowStatus.DONE
    assert [again.jobs[name].attempt for name in "abc"] == [1, 2, 2]
