"""Tests of dagger_svc.core.definition: the gate every workflow definition passes through."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagger_svc.core.definition import (
    NAME_PATTERN,
    Definition,
    InputSpec,
    JobSpec,
    OutputSpec,
    parse_definition,
    validate_document,
)
from dagger_svc.core.limits import MAX_DEFINITION_BYTES, MAX_JOBS
from donut_common.errors import InvalidArgument
from tests.core.conftest import chain, chain_with_edges, job, only_problem, problems

FRUIT_YAML = """\
jobs:
- name: apple
  image: timer:mine
  cmd: /timer.py
  args: [30s]
  workdir_prefix: apple
  inputs:
  - {origin: "http://example.com/f.zip", local: f.zip}
  - {cache: data.csv, local: data.csv}
  outputs:
  - {local: output.txt, save: true}
  retries: 2
  timeout: 30
- name: banana
  image: timer:mine
  cmd: /timer.py
  args: ["10s", "--flag"]
  workdir_prefix: banana
  inputs:
  - {local: ../apple/output.txt}
  outputs:
  - {local: output.txt}
- name: cantaloupe
  image: timer:mine
  cmd: /timer.py
  args: []
  timeout: 2.5
- name: dragonfruit
  image: timer:mine
  cmd: /timer.py
  args: [1s]
neighbors:
  apple: [banana, cantaloupe]
  banana: [dragonfruit]
  cantaloupe: [dragonfruit]
