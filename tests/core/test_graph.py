"""Tests of dagger_svc.core.graph.find_cycles, through the cycles a definition is refused with."""

from __future__ import annotations

import json

from dagger_svc.core.limits import MAX_JOBS
from tests.core.conftest import chain, chain_with_edges, only_problem, problems


def test_cycle_path_is_reported() -> None:
    document = chain_with_edges("z a b c", {"z": ["a"], "a": ["b"], "b": ["c"], "c": ["a"]})
    assert only_problem(document) == ("cycle", "a -> b -> c -> a")


def test_self_loop_is_a_cycle() -> None:
    assert only_problem(chain_with_edges("a b", {"a": ["b"], "b": ["b"]})) == ("cycle", "b -> b")


def test_every_separate_cycle_is_reported() -> None:
    document = chain_with_edges(
        "a b c d e f", {"a": ["b"], "b": ["a", "c"], "d": ["e"], "e": ["f"], "f": ["d"], "c": ["c"]}
    )
    assert problems(document) == [
        ("cycle", "a -> b -> a"),
        ("cycle", "c -> c"),
        ("cycle", "d -> e -> f -> d"),
    ]


def test_cycle_is_the_shortest_way_back_to_its_first_job() -> None:
    # a -> b -> c -> d -> a and a shortcut c -> a: one component, one (shortest) cycle.
    document = chain_with_edges("a b c d", {"a": ["b"], "b": ["c"], "c": ["d", "a"], "d": ["a"]})
    assert only_problem(document) == ("cycle", "a -> b -> c -> a")


def test_ten_thousand_job_cycle_is_reported_without_recursion_error() -> None:
    document = chain(MAX_JOBS)
    document["neighbors"][f"job-{MAX_JOBS - 1}"] = ["job-0"]
    place, message = only_problem(json.dumps(document))
    assert place == "cycle"
    path = message.split(" -> ")  # shown shortened: 9 jobs, what is left out, the last 3
    assert path[:3] == ["job-0", "job-1", "job-2"] and path[-1] == "job-0"
    assert path[9] == f"... ({MAX_JOBS + 1 - 12} more)" and len(message) < 200


def test_find_cycles_directly_ignores_edges_to_unknown_jobs_and_follows_document_order() -> None:
    from dagger_svc.core.graph import find_cycles

    order = ["a", "b", "c", "d"]
    children = {"a": ("b", "ghost"), "b": ("c",), "c": ("b",), "d": ()}
    assert find_cycles(order, children) == [["b", "c", "b"]]
    assert find_cycles(["a", "b"], {"a": ("b",), "b": ()}) == []
    # each cycle starts at its first job in document order
    assert find_cycles(["x", "y"], {"x": ("y",), "y": ("x",)}) == [["x", "y", "x"]]
    assert find_cycles(["y", "x"], {"x": ("y",), "y": ("x",)}) == [["y", "x", "y"]]
