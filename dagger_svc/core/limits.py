"""Limits of a submission besides its definition, shared by the service and the CLI (which
checks them before it uploads anything)."""

from __future__ import annotations

MAX_PARALLELISM = 1000
MAX_NAME_LENGTH = 200


def name_problem(name: str) -> str:
    """What is wrong with a workflow name ("" if nothing)."""
    if len(name) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters"
    if not name.isprintable():
        return "must be one line of printable characters"
    return ""