"""

FRUIT_CHILDREN = {
    "apple": ("banana", "cantaloupe"),
    "banana": ("dragonfruit",),
    "cantaloupe": ("dragonfruit",),
    "dragonfruit": (),
}
FRUIT_PARENTS = {
    "apple": (),
    "banana": ("apple",),
    "cantaloupe": ("apple",),
    "dragonfruit": ("banana", "cantaloupe"),
}


def fruit() -> dict[str, Any]:
    document = yaml.safe_load(FRUIT_YAML)
    assert isinstance(document, dict)
    return document


# ---------------------------------------------------------------------- valid definitions


def check_fruit(definition: Definition) -> None:
    assert list(definition.jobs) == ["apple", "banana", "cantaloupe", "dragonfruit"]
    assert definition.children == FRUIT_CHILDREN
    assert definition.parents == FRUIT_PARENTS
    apple = definition.jobs["apple"]
    assert apple == JobSpec(
        name="apple",
        image="timer:mine",
        cmd="/timer.py",
        args=("30s",),
        workdir_prefix="apple",
        inputs=(
            InputSpec(local="f.zip", origin="http://example.com/f.zip"),
            InputSpec(local="data.csv", cache="data.csv"),
        ),
        outputs=(OutputSpec(local="output.txt", save=True),),
        retries=2,
        timeout=30.0,
    )
    banana = definition.jobs["banana"]
    assert banana.args == ("10s", "--flag")
    assert banana.inputs == (InputSpec(local="../apple/output.txt"),)
    assert banana.outputs == (OutputSpec(local="output.txt", save=False),)
    assert banana.retries == 0 and banana.timeout is None
    assert definition.jobs["cantaloupe"].timeout == 2.5
    assert definition.jobs["dragonfruit"].workdir_prefix == ""


def test_fruit_dag_from_yaml() -> None:
    check_fruit(parse_definition(FRUIT_YAML))


def test_fruit_dag_from_yaml_bytes() -> None:
    check_fruit(parse_definition(FRUIT_YAML.encode()))


def test_fruit_dag_from_json() -> None:
    check_fruit(parse_definition(json.dumps(fruit(), indent=2)))
    check_fruit(parse_definition(b"  \n" + json.dumps(fruit()).encode()))


def test_fruit_dag_from_loaded_data() -> None:
    check_fruit(validate_document(fruit()))


def test_definition_to_dict_round_trips() -> None:
    definition = parse_definition(FRUIT_YAML)
    as_dict = definition.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict  # JSON-able
    assert parse_definition(json.dumps(as_dict)) == definition
    assert parse_definition(yaml.safe_dump(as_dict)) == definition
    assert validate_document(as_dict) == definition
    assert as_dict["neighbors"] == {k: list(v) for k, v in FRUIT_CHILDREN.items() if v}


def test_job_spec_to_dict_is_compact_and_round_trips() -> None:
    definition = parse_definition(FRUIT_YAML)
    for spec in definition.jobs.values():
        assert JobSpec.from_dict(spec.to_dict()) == spec
        assert JobSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert definition.jobs["dragonfruit"].to_dict() == {
        "name": "dragonfruit",
        "image": "timer:mine",
        "cmd": "/timer.py",
        "args": ["1s"],
    }
    assert definition.jobs["apple"].to_dict() == {
        "name": "apple",
        "image": "timer:mine",
        "cmd": "/timer.py",
        "args": ["30s"],
        "workdir_prefix": "apple",
        "inputs": [
            {"origin": "http://example.com/f.zip", "local": "f.zip"},
            {"cache": "data.csv", "local": "data.csv"},
        ],
        "outputs": [{"local": "output.txt", "save": True}],
        "retries": 2,
        "timeout": 30,
    }


def test_jobs_without_neighbors_have_empty_children_and_parents() -> None:
    definition = validate_document({"jobs": [job("a"), job("b")], "neighbors": None})
    assert definition.children == {"a": (), "b": ()}
    assert definition.parents == {"a": (), "b": ()}


def test_a_neighbor_listed_twice_is_refused() -> None:
    document = {"jobs": [job("a"), job("b"), job("c")], "neighbors": {"a": ["b", "c", "b"], "c": []}}
    assert only_problem(document) == ("neighbors.a", "lists 'b' more than once")


@pytest.mark.parametrize("text, place", [
    ("jobs:\n- {name: a, name: b, image: x, cmd: y, args: []}", "jobs[0].name"),
    ('{"jobs": [{"name": "a", "image": "x", "cmd": "y", "args": [], "args": ["q"]}]}', "jobs[0].args"),
    ("jobs:\n- {name: a, image: x, cmd: y, args: [], inputs: [{local: f, local: g}]}", "jobs[0].inputs[0].local"),
    ("jobs:\n- {name: a, image: x, cmd: y, args: [], outputs: [{local: f, save: true, save: false}]}",
     "jobs[0].outputs[0].save"),
    ("jobs:\n- {name: a, image: x, cmd: y, args: []}\n- {name: b, image: x, cmd: y, args: []}\n"
     "neighbors: {a: [b], a: []}", "neighbors.a"),
    ("jobs: []\njobs:\n- {name: a, image: x, cmd: y, args: []}", "jobs"),
])
def test_a_key_given_twice_is_refused_at_its_place(text: str, place: str) -> None:
    assert (place, "given more than once") in problems(text)


def test_a_key_merged_in_is_not_a_duplicate() -> None:
    definition = parse_definition("jobs:\n- &j {name: a, image: x, cmd: y, args: []}\n- {<<: *j, name: b}")
    assert list(definition.jobs) == ["a", "b"]


def test_optional_fields_may_be_null() -> None:
    spec = validate_document(
        {"jobs": [job("a", inputs=None, outputs=None, retries=None, timeout=None)]}
    ).jobs["a"]
    assert spec == JobSpec(name="a", image="img", cmd="/run", args=())


def test_paths_are_normalised() -> None:
    spec = validate_document(
        {
            "jobs": [
                job(
                    "a",
                    workdir_prefix="./x/../apple/",
                    inputs=[{"local": "./in//f.txt"}, {"cache": "up/./d.csv", "local": "d.csv"}],
                    outputs=[{"local": "out/"}],
                )
            ]
        }
    ).jobs["a"]
    assert spec.workdir_prefix == "apple"
    assert spec.inputs == (InputSpec(local="in/f.txt"), InputSpec(local="d.csv", cache="up/d.csv"))
    assert spec.outputs == (OutputSpec(local="out"),)
    dot = validate_document({"jobs": [job("a", workdir_prefix=".")]}).jobs["a"]
    assert dot.workdir_prefix == ""


@pytest.mark.parametrize(
    "name", ["a", "0", "apple", "a-b_c", "x" * 63, "9lives", "a1"]
)
def test_good_names(name: str) -> None:
    assert list(validate_document({"jobs": [job(name)]}).jobs) == [name]


# ---------------------------------------------------------------------- one problem at a time


def with_job_field(index: int, **fields: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        for key, value in fields.items():
            if value is _DROP:
                del document["jobs"][index][key]
            else:
                document["jobs"][index][key] = value

    return change


_DROP = object()

ERROR_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("unknown top-level field", lambda d: d.update(colour="red"), "colour",
     "unknown field (expected jobs, neighbors, kubernetes)"),
    ("jobs missing", lambda d: d.pop("jobs"), "jobs", "required"),
    ("jobs empty", lambda d: d.update(jobs=[]), "jobs", "must be a non-empty list"),
    ("jobs not a list", lambda d: d.update(jobs={"a": 1}), "jobs", "must be a non-empty list"),
    ("job not a mapping", lambda d: d["jobs"].append("kiwi"), "jobs[5]", "must be a mapping"),
    ("unknown job field", with_job_field(1, colour="red"), "jobs[1].colour", "unknown field"),
    ("name missing", with_job_field(4, name=_DROP), "jobs[4].name", "required"),
    ("name null", with_job_field(4, name=None), "jobs[4].name", "required"),
    ("name uppercase", with_job_field(4, name="Apple"), "jobs[4].name", f"must match {NAME_PATTERN}"),
    ("name too long", with_job_field(4, name="a" * 64), "jobs[4].name", "must match ^[a-z0-9]"),
    ("name ends with -", with_job_field(4, name="apple-"), "jobs[4].name", "must match"),
    ("name has dot", with_job_field(4, name="a.b"), "jobs[4].name", "must match"),
    ("name trailing newline", with_job_field(4, name="apple\n"), "jobs[4].name", "must match"),
    ("name not a string", with_job_field(4, name=7), "jobs[4].name", "must match"),
    ("duplicate name", with_job_field(4, name="apple"), "jobs[4].name", "duplicate job name 'apple' (also jobs[0])"),
    ("image missing", with_job_field(2, image=_DROP), "jobs[2].image", "required"),
    ("image empty", with_job_field(2, image=""), "jobs[2].image", "must be a non-empty string"),
    ("image not a string", with_job_field(2, image=["x"]), "jobs[2].image", "must be a non-empty string"),
    ("cmd missing", with_job_field(2, cmd=_DROP), "jobs[2].cmd", "required"),
    ("cmd with NUL", with_job_field(2, cmd="/a\x00b"), "jobs[2].cmd", "NUL"),
    ("args missing", with_job_field(2, args=_DROP), "jobs[2].args", "required"),
    ("args a string", with_job_field(2, args="30s"), "jobs[2].args", "must be a list of strings"),
    ("args with an int", with_job_field(2, args=["a", 30]), "jobs[2].args[1]", "must be a string, not 30"),
    ("args with null", with_job_field(2, args=[None]), "jobs[2].args[0]", "must be a string, not None"),
    ("arg with NUL", with_job_field(2, args=["ok", "a\x00"]), "jobs[2].args[1]", "NUL"),
    ("arg with lone surrogate", with_job_field(2, args=["\ud800"]), "jobs[2].args[0]", "surrogate"),
    ("prefix empty", with_job_field(0, workdir_prefix=""), "jobs[0].workdir_prefix", "non-empty relative path"),
    ("prefix not a string", with_job_field(0, workdir_prefix=3), "jobs[0].workdir_prefix", "non-empty relative path"),
    ("inputs not a list", with_job_field(0, inputs={"local": "x"}), "jobs[0].inputs", "must be a list"),
    ("input not a mapping", with_job_field(0, inputs=["x"]), "jobs[0].inputs[0]", "must be a mapping"),
    (
        "input unknown field",
        with_job_field(0, inputs=[{"local": "x", "size": 3}]),
        "jobs[0].inputs[0].size",
        "unknown field",
    ),
    (
        "input origin and cache",
        with_job_field(0, inputs=[{"local": "x"}, {"origin": "http://h/f", "cache": "f", "local": "f"}]),
        "jobs[0].inputs[1]",
        "give at most one of origin, cache",
    ),
    (
        "input local missing",
        with_job_field(0, inputs=[{"local": "x"}, {"cache": "f"}]),
        "jobs[0].inputs[1].local",
        "required",
    ),
    (
        "input origin ftp",
        with_job_field(0, inputs=[{"origin": "ftp://h/f", "local": "f"}]),
        "jobs[0].inputs[0].origin",
        "must be an http(s) URL",
    ),
    (
        "input origin no host",
        with_job_field(0, inputs=[{"origin": "http:///f", "local": "f"}]),
        "jobs[0].inputs[0].origin",
        "must be an http(s) URL",
    ),
    (
        "input origin not a URL",
        with_job_field(0, inputs=[{"origin": "example.com/f", "local": "f"}]),
        "jobs[0].inputs[0].origin",
        "must be an http(s) URL",
    ),
    (
        "input origin bad IPv6",
        with_job_field(0, inputs=[{"origin": "http://[::1/f", "local": "f"}]),
        "jobs[0].inputs[0].origin",
        "must be an http(s) URL",
    ),
    (
        "input origin with space",
        with_job_field(0, inputs=[{"origin": "http://h/a b", "local": "f"}]),
        "jobs[0].inputs[0].origin",
        "must be an http(s) URL",
    ),
    (
        "input origin not a string",
        with_job_field(0, inputs=[{"origin": 5, "local": "f"}]),
        "jobs[0].inputs[0].origin",
        "must be an http(s) URL",
    ),
    (
        "input cache absolute",
        with_job_field(0, inputs=[{"cache": "/etc/passwd", "local": "f"}]),
        "jobs[0].inputs[0].cache",
        "must be a relative path",
    ),
    (
        "input cache escapes",
        with_job_field(0, inputs=[{"cache": "../f", "local": "f"}]),
        "jobs[0].inputs[0].cache",
        "must stay inside the workflow directory",
    ),
    (
        "input cache empty",
        with_job_field(0, inputs=[{"cache": "", "local": "f"}]),
        "jobs[0].inputs[0].cache",
        "non-empty relative path",
    ),
    ("outputs not a list", with_job_field(0, outputs="out.txt"), "jobs[0].outputs", "must be a list"),
    ("output local missing", with_job_field(0, outputs=[{"save": True}]), "jobs[0].outputs[0].local", "required"),
    (
        "output unknown field",
        with_job_field(0, outputs=[{"local": "x", "keep": True}]),
        "jobs[0].outputs[0].keep",
        "unknown field",
    ),
    (
        "output save a string",
        with_job_field(0, outputs=[{"local": "x", "save": "yes"}]),
        "jobs[0].outputs[0].save",
        "must be true or false",
    ),
    (
        "output save an int",
        with_job_field(0, outputs=[{"local": "x", "save": 1}]),
        "jobs[0].outputs[0].save",
        "must be true or false",
    ),
    ("retries negative", with_job_field(0, retries=-1), "jobs[0].retries", "must be an integer from 0 to 100"),
    ("retries too many", with_job_field(0, retries=101), "jobs[0].retries", "must be an integer from 0 to 100"),
    ("retries a bool", with_job_field(0, retries=True), "jobs[0].retries", "must be an integer from 0 to 100"),
    ("retries a float", with_job_field(0, retries=2.0), "jobs[0].retries", "must be an integer from 0 to 100"),
    ("retries a string", with_job_field(0, retries="2"), "jobs[0].retries", "must be an integer from 0 to 100"),
    ("timeout zero", with_job_field(0, timeout=0), "jobs[0].timeout", "must be a number of seconds > 0"),
    ("timeout negative", with_job_field(0, timeout=-1.5), "jobs[0].timeout", "must be a number of seconds > 0"),
    ("timeout a bool", with_job_field(0, timeout=True), "jobs[0].timeout", "must be a number of seconds > 0"),
    ("timeout a string", with_job_field(0, timeout="30s"), "jobs[0].timeout", "must be a number of seconds > 0"),
    ("timeout infinite", with_job_field(0, timeout=float("inf")), "jobs[0].timeout", "must be a number of seconds > 0"),
    ("timeout NaN", with_job_field(0, timeout=float("nan")), "jobs[0].timeout", "must be a number of seconds > 0"),
    ("timeout huge int", with_job_field(0, timeout=10**400), "jobs[0].timeout", "must be a number of seconds > 0"),
    ("neighbors not a mapping", lambda d: d.update(neighbors=["apple"]), "neighbors", "must be a mapping"),
    ("neighbors unknown key", lambda d: d["neighbors"].update(kiwi=["apple"]), "neighbors.kiwi", "unknown job 'kiwi'"),
    (
        "neighbors value a string",
        lambda d: d["neighbors"].update(banana="dragonfruit"),
        "neighbors.banana",
        "must be a list of job names",
    ),
    (
        "neighbors value with an int",
        lambda d: d["neighbors"].update(banana=[1]),
        "neighbors.banana",
        "must be a list of job names",
    ),
    (
        "neighbors unknown entry",
        lambda d: d["neighbors"].update(banana=["dragonfruit", "kiwi"]),
        "neighbors.banana",
        "unknown job 'kiwi'",
    ),
    ("neighbors non-string key", lambda d: d["neighbors"].update({3: ["apple"]}), "neighbors", "unknown job 3"),
]


@pytest.mark.parametrize(
    ("change", "place", "fragment"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_each_error_is_reported_at_its_place(
    change: Callable[[dict[str, Any]], None], place: str, fragment: str
) -> None:
    document = fruit()
    document["jobs"].append(job("elderberry"))  # no neighbors: renaming it breaks nothing else
    change(document)
    found_place, message = only_problem(document)
    assert found_place == place
    assert fragment in message
    # The same document as JSON text gives the same problem, where JSON can say it.
    try:
        text = json.dumps(document, allow_nan=False)
    except (TypeError, ValueError):
        return
    if json.loads(text) == document:  # not when JSON turned an int key into a string
        assert problems(text) == [(found_place, message)]


def test_error_in_yaml_text_is_reported_at_its_place() -> None:
    text = FRUIT_YAML.replace("args: [30s]", "args: 30").replace("- name: banana", "- colour: red\n  name: banana")
    assert problems(text) == [
        ("jobs[0].args", "must be a list of strings"),
        ("jobs[1].colour", "unknown field"),
    ]
    assert problems("jobs:\n- {name: a, image: i, cmd: c, args: [1]}") == [
        ("jobs[0].args[0]", "must be a string, not 1")
    ]


def test_many_problems_are_reported_together_in_document_order() -> None:
    document = {
        "jobs": [
            job("apple", colour="red", args=["x", 1]),
            {"name": "Banana", "image": "", "args": []},
            job("apple", retries=-1, inputs=[{"local": "../../x"}]),
            "kiwi",
            job("cherry", outputs=[{"local": "o", "save": "no"}]),
            job("date"),
            job("elder"),
        ],
        "neighbors": {"apple": ["fig"], "date": ["elder"], "elder": ["date"]},
        "extra": 1,
    }
    assert problems(document) == [
        ("jobs[0].colour", "unknown field"),
        ("jobs[0].args[1]", "must be a string, not 1"),
        (
            "jobs[1].name",
            f"must match {NAME_PATTERN} (1 to 63 lowercase letters, digits, '-' or '_', "
            "starting and ending with a letter or digit)",
        ),
        ("jobs[1].image", "must be a non-empty string"),
        ("jobs[1].cmd", "required"),
        ("jobs[2].name", "duplicate job name 'apple' (also jobs[0])"),
        ("jobs[2].inputs[0].local", "must stay inside the workflow directory"),
        ("jobs[2].retries", "must be an integer from 0 to 100"),
        ("jobs[3]", "must be a mapping"),
        ("jobs[4].outputs[0].save", "must be true or false"),
        ("neighbors.apple", "unknown job 'fig'"),
        ("extra", "unknown field (expected jobs, neighbors, kubernetes)"),
        ("cycle", "date -> elder -> date"),
    ]


def test_invalid_names_do_not_also_make_neighbors_unknown() -> None:
    document = {"jobs": [job("Apple"), job("b")], "neighbors": {"Apple": ["b"], "b": ["Apple"]}}
    assert [place for place, _ in problems(document)] == ["jobs[0].name"]


def test_error_message_is_one_line_per_problem() -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_document({"jobs": [job("a", args=3), job("a")]})
    assert str(caught.value).splitlines() == [
        "jobs[0].args: must be a list of strings",
        "jobs[1].name: duplicate job name 'a' (also jobs[0])",
    ]


# ---------------------------------------------------------------------- cycles in a definition


def test_cycle_is_reported_with_other_problems() -> None:
    document = chain_with_edges("a b", {"a": ["b", "kiwi"], "b": ["a"]})
    assert problems(document) == [("neighbors.a", "unknown job 'kiwi'"), ("cycle", "a -> b -> a")]


def test_cycle_from_yaml_text() -> None:
    text = FRUIT_YAML + "  dragonfruit: [apple]\n"
    assert only_problem(text) == ("cycle", "apple -> banana -> dragonfruit -> apple")


# ---------------------------------------------------------------------- paths


PATH_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "local ../x without prefix",
        {"inputs": [{"local": "../x"}]},
        "jobs[0].inputs[0].local",
        "must stay inside the workflow directory",
    ),
    ("local /etc/passwd", {"inputs": [{"local": "/etc/passwd"}]}, "jobs[0].inputs[0].local", "must be a relative path"),
    (
        "local a/../../x",
        {"inputs": [{"local": "a/../../x"}]},
        "jobs[0].inputs[0].local",
        "must stay inside the workflow directory",
    ),
    (
        "local .. alone",
        {"outputs": [{"local": ".."}]},
        "jobs[0].outputs[0].local",
        "must stay inside the workflow directory",
    ),
    (
        "local escapes a prefix",
        {"workdir_prefix": "apple", "inputs": [{"local": "../../x"}]},
        "jobs[0].inputs[0].local",
        "must stay inside the workflow directory",
    ),
    (
        "local escapes a deep prefix",
        {"workdir_prefix": "a/b", "outputs": [{"local": "../../../x"}]},
        "jobs[0].outputs[0].local",
        "must stay inside the workflow directory",
    ),
    ("local is the work dir", {"outputs": [{"local": "."}]}, "jobs[0].outputs[0].local", "not the directory it is in"),
    (
        "local is the prefixed work dir",
        {"workdir_prefix": "apple", "inputs": [{"local": "../apple"}]},
        "jobs[0].inputs[0].local",
        "not the directory it is in",
    ),
    ("local with NUL", {"inputs": [{"local": "a\x00b"}]}, "jobs[0].inputs[0].local", "NUL"),
    ("local empty", {"inputs": [{"local": ""}]}, "jobs[0].inputs[0].local", "non-empty relative path"),
    ("prefix ..", {"workdir_prefix": ".."}, "jobs[0].workdir_prefix", "must stay inside the workflow directory"),
    ("prefix ../x", {"workdir_prefix": "../x"}, "jobs[0].workdir_prefix", "must stay inside the workflow directory"),
    (
        "prefix a/../../x",
        {"workdir_prefix": "a/../../x"},
        "jobs[0].workdir_prefix",
        "must stay inside the workflow directory",
    ),
    ("prefix absolute", {"workdir_prefix": "/tmp"}, "jobs[0].workdir_prefix", "must be a relative path"),
    (
        "cache ../x",
        {"inputs": [{"cache": "../x", "local": "x"}]},
        "jobs[0].inputs[0].cache",
        "must stay inside the workflow directory",
    ),
    (
        "cache is the upload root",
        {"inputs": [{"cache": "a/..", "local": "x"}]},
        "jobs[0].inputs[0].cache",
        "not the directory it is in",
    ),
    (
        "cache with a prefix still may not escape",
        {"workdir_prefix": "apple", "inputs": [{"cache": "../x", "local": "x"}]},
        "jobs[0].inputs[0].cache",
        "must stay inside the workflow directory",
    ),
]


@pytest.mark.parametrize(
    ("fields", "place", "fragment"), [c[1:] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES]
)
def test_paths_that_escape_are_refused(fields: dict[str, Any], place: str, fragment: str) -> None:
    found_place, message = only_problem({"jobs": [job("a", **fields)]})
    assert (found_place, fragment in message) == (place, True), message


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"workdir_prefix": "apple", "inputs": [{"local": "../banana/output.txt"}]}, "../banana/output.txt"),
        ({"workdir_prefix": "a/b", "inputs": [{"local": "../../c/x"}]}, "../../c/x"),
        ({"inputs": [{"local": "a/../b"}]}, "b"),
        ({"inputs": [{"local": "a/b/../../c"}]}, "c"),
        ({"workdir_prefix": "x/..", "inputs": [{"local": "f"}]}, "f"),
    ],
)
def test_dotdot_is_fine_while_it_stays_inside(fields: dict[str, Any], expected: str) -> None:
    spec = validate_document({"jobs": [job("a", **fields)]}).jobs["a"]
    assert spec.inputs[0].local == expected


def test_broken_prefix_is_reported_once() -> None:
    document = {"jobs": [job("a", workdir_prefix="/abs", inputs=[{"local": "../x"}])]}
    assert problems(document) == [
        ("jobs[0].workdir_prefix", "must be a relative path (inside the workflow directory)")
    ]


# ---------------------------------------------------------------------- the document as a whole


def test_too_many_jobs() -> None:
    document = {"jobs": [job(f"j{i}") for i in range(MAX_JOBS + 1)]}
    assert only_problem(document) == ("jobs", f"too many jobs ({MAX_JOBS + 1}; the limit is {MAX_JOBS})")
    assert only_problem(json.dumps(document)) == only_problem(document)


@pytest.mark.parametrize(
    "source", ["", "   \n", "# only a comment", "- a\n- b", "just text", "42", "[]", b"null", [1], None, 3.5]
)
def test_top_level_must_be_a_mapping(source: object) -> None:
    place, message = only_problem(source)
    assert place == "definition" and message.startswith("must be a mapping")


def test_not_text_at_all() -> None:
    assert only_problem(12)[0] == "definition"  # parse_definition is typed str | bytes; still safe


def test_alias_bomb_is_bounded() -> None:
    # One anchored list of 100,000 strings used as the args of 10,000 jobs: a billion-laughs
    # style expansion to a billion strings, which must be refused rather than built.
    text = (
        "x: &s [" + ",".join(["a"] * 100_000) + "]\n"
        "jobs: [" + ",".join(f"{{name: j{i}, image: i, cmd: c, args: *s}}" for i in range(10_000)) + "]\n"
    )
    assert len(text.encode()) < MAX_DEFINITION_BYTES
    found = problems(text)
    assert ("definition", "too large once YAML aliases are expanded") in found
    assert len(found) < 10


def test_problem_count_is_capped() -> None:
    document = {"jobs": [{"name": "A"} for _ in range(5000)]}
    found = problems(document)
    assert len(found) <= 1001
    assert found[-1][0] == "definition" and "too many problems" in found[-1][1]


# ---------------------------------------------------------------------- scale


def layered(n: int, width: int) -> dict[str, Any]:
    names = [f"job-{i}" for i in range(n)]
    neighbors: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        layer_start = (i // width + 1) * width
        neighbors[name] = names[layer_start : layer_start + width]
    return {"jobs": [job(name, workdir_prefix=name) for name in names], "neighbors": neighbors}


def as_yaml(document: dict[str, Any], flow: bool) -> str:
    """Big YAML quickly (PyYAML's dumper takes seconds): plain names, quoted arguments."""
    lines = ["jobs:"]
    for spec in document["jobs"]:
        if flow:
            fields = ", ".join(
                f"{key}: [{', '.join(json.dumps(arg) for arg in value)}]" if key == "args" else f"{key}: {value}"
                for key, value in spec.items()
            )
            lines.append(f"- {{{fields}}}")
            continue
        for number, (key, value) in enumerate(spec.items()):
            lead = "- " if number == 0 else "  "
            if key == "args" and not value:
                lines.append(f"{lead}args: []")
            elif key == "args":
                lines.append(f"{lead}args:")
                lines.extend(f"  - {json.dumps(arg)}" for arg in value)
            else:
                lines.append(f"{lead}{key}: {value}")
    lines.append("neighbors:")
    for name, kids in document["neighbors"].items():
        if flow or not kids:
            lines.append(f"  {name}: [{', '.join(kids)}]")
        else:
            lines.append(f"  {name}:")
            lines.extend(f"  - {kid}" for kid in kids)
    return "\n".join(lines) + "\n"


def test_as_yaml_helper_writes_what_pyyaml_reads() -> None:
    document = layered(30, 4)
    document["jobs"][0]["args"] = ["0", "yes", "a b"]
    assert yaml.safe_load(as_yaml(document, flow=False)) == document
    assert yaml.safe_load(as_yaml(document, flow=True)) == document


@pytest.mark.parametrize("form", ["json", "yaml block", "yaml flow"])
def test_ten_thousand_job_chain(form: str) -> None:
    document = chain(MAX_JOBS)
    text = json.dumps(document) if form == "json" else as_yaml(document, flow=form == "yaml flow")
    definition = parse_definition(text)
    assert len(definition.jobs) == MAX_JOBS
    assert definition.children["job-0"] == ("job-1",)
    assert definition.parents["job-9999"] == ("job-9998",)
    assert definition.children["job-9999"] == ()


@pytest.mark.parametrize("form", ["json", "yaml block", "yaml flow"])
def test_ten_thousand_job_layered_dag(form: str) -> None:
    document = layered(MAX_JOBS, 10)
    text = json.dumps(document) if form == "json" else as_yaml(document, flow=form == "yaml flow")
    definition = parse_definition(text)
    assert len(definition.jobs) == MAX_JOBS
    assert definition.children["job-0"] == tuple(f"job-{i}" for i in range(10, 20))
    assert definition.parents["job-15"] == tuple(f"job-{i}" for i in range(10))
    assert definition.parents["job-0"] == ()


# ---------------------------------------------------------------------- hypothesis

_FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["apple", "banana", "../x", "/abs", "http://h/f", "", ".", "a" * 70]),
)
_keys = st.one_of(
    st.sampled_from(
        ["jobs", "neighbors", "name", "image", "cmd", "args", "workdir_prefix", "inputs",
         "outputs", "retries", "timeout", "local", "origin", "cache", "save", "apple"]
    ),
    st.text(max_size=8),
    st.integers(),
    st.none(),
)
_json_like = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(_keys, children, max_size=6)
    ),
    max_leaves=30,
)


