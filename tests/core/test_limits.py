"""The limits of a submission that are more than a number: labels."""

from __future__ import annotations

import pytest

from dagger_svc.core.limits import MAX_LABELS, label_problems


@pytest.mark.parametrize("labels", [
    {}, {"team": "fruit"}, {"a": ""}, {"app.kubernetes.io/name": "x-1_2.3"}, {"k" * 63: "v" * 63},
    {f"k{i}": "v" for i in range(MAX_LABELS)},
])
def test_kubernetes_like_labels_are_accepted(labels: dict[str, str]) -> None:
    assert label_problems(labels) == []


@pytest.mark.parametrize(("key", "value"), [
    ("", "v"), ("-a", "v"), ("a-", "v"), ("a b", "v"), ("k" * 64, "v"), ("Bad.Prefix/a", "v"), ("/a", "v"),
    ("a/b/c", "v"), ("p/", "v"), ("a", "-v"), ("a", "v" * 64), ("a", "v w"), ("a", "é"),
])
def test_a_bad_label_is_named_by_its_key(key: str, value: str) -> None:
    problems = label_problems({key: value})
    assert [p.place for p in problems] == [f"labels[{key}]"]


def test_too_many_labels_are_refused() -> None:
    problems = label_problems({f"k{i}": "v" for i in range(MAX_LABELS + 1)})
    assert [p.place for p in problems] == ["labels"]
