"""Tests of dagger_svc.core.documents: definition text (size, UTF-8, JSON or YAML) loaded as plain data."""

from __future__ import annotations

import json

import pytest

from dagger_svc.core.definition import JobSpec, parse_definition
from dagger_svc.core.limits import MAX_DEFINITION_BYTES
from tests.core.conftest import job, only_problem, problems

# ---------------------------------------------------------------------- size and encoding


def test_too_large_text_is_refused_first() -> None:
    text = "jobs: []\n" + "#" * MAX_DEFINITION_BYTES
    size = len(text.encode())
    expected = ("definition", f"too large ({size} bytes; the limit is 4 MiB)")
    assert only_problem(text) == expected
    assert only_problem(text.encode()) == expected
    # Measured in UTF-8 bytes, and before anything else (even bad UTF-8).
    wide = "é" * (MAX_DEFINITION_BYTES // 2 + 1)
    assert only_problem(wide)[1].startswith(f"too large ({MAX_DEFINITION_BYTES + 2} bytes")
    assert only_problem(b"\xff" * (MAX_DEFINITION_BYTES + 1))[1].startswith("too large")


def test_exactly_the_limit_is_not_too_large() -> None:
    head = json.dumps({"jobs": [job("a")]})
    text = head + " " * (MAX_DEFINITION_BYTES - len(head))
    assert list(parse_definition(text).jobs) == ["a"]


@pytest.mark.parametrize("data", [b"jobs: \xff\xfe", b"\xc3\x28", b"jobs:\n- name: caf\xe9"])
def test_bytes_that_are_not_utf8(data: bytes) -> None:
    place, message = only_problem(data)
    assert place == "definition" and "not valid UTF-8" in message


def test_str_with_lone_surrogate() -> None:
    place, message = only_problem("jobs: \ud800")
    assert place == "definition" and "not valid UTF-8" in message


def test_utf8_bom_and_non_ascii_are_fine() -> None:
    text = "\ufeffjobs:\n- {name: a, image: i, cmd: c, args: [café, 日本]}\n"
    assert parse_definition(text.encode()).jobs["a"].args == ("café", "日本")
    assert parse_definition("\ufeff" + json.dumps({"jobs": [job("a")]})).jobs["a"].name == "a"


# ---------------------------------------------------------------------- syntax errors


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("jobs: [a, b", "not valid YAML"),
        ("jobs:\n  - a\n - b\n", "not valid YAML"),
        ("jobs: *nowhere", "undefined alias"),
        ("a: 1\n---\nb: 2\n", "single document"),
        ("jobs: !!python/object/apply:os.system [ls]", "unsupported tag"),
        ("jobs: !!set {a, b}", "unsupported tag"),
        ("jobs: !custom x", "unsupported tag"),
        ("? [a]\n: b\n", "list or mapping"),
        ("jobs: 2020-13-45", "not valid YAML"),
        ("jobs: " + "9" * 5000, "not valid YAML"),
        ("jobs: {<<: 3}", "merging"),
        ("jobs:\n\t- a", "not valid YAML"),
        ("a: \x07", "not valid YAML"),
    ],
)
def test_bad_yaml(text: str, fragment: str) -> None:
    place, message = only_problem(text)
    assert place == "definition" and message.startswith("not valid YAML") and fragment in message


def test_bad_yaml_names_line_and_column() -> None:
    place, message = only_problem("jobs:\n- name: a\n  args: [x\n")
    assert place == "definition" and "(line " in message and "column " in message


@pytest.mark.parametrize(
    "text",
    [
        '{"jobs": [',
        '{"jobs": []',
        "{'jobs': []}",
        '{"jobs": [1,]}',
        '{"jobs": 1} trailing',
        '{"jobs": ' + "9" * 5000 + "}",
        '{"jobs": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
)
def test_bad_json(text: str) -> None:
    place, message = only_problem(text)
    assert place == "definition" and message.startswith("not valid JSON")


def test_bad_json_names_line_and_column() -> None:
    assert only_problem('{\n  "jobs": [,]\n}') == (
        "definition",
        "not valid JSON: Expecting value (line 2, column 12)",
    )


# ---------------------------------------------------------------------- YAML features and limits


def test_yaml_merge_keys_and_aliases() -> None:
    text = """\
base: &base {image: timer:mine, cmd: /timer.py, args: [1s]}
jobs:
- {<<: *base, name: a}
- {<<: *base, name: b, args: [2s]}
"""
    # "base" is an unknown top-level field: merge keys work, the extra key is still reported.
    assert problems(text) == [("base", "unknown field (expected jobs, neighbors, kubernetes)")]
    text = """\
jobs:
- &a {name: a, image: timer:mine, cmd: /timer.py, args: &args [1s]}
- {<<: *a, name: b, args: *args}
- {<<: [{name: c, cmd: /x}, *a], retries: 1}
"""
    definition = parse_definition(text)
    assert definition.jobs["b"] == JobSpec("b", "timer:mine", "/timer.py", ("1s",))
    assert definition.jobs["c"] == JobSpec("c", "timer:mine", "/x", ("1s",), retries=1)


def test_yaml_implicit_types_follow_safe_loader() -> None:
    text = "jobs:\n- {name: a, image: i, cmd: c, args: [x], timeout: 1.5e+3, retries: 0x10}\n"
    spec = parse_definition(text).jobs["a"]
    assert spec.timeout == 1500.0 and spec.retries == 16
    assert parse_definition("jobs:\n- {name: a, image: i, cmd: c, args: ['1', \"yes\"]}").jobs[
        "a"
    ].args == ("1", "yes")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 1_000_000 + "]" * 1_000_000,
        "x: " + "{a: " * 200_000 + "1" + "}" * 200_000,
        "- " * 1_000_000 + "x",
        "jobs:\n" + "".join(" " * i + "- \n" for i in range(0, 400, 2)),
    ],
    ids=["flow sequences", "flow mappings", "block sequences", "indented"],
)
def test_deep_yaml_nesting_is_refused_quickly(text: str) -> None:
    place, message = only_problem(text)
    assert place == "definition" and "nested more than" in message


def test_recursive_yaml_aliases_do_not_crash() -> None:
    assert only_problem("&a [*a]")[0] == "definition"
    found = problems("a: &a [*a]\njobs: *a")
    assert found == [("a", "unknown field (expected jobs, neighbors, kubernetes)"), ("jobs[0]", "must be a mapping")]
    found = problems("jobs:\n- &j {name: a, image: i, cmd: c, args: &s [x, *s], me: *j}")
    assert found == [("jobs[0].me", "unknown field"), ("jobs[0].args[1]", "must be a string, not a list")]
    # A mapping merged into itself: nothing new to merge, and no hang.
    merged = parse_definition("jobs:\n- &j {name: a, image: i, cmd: c, args: [], <<: *j}")
    assert merged.jobs["a"] == JobSpec("a", "i", "c", ())


def test_load_document_takes_text_only() -> None:
    from dagger_svc.core.documents import load_document
    from donut_common.errors import InvalidArgument

    for not_text in (12, None, ["jobs"]):
        try:
            load_document(not_text)  # type: ignore[arg-type]
            raise AssertionError(f"{not_text!r} was loaded")
        except InvalidArgument as e:
            assert [str(p) for p in e.problems] == ["definition: must be text (str or bytes)"]
