"""Helpers shared by the tests of the pure core: job builders and the problems a definition is refused with."""

from __future__ import annotations

from typing import Any

import pytest

from dagger_svc.core.definition import parse_definition, validate_document
from donut_common.errors import InvalidArgument


def job(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": "img", "cmd": "/run", "args": [], **fields}


def problems(source: object) -> list[tuple[str, str]]:
    """The (place, message) pairs a definition is refused with; fails if it is accepted."""
    with pytest.raises(InvalidArgument) as caught:
        if isinstance(source, (str, bytes)):
            parse_definition(source)
        else:
            validate_document(source)
    assert caught.value.problems, "InvalidArgument without problems"
    return [(p.place, p.message) for p in caught.value.problems]


def only_problem(source: object) -> tuple[str, str]:
    found = problems(source)
    assert len(found) == 1, found
    return found[0]


def chain(n: int) -> dict[str, Any]:
    return {
        "jobs": [job(f"job-{i}", args=[str(i)]) for i in range(n)],
        "neighbors": {f"job-{i}": [f"job-{i + 1}"] for i in range(n - 1)},
    }


def chain_with_edges(names: str, edges: dict[str, list[str]]) -> dict[str, Any]:
    return {"jobs": [job(name) for name in names.split()], "neighbors": edges}