def refused_or_parsed(call: Callable[[], Definition]) -> None:
    try:
        definition = call()
    except InvalidArgument as error:
        assert error.problems
        assert all(isinstance(p.place, str) and isinstance(p.message, str) for p in error.problems)
        return
    assert isinstance(definition, Definition)
    assert set(definition.children) == set(definition.jobs) == set(definition.parents)
    # Whatever is accepted survives a round trip.
    assert validate_document(definition.to_dict()) == definition


_yamlish = st.text(
    alphabet=st.sampled_from(list("jobs:neighbr- \n\t[]{},'\"&*!<>|?#%@`~.0123456789ax\\") + ["\x00", "é"]),
    max_size=80,
)


@_FAST
@given(st.one_of(st.text(max_size=200), _yamlish, st.binary(max_size=200)))
def test_arbitrary_text_only_ever_raises_invalid_argument(text: str | bytes) -> None:
    refused_or_parsed(lambda: parse_definition(text))


@_FAST
@given(_json_like)
def test_arbitrary_data_only_ever_raises_invalid_argument(document: object) -> None:
    refused_or_parsed(lambda: validate_document(document))
    try:
        text = json.dumps(document)
    except (TypeError, ValueError):  # non-string keys, NaN are fine for validate_document only
        return
    refused_or_parsed(lambda: parse_definition(text))


