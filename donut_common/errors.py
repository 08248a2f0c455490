"""Domain errors shared by every service, each bound to the gRPC status it becomes.

Services raise these; `donut_common.rpc.translate_errors` turns them into statuses in one place,
and clients turn statuses back into one-line messages.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request, named by its place (e.g. `jobs[2].args`)."""

    place: str
    message: str

    def __str__(self) -> str:
        return f"{self.place}: {self.message}" if self.place else self.message


class DonutError(Exception):
    """Base of the errors users see; `code_name` is the grpc.StatusCode member it maps to."""

    code_name = "INTERNAL"


class InvalidArgument(DonutError):
    code_name = "INVALID_ARGUMENT"

    def __init__(self, problems: list[Problem] | str) -> None:
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class NotFound(DonutError):
    code_name = "NOT_FOUND"


class FailedPrecondition(DonutError):
    code_name = "FAILED_PRECONDITION"


class PermissionDenied(DonutError):
    code_name = "PERMISSION_DENIED"


class Unauthenticated(DonutError):
    code_name = "UNAUTHENTICATED"


class Conflict(DonutError):
    """A guarded write lost a race; the caller re-reads and tries again."""

    code_name = "ABORTED"


class Unavailable(DonutError):
    code_name = "UNAVAILABLE"


class ResourceExhausted(DonutError):
    """A limit on what a caller may hold at once was reached; ending something frees it."""

    code_name = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(DonutError):
    code_name = "DEADLINE_EXCEEDED"
