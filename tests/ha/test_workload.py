"""The evidence the fault-injection tests read: marked jobs leave it complete on a real
stack, and the checks find each way a run can go wrong."""

from __future__ import annotations

from typing import Any

from donut.dagger.v1 import dagger_pb2 as pb
from tests.dagger.conftest import Driver
from tests.ha.workload import Attempt, Marks, chains_and_fan_ins, check_run, expected_lines


def test_marked_jobs_leave_their_marks_and_lines(stack: Any) -> None:
    driver = Driver(stack)
    definition = chains_and_fan_ins(pause=0.01)
    workflow_id = driver.submit(definition["jobs"], definition["neighbors"])
    assert driver.wait(workflow_id).status == pb.WORKFLOW_STATUS_DONE
    jobs = driver.jobs(workflow_id)
    marks = Marks.read(driver.workdir(workflow_id))
    assert len(jobs) == 20 and set(marks.attempts) == {(name, 1) for name in jobs}
    assert check_run(workflow_id, marks, jobs) == []
    assert all(a.replica_pid > 0 and a.start is not None and a.end is not None for a in marks.attempts.values())
    lines = [line.text for m in driver.stub.TailLogs(pb.TailLogsRequest(workflow_id=workflow_id, job="join",
                                                                         attempt=1))
             for line in m.lines if line.stream == pb.LOG_STREAM_STDOUT]
    assert lines == expected_lines("join", 1)
    driver.close()


def job(*attempts: tuple[int, str]) -> dict[str, pb.Job]:
    status = getattr(pb, f"JOB_STATUS_{attempts[-1][1].upper()}")
    return {"a": pb.Job(name="a", status=status, attempt=attempts[-1][0], attempts=[
        pb.Attempt(number=n, status=getattr(pb, f"JOB_STATUS_{s.upper()}")) for n, s in attempts])}


def marks(*attempts: tuple[int, int | None, int | None], overlaps: int = 0, twice: int = 0) -> Marks:
    found = Marks({("a", n): Attempt(start, end, 1 + (n == twice), 1) for n, start, end in attempts})
    found.overlaps = ["OVERLAP a 2"] * overlaps
    return found


def test_a_clean_run_with_a_lost_attempt_passes() -> None:
    assert check_run("w", marks((1, 10, 20), (2, 30, 40)), job((1, "dead"), (2, "succeeded"))) == []
    assert check_run("w", marks((1, 10, None), (2, 30, 40)), job((1, "dead"), (2, "succeeded"))) == []


def test_the_checks_find_what_went_wrong() -> None:
    def problems(m: Marks, j: dict[str, pb.Job]) -> str:
        found = check_run("w", m, j)
        assert len(found) == 1, found
        return found[0]

    assert "OVERLAP" in problems(marks((1, 10, 20), overlaps=1), job((1, "succeeded")))
    assert "overlapped in time" in problems(marks((1, 10, 35), (2, 30, 40)), job((1, "dead"), (2, "succeeded")))
    assert "started 2 times" in problems(marks((1, 10, 20), twice=1), job((1, "succeeded")))
    assert "not recorded" in problems(marks((1, 10, 20), (2, 30, 40)), job((1, "succeeded")))
    assert "recorded failed" in problems(marks((1, 10, 20), (2, 30, 40)), job((1, "failed"), (2, "succeeded")))
    assert "left marks" in problems(marks((1, 10, None)), job((1, "succeeded")))
    assert "recorded failed attempt 1" in problems(marks((1, 10, 20)), job((1, "failed")))
    assert "attempts" in problems(marks((1, 10, 20), (2, 30, 40)), job((1, "succeeded"), (2, "succeeded")))