_field_paths = st.sampled_from(
    [
        ("jobs",), ("neighbors",), ("neighbors", "apple"), ("neighbors", "banana"),
        *[("jobs", i, f) for i in range(4) for f in
          ("name", "image", "cmd", "args", "workdir_prefix", "inputs", "outputs", "retries", "timeout")],
        ("jobs", 0, "inputs", 0, "origin"), ("jobs", 0, "inputs", 1, "cache"),
        ("jobs", 0, "inputs", 0, "local"), ("jobs", 0, "outputs", 0, "save"),
        ("jobs", 1, "inputs", 0, "local"), ("jobs", 0, "args", 0),
    ]
)


@_FAST
@given(st.lists(st.tuples(_field_paths, st.booleans(), _json_like), min_size=1, max_size=4), st.booleans())
def test_mutated_valid_definitions_parse_or_are_refused(
    mutations: list[tuple[tuple[str | int, ...], bool, object]], as_yaml: bool
) -> None:
    document = copy.deepcopy(FRUIT_DOCUMENT)
    for path, drop, value in mutations:
        target: Any = document
        try:
            for step in path[:-1]:
                target = target[step]
            if drop:
                del target[path[-1]]
            else:
                target[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    refused_or_parsed(lambda: validate_document(document))
    try:
        text = yaml.safe_dump(document) if as_yaml else json.dumps(document)
    except (TypeError, ValueError, yaml.YAMLError):
        return
    refused_or_parsed(lambda: parse_definition(text))


FRUIT_DOCUMENT = fruit()


def test_a_job_too_large_to_keep_is_refused_at_its_place() -> None:
    from dagger_svc.core.limits import MAX_JOB_BYTES

    document = {"jobs": [job("small"), job("big", args=["x" * (MAX_JOB_BYTES // 2)] * 2 + ["é" * 10])]}
    place, message = only_problem(document)
    assert place == "jobs[1]" and message.startswith("too large (") and f"up to {MAX_JOB_BYTES}" in message
