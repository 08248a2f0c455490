"""Scheduling through the real stack: etcd, the gRPC server, the scheduler, processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from donut.dagger.v1 import dagger_pb2 as pb
from tests.dagger.conftest import Driver, job_processes, sh, status_name

TIMED = 'echo "$(date +%s.%N) $(sleep 0.15; date +%s.%N)" > "$DONUT_WORKFLOW_DIR/times.$DONUT_JOB_NAME"'


def max_overlap(workdir: Path) -> int:
    spans = [tuple(map(float, f.read_text().split())) for f in workdir.glob("times.*")]
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("parallelism", [1, 2, 8])
def test_parallelism_is_never_exceeded(driver: Driver, parallelism: int) -> None:
    jobs = [sh(TIMED, f"j{i}") for i in range(12)]
    workflow_id = driver.submit(jobs, parallelism=parallelism)
    w = driver.wait(workflow_id)
    assert w.status == pb.WORKFLOW_STATUS_DONE
    assert len(list(driver.workdir(workflow_id).glob("times.*"))) == 12
    assert max_overlap(driver.workdir(workflow_id)) <= parallelism
    if parallelism > 1:
        assert max_overlap(driver.workdir(workflow_id)) > 1  # it did run jobs side by side


def test_a_failure_skips_descendants_and_the_independent_branch_goes_on(driver: Driver) -> None:
    jobs = [sh("true", "a"), sh("echo boom >&2; exit 3", "b"), sh("true", "c"), sh("true", "d"),
            sh("sleep 0.3", "other")]
    workflow_id = driver.submit(jobs, {"a": ["b", "c"], "b": ["d"], "c": ["d"]})
    w = driver.wait(workflow_id)
    status = {j.name: status_name(j.status) for j in w.jobs}
    assert status == {"a": "succeeded", "b": "failed", "c": "succeeded", "d": "skipped", "other": "succeeded"}
    assert w.status == pb.WORKFLOW_STATUS_FAILED
    b = driver.jobs(workflow_id)["b"]
    assert b.exit_code == 3 and b.message == "exited with code 3"


def test_fail_fast_stops_the_other_branches(driver: Driver) -> None:
    jobs = [sh("exit 1", "bad"), sh("sleep 30", "slow"), sh("true", "after")]
    workflow_id = driver.submit(jobs, {"slow": ["after"]}, parallelism=2, fail_fast=True)
    w = driver.wait(workflow_id, timeout=20)
    status = {j.name: status_name(j.status) for j in w.jobs}
    assert status == {"bad": "failed", "slow": "terminated", "after": "skipped"}
    assert not job_processes(workflow_id)


def test_cancel_mid_run_leaves_no_process(driver: Driver) -> None:
    # The job leaves a background child too: cancel must reach the whole process group.
    jobs = [sh("sleep 60 & sleep 60", "long"), sh("true", "next")]
    workflow_id = driver.submit(jobs, {"long": ["next"]})
    driver.wait_until(workflow_id, lambda w: any(j.status == pb.JOB_STATUS_RUNNING for j in w.jobs))
    deadline = time.time() + 10
    while len(job_processes(workflow_id)) < 3 and time.time() < deadline:  # sh and two sleeps
        time.sleep(0.05)
    assert len(job_processes(workflow_id)) >= 2
    driver.stub.CancelWorkflow(pb.CancelWorkflowRequest(id=workflow_id))
    w = driver.wait(workflow_id, timeout=20)
    assert w.status == pb.WORKFLOW_STATUS_TERMINATED
    assert {status_name(j.status) for j in w.jobs} == {"terminated"}
    assert driver.jobs(workflow_id)["long"].attempts[0].signal == "SIGTERM"
    assert job_processes(workflow_id) == []


def test_retry_reruns_only_what_failed(driver: Driver) -> None:
    jobs = [
        sh("echo run >> a.runs", "a"),
        sh("test -f fixed || exit 4", "b"),
        sh("echo run >> c.runs", "c"),
        sh("true", "d"),
    ]
    workflow_id = driver.submit(jobs, {"a": ["b", "c"], "b": ["d"]})
    assert driver.wait(workflow_id).status == pb.WORKFLOW_STATUS_FAILED
    (driver.workdir(workflow_id) / "fixed").touch()
    driver.stub.RetryWorkflow(pb.RetryWorkflowRequest(id=workflow_id))
    w = driver.wait(workflow_id)
    assert w.status == pb.WORKFLOW_STATUS_DONE
    jobs_now = driver.jobs(workflow_id)
    assert {n: (status_name(j.status), j.attempt) for n, j in jobs_now.items()} == {
        "a": ("succeeded", 1), "b": ("succeeded", 2), "c": ("succeeded", 1), "d": ("succeeded", 1)}
    assert [status_name(a.status) for a in jobs_now["b"].attempts] == ["failed", "succeeded"]
    assert (driver.workdir(workflow_id) / "a.runs").read_text() == "run\n"
    assert (driver.workdir(workflow_id) / "c.runs").read_text() == "run\n"


def test_retries_and_timeout_fields(driver: Driver) -> None:
    jobs = [
        {**sh('[ "$DONUT_JOB_ATTEMPT" = 2 ] || exit 1', "flaky"), "retries": 2},
        {**sh("sleep 30", "stuck"), "timeout": 0.5},
    ]
    workflow_id = driver.submit(jobs, parallelism=2)
    w = driver.wait(workflow_id, timeout=30)
    jobs_now = driver.jobs(workflow_id)
    assert status_name(jobs_now["flaky"].status) == "succeeded" and jobs_now["flaky"].attempt == 2
    stuck = jobs_now["stuck"]
    assert status_name(stuck.status) == "failed" and "timed out after 0.5s" in stuck.message
    assert w.status == pb.WORKFLOW_STATUS_FAILED
    assert job_processes(workflow_id) == []


def test_command_not_found_and_missing_input_fail_clearly(driver: Driver) -> None:
    jobs = [
        {"name": "nocmd", "image": "x", "cmd": "/no/such/command", "args": []},
        {**sh("true", "noinput"), "inputs": [{"local": "missing.txt"}]},
        {**sh("true", "nooutput"), "outputs": [{"local": "never.txt", "save": True}]},
    ]
    workflow_id = driver.submit(jobs, parallelism=3)
    driver.wait(workflow_id)
    jobs_now = driver.jobs(workflow_id)
    assert jobs_now["nocmd"].exit_code == 127 and "command not found: /no/such/command" in jobs_now["nocmd"].message
    assert "inputs[0] (missing.txt): missing" in jobs_now["noinput"].message
    assert "outputs[0] (never.txt): missing" in jobs_now["nooutput"].message
    assert {status_name(j.status) for j in jobs_now.values()} == {"failed"}


def test_a_2000_job_dag_validates_and_schedules(driver: Driver) -> None:
    width, depth = 40, 50
    jobs = [{"name": f"j{layer}-{i}", "image": "x", "cmd": "true", "args": []}
            for layer in range(depth) for i in range(width)]
    neighbors = {f"j{layer}-{i}": [f"j{layer + 1}-{i}"] for layer in range(depth - 1) for i in range(width)}
    workflow_id = driver.submit(jobs, neighbors, parallelism=8)
    w = driver.wait(workflow_id, timeout=300)
    assert w.status == pb.WORKFLOW_STATUS_DONE
    assert w.job_counts == {"succeeded": 2000} and w.job_total == 2000


def test_an_input_through_a_symlink_loop_fails_the_job_not_the_scheduler(driver: Driver) -> None:
    workflow_id = driver.submit([sh("ln -s loop loop", "plant"),
                                 {**sh("cat loop/x", "job"), "inputs": [{"local": "loop/x"}]}],
                                {"plant": ["job"]})
    w = driver.wait(workflow_id, timeout=30)
    job = driver.jobs(workflow_id)["job"]
    assert w.status == pb.WORKFLOW_STATUS_FAILED
    assert job.exit_code == 90 and "loop/x: cannot be resolved" in job.message
