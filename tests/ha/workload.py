"""Workflows whose jobs leave evidence of how they ran, and the checks that read it.

Each job's command takes an exclusive lock on a file of its own (`flock -n`): if another
attempt of the same job still holds it, the job writes an OVERLAP mark instead of running.
While it holds the lock it appends `start <job> <attempt> <ns> <replica pid>` and, at its end,
`end <job> <attempt> <ns> <replica pid>` to the workflow directory's `marks` file (the
time from `date +%s%N`; the pid is the job's parent, the replica that launched it), and in
between it prints numbered lines to stdout and sleeps a little."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from donut.dagger.v1 import dagger_pb2 as pb

LINES = 5  # numbered stdout lines per attempt

_MARK = 'echo "$1 $DONUT_JOB_NAME $DONUT_JOB_ATTEMPT $(date +%s%N) $REPLICA" >> marks'
_BODY = (f"mark() {{ {_MARK}; }}; mark start; "
         f'i=1; while [ $i -le {LINES} ]; do echo "line $i of $DONUT_JOB_NAME attempt $DONUT_JOB_ATTEMPT"; '
         'i=$((i+1)); done; sleep "$PAUSE"; mark end')


def marked_job(name: str, pause: float = 0.2) -> dict[str, Any]:
    """A job that runs under its own lock and marks its start and end (see the module)."""
    script = (f'REPLICA=$PPID PAUSE={pause} flock -n -E 99 "$DONUT_JOB_NAME.lock" sh -c \'{_BODY}\'; code=$?; '
              'if [ $code = 99 ]; then echo "OVERLAP $DONUT_JOB_NAME $DONUT_JOB_ATTEMPT" >> marks; fi; exit $code')
    return {"name": name, "image": "busybox", "cmd": "/bin/sh", "args": ["-c", script]}


def expected_lines(job: str, attempt: int) -> list[bytes]:
    return [f"line {i} of {job} attempt {attempt}".encode() for i in range(1, LINES + 1)]


def chains_and_fan_ins(pause: float = 0.2) -> dict[str, Any]:
    """20 jobs: root -> 4 chains of 4 -> join (fan-in) -> 2 leaves."""
    chains = [[f"c{c}-{i}" for i in range(4)] for c in range(4)]
    names = ["root", *(n for chain in chains for n in chain), "join", "leaf-a", "leaf-b"]
    neighbors: dict[str, list[str]] = {"root": [chain[0] for chain in chains], "join": ["leaf-a", "leaf-b"]}
    for chain in chains:
        for before, after in zip(chain, chain[1:], strict=False):
            neighbors[before] = [after]
        neighbors[chain[-1]] = ["join"]
    return {"jobs": [marked_job(n, pause) for n in names], "neighbors": neighbors}


@dataclass
class Attempt:
    start: int | None = None  # ns
    end: int | None = None
    starts: int = 0           # start marks: more than one, the attempt ran twice
    replica_pid: int = 0      # the process that launched it


@dataclass
class Marks:
    attempts: dict[tuple[str, int], Attempt] = field(default_factory=dict)
    overlaps: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, workdir: Path) -> Marks:
        marks = cls()
        path = workdir / "marks"
        text = path.read_text() if path.exists() else ""
        for line in text.split("\n")[:-1]:  # a line still being appended has no newline yet
            words = line.split()
            if words[0] == "OVERLAP":
                marks.overlaps.append(line)
                continue
            kind, job, attempt, ns, pid = words
            seen = marks.attempts.setdefault((job, int(attempt)), Attempt(replica_pid=int(pid)))
            if kind == "start":
                seen.start, seen.starts = int(ns), seen.starts + 1
            else:
                seen.end = int(ns)
        return marks

    def by_job(self) -> dict[str, dict[int, Attempt]]:
        jobs: dict[str, dict[int, Attempt]] = defaultdict(dict)
        for (job, number), attempt in self.attempts.items():
            jobs[job][number] = attempt
        return jobs


def status_name(value: int) -> str:
    return pb.JobStatus.Name(value).removeprefix("JOB_STATUS_").lower()


def check_run(workflow_id: str, marks: Marks, jobs: dict[str, pb.Job]) -> list[str]:
    """What went wrong in one finished workflow, judged by its marks and job records (empty:
    nothing). The guarantee checked is at most once per attempt: an attempt lost with its
    replica may have run to its end, and is then recorded `dead` and run again as a new one."""
    problems = [f"{workflow_id}: {o}" for o in marks.overlaps]
    by_job = marks.by_job()
    for name, job in jobs.items():
        where = f"{workflow_id}/{name}"
        ran = by_job.get(name, {})
        statuses = {a.number: status_name(a.status) for a in job.attempts}
        succeeded = [n for n, s in statuses.items() if s == "succeeded"]
        if status_name(job.status) != "succeeded" or succeeded != [job.attempt]:
            problems.append(f"{where}: recorded {status_name(job.status)} attempt {job.attempt}, attempts {statuses}")
            continue
        for number, attempt in ran.items():
            if attempt.starts > 1:
                problems.append(f"{where}: attempt {number} started {attempt.starts} times")
            if number not in statuses:
                problems.append(f"{where}: attempt {number} ran but is not recorded (attempts {statuses})")
            elif number != job.attempt and attempt.end is not None and statuses[number] != "dead":
                problems.append(f"{where}: attempt {number} ran to its end but is recorded {statuses[number]}")
        mine = ran.get(job.attempt)
        if mine is None or mine.start is None or mine.end is None:
            problems.append(f"{where}: the succeeded attempt {job.attempt} left marks {mine}")
        timed = sorted((a.start, a.end, n) for n, a in ran.items() if a.start is not None and a.end is not None)
        for (_, end, first), (start, _, second) in zip(timed, timed[1:], strict=False):
            if start < end:
                problems.append(f"{where}: attempts {first} and {second} overlapped in time")
    return problems
