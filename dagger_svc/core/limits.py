"""Every limit of a submission, in one place: the service enforces them, the CLI checks the
ones it can before it uploads anything, and the README quotes them."""

from __future__ import annotations

from typing import Final

from donut_common.errors import Problem

MAX_DEFINITION_BYTES: Final = 4 * 1024 * 1024
"""The largest definition text accepted, in UTF-8 bytes."""

MAX_JOBS: Final = 10_000
"""The most jobs one workflow may have."""

MAX_JOB_BYTES: Final = 1024 * 1024
"""The largest one job's spec may be as kept (JSON): one etcd value, and etcd takes no
request over 1.5 MiB."""

MAX_RETRIES: Final = 100
"""The most automatic retries a job may ask for."""

MAX_PARALLELISM: Final = 1000
"""The most jobs of one workflow that may run at once."""

MAX_NAME_LENGTH: Final = 200
"""The longest workflow name."""

MAX_LOG_BYTES: Final = 1024 ** 3
"""Where a job attempt's log is cut by default (`donut up --max-log-bytes`): a note says
so, and later lines are dropped."""


def name_problem(name: str) -> str:
    """What is wrong with a workflow name ("" if nothing)."""
    if len(name) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters"
    if not name.isprintable():
        return "must be one line of printable characters"
    return ""


def submission_problems(name: str, parallelism: int, zero_means: str) -> list[Problem]:
    """What is wrong with a submission's name and parallelism (0 stands for `zero_means`)."""
    problems = []
    if not 0 <= parallelism <= MAX_PARALLELISM:
        problems.append(Problem("parallelism", f"must be from 1 to {MAX_PARALLELISM} (0: {zero_means})"))
    if name_problem(name):
        problems.append(Problem("name", name_problem(name)))
    return problems
