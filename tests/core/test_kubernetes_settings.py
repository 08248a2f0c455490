"""Tests of the `kubernetes:` pod settings a definition may give its jobs and its workflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagger_svc.core.definition import Definition, JobSpec, parse_definition, validate_document
from dagger_svc.core.kubernetes import FIELDS, definition_settings
from dagger_svc.core.limits import MAX_KUBERNETES_BYTES
from donut_common.errors import InvalidArgument
from tests.core.conftest import job, only_problem, problems

EVERYTHING = {
    "resources": {"requests": {"cpu": "500m", "memory": "1.5Gi"}, "limits": {"cpu": 2, "nvidia.com/gpu": 1}},
    "nodeSelector": {"kubernetes.io/arch": "amd64", "pool": "gpu"},
    "tolerations": [
        {"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"},
        {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
    ],
    "labels": {"team": "fruit", "example.com/cost-centre": "c-42"},
    "annotations": {"example.com/note": "anything at all: {} /", "plain": ""},
    "serviceAccountName": "fruit-runner",
    "imagePullSecrets": ["registry-a", "registry.b"],
    "env": {"ZEBRA": "z", "APPLE_COUNT": "3", "_x": ""},
}

EVERYTHING_NORMALIZED = {
    "resources": {"requests": {"cpu": "500m", "memory": "1.5Gi"}, "limits": {"cpu": "2", "nvidia.com/gpu": "1"}},
    "nodeSelector": {"kubernetes.io/arch": "amd64", "pool": "gpu"},
    "tolerations": [
        {"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"},
        {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
    ],
    "labels": {"team": "fruit", "example.com/cost-centre": "c-42"},
    "annotations": {"example.com/note": "anything at all: {} /", "plain": ""},
    "serviceAccountName": "fruit-runner",
    "imagePullSecrets": ["registry-a", "registry.b"],
    "env": [{"name": "APPLE_COUNT", "value": "3"}, {"name": "ZEBRA", "value": "z"}, {"name": "_x", "value": ""}],
}


def pods(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: spec.kubernetes for name, spec in validate_document(document).jobs.items()}


# ---------------------------------------------------------------------- accepted


def test_every_allowed_field_is_accepted_and_normalized() -> None:
    assert pods({"jobs": [job("a", kubernetes=EVERYTHING)]}) == {"a": EVERYTHING_NORMALIZED}
    assert pods({"kubernetes": EVERYTHING, "jobs": [job("a")]}) == {"a": EVERYTHING_NORMALIZED}


def test_without_settings_a_job_has_none() -> None:
    spec = validate_document({"jobs": [job("a")]}).jobs["a"]
    assert spec.kubernetes == {} and spec.kubernetes_json == ""
    assert "kubernetes" not in spec.to_dict()


@pytest.mark.parametrize(("amount", "kept"), [
    ("500m", "500m"), ("2", "2"), (2, "2"), (1.5, "1.5"), ("1.5", "1.5"), ("4Gi", "4Gi"), ("128974848", "128974848"),
    ("129e6", "129e6"), ("123Mi", "123Mi"), ("0.5", "0.5"), (".5", ".5"), ("1k", "1k"), (0, "0"),
])
def test_quantities(amount: object, kept: str) -> None:
    settings_ = {"resources": {"limits": {"memory": amount}}}
    assert pods({"jobs": [job("a", kubernetes=settings_)]})["a"] == {"resources": {"limits": {"memory": kept}}}


def test_empty_settings_leave_nothing() -> None:
    empty = {"resources": {"requests": {}}, "nodeSelector": {}, "tolerations": [], "labels": {},
             "annotations": {}, "imagePullSecrets": [], "env": {}}
    assert pods({"jobs": [job("a", kubernetes=empty), job("b", kubernetes={})]}) == {"a": {}, "b": {}}
    assert validate_document({"jobs": [job("a", kubernetes=empty)]}).jobs["a"].kubernetes_json == ""


def test_settings_may_be_null() -> None:
    assert pods({"kubernetes": None, "jobs": [job("a", kubernetes=None)]}) == {"a": {}}


def test_from_yaml_text() -> None:
    text = """\
kubernetes:
  nodeSelector: {pool: cpu}
  env: {MODE: fast}
jobs:
- {name: a, image: i, cmd: c, args: []}
- name: b
  image: i
  cmd: c
  args: []
  kubernetes:
    resources: {limits: {memory: 4Gi}}
    env: {MODE: slow}
"""
    specs = parse_definition(text).jobs
    assert specs["a"].kubernetes == {"nodeSelector": {"pool": "cpu"}, "env": [{"name": "MODE", "value": "fast"}]}
    assert specs["b"].kubernetes == {"resources": {"limits": {"memory": "4Gi"}}, "nodeSelector": {"pool": "cpu"},
                                     "env": [{"name": "MODE", "value": "slow"}]}


# ---------------------------------------------------------------------- merging


def test_a_job_is_merged_over_its_workflow() -> None:
    workflow = {
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "nodeSelector": {"pool": "cpu", "zone": "a"},
        "tolerations": [{"key": "spot", "operator": "Exists"}],
        "labels": {"team": "fruit", "tier": "batch"},
        "annotations": {"note": "workflow"},
        "serviceAccountName": "workflow-account",
        "imagePullSecrets": ["workflow-secret"],
        "env": {"MODE": "fast", "LEVEL": "1"},
    }
    own = {
        "resources": {"requests": {"cpu": "4"}, "limits": {"nvidia.com/gpu": "1"}},
        "nodeSelector": {"pool": "gpu"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "labels": {"tier": "urgent"},
        "serviceAccountName": "job-account",
        "imagePullSecrets": ["job-secret"],
        "env": {"MODE": "slow"},
    }
    found = pods({"kubernetes": workflow, "jobs": [job("a", kubernetes=own), job("b")]})
    assert found["a"] == {
        "resources": {"requests": {"cpu": "4", "memory": "1Gi"}, "limits": {"memory": "2Gi", "nvidia.com/gpu": "1"}},
        "nodeSelector": {"pool": "gpu", "zone": "a"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "labels": {"team": "fruit", "tier": "urgent"},
        "annotations": {"note": "workflow"},
        "serviceAccountName": "job-account",
        "imagePullSecrets": ["job-secret"],
        "env": [{"name": "LEVEL", "value": "1"}, {"name": "MODE", "value": "slow"}],
    }
    assert found["b"]["serviceAccountName"] == "workflow-account"
    assert found["b"]["tolerations"] == [{"key": "spot", "operator": "Exists"}]


def test_an_empty_list_on_a_job_clears_the_workflows() -> None:
    workflow = {"tolerations": [{"key": "spot", "operator": "Exists"}], "imagePullSecrets": ["s"]}
    found = pods({"kubernetes": workflow, "jobs": [job("a", kubernetes={"tolerations": [], "imagePullSecrets": []})]})
    assert found == {"a": {}}


def test_resources_only_on_the_workflow_or_only_on_the_job() -> None:
    found = pods({"kubernetes": {"resources": {"limits": {"cpu": "1"}}},
                  "jobs": [job("a", kubernetes={"resources": {"requests": {"cpu": "1"}}})]})
    assert found["a"] == {"resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}}


# ---------------------------------------------------------------------- refused

BAD = [
    ("unknown key", {"hostNetwork": True}, "kubernetes.hostNetwork",
     "not allowed (allowed: resources, nodeSelector, tolerations, labels, annotations, serviceAccountName, "
     "imagePullSecrets, env)"),
    ("not a mapping", ["resources"], "kubernetes", "must be a mapping of resources, nodeSelector"),
    ("resources not a mapping", {"resources": "big"}, "kubernetes.resources", "must be a mapping"),
    ("unknown resource kind", {"resources": {"claims": {}}}, "kubernetes.resources.claims",
     "not allowed (allowed: requests, limits)"),
    ("requests not a mapping", {"resources": {"requests": ["cpu"]}}, "kubernetes.resources.requests",
     "must be a mapping of resource"),
    ("unknown resource", {"resources": {"limits": {"ephemeral-storage": "1Gi"}}}, "kubernetes.resources.limits",
     "unknown resource 'ephemeral-storage' (allowed: cpu, memory, nvidia.com/gpu)"),
    ("bad quantity", {"resources": {"requests": {"memory": "4 GB"}}}, "kubernetes.resources.requests[memory]",
     "must be a Kubernetes quantity such as 500m, 2, 1.5 or 4Gi, not '4 GB'"),
    ("negative quantity", {"resources": {"requests": {"cpu": -1}}}, "kubernetes.resources.requests[cpu]",
     "not -1"),
    ("boolean quantity", {"resources": {"requests": {"cpu": True}}}, "kubernetes.resources.requests[cpu]",
     "not True"),
    ("infinite quantity", {"resources": {"requests": {"cpu": float("inf")}}}, "kubernetes.resources.requests[cpu]",
     "quantity"),
    ("fractional gpu", {"resources": {"limits": {"nvidia.com/gpu": "0.5"}}},
     "kubernetes.resources.limits[nvidia.com/gpu]", "must be a whole number of GPUs"),
    ("node selector not a mapping", {"nodeSelector": "pool=gpu"}, "kubernetes.nodeSelector",
     "must be a mapping of strings to strings"),
    ("bad node selector key", {"nodeSelector": {"-pool": "gpu"}}, "kubernetes.nodeSelector[-pool]",
     "the key must be a name of up to 63"),
    ("bad node selector value", {"nodeSelector": {"pool": "g p u"}}, "kubernetes.nodeSelector[pool]",
     "the value must be empty or up to 63"),
    ("non-string node selector value", {"nodeSelector": {"gpus": 2}}, "kubernetes.nodeSelector[gpus]",
     "must be a string, not 2"),
    ("non-string label key", {"labels": {3: "x"}}, "kubernetes.labels", "keys must be strings, not 3"),
    ("bad label key", {"labels": {"a/b/c": "x"}}, "kubernetes.labels[a/b/c]", "the key must be"),
    ("label key too long", {"labels": {"a" * 64: "x"}}, f"kubernetes.labels[{'a' * 64}]", "the key must be"),
    ("bad label value", {"labels": {"team": "-fruit"}}, "kubernetes.labels[team]", "the value must be"),
    ("donut label", {"labels": {"donut/workflow": "w"}}, "kubernetes.labels[donut/workflow]",
     "keys under donut/ are donut's own"),
    ("donut annotation", {"annotations": {"donut/attempt": "2"}}, "kubernetes.annotations[donut/attempt]",
     "keys under donut/ are donut's own"),
    ("bad annotation key", {"annotations": {"not ok": "x"}}, "kubernetes.annotations[not ok]", "the key must be"),
    ("non-string annotation", {"annotations": {"n": 1}}, "kubernetes.annotations[n]", "must be a string, not 1"),
    ("NUL in annotation", {"annotations": {"n": "a\x00b"}}, "kubernetes.annotations[n]", "no NUL"),
    ("tolerations not a list", {"tolerations": {"key": "gpu"}}, "kubernetes.tolerations", "must be a list"),
    ("toleration not a mapping", {"tolerations": ["gpu"]}, "kubernetes.tolerations[0]", "must be a mapping of key"),
    ("unknown toleration field", {"tolerations": [{"key": "k", "operator": "Exists", "colour": "red"}]},
     "kubernetes.tolerations[0].colour", "not allowed (allowed: key, operator, value, effect, tolerationSeconds)"),
    ("bad operator", {"tolerations": [{"key": "k", "operator": "In"}]}, "kubernetes.tolerations[0].operator",
     "must be one of Exists, Equal, not 'In'"),
    ("bad effect", {"tolerations": [{"key": "k", "effect": "NoRun"}]}, "kubernetes.tolerations[0].effect",
     "must be one of NoSchedule, PreferNoSchedule, NoExecute, not 'NoRun'"),
    ("bad toleration key", {"tolerations": [{"key": "k k"}]}, "kubernetes.tolerations[0].key", "must be a name"),
    ("non-string toleration value", {"tolerations": [{"key": "k", "value": 1}]}, "kubernetes.tolerations[0].value",
     "must be a string, not 1"),
    ("value with Exists", {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
     "kubernetes.tolerations[0].value", "must be empty when the operator is Exists"),
    ("no key without Exists", {"tolerations": [{"effect": "NoSchedule"}]}, "kubernetes.tolerations[0].operator",
     "must be Exists when no key is given"),
    ("fractional seconds", {"tolerations": [{"key": "k", "effect": "NoExecute", "tolerationSeconds": 1.5}]},
     "kubernetes.tolerations[0].tolerationSeconds", "must be a whole number of seconds, not 1.5"),
    ("seconds without NoExecute", {"tolerations": [{"key": "k", "tolerationSeconds": 5}]},
     "kubernetes.tolerations[0].tolerationSeconds", "needs effect NoExecute"),
    ("bad service account", {"serviceAccountName": "Fruit_Runner"}, "kubernetes.serviceAccountName",
     "must be a DNS-1123 subdomain"),
    ("non-string service account", {"serviceAccountName": 7}, "kubernetes.serviceAccountName",
     "must be a string, not 7"),
    ("pull secrets not a list", {"imagePullSecrets": "reg"}, "kubernetes.imagePullSecrets", "must be a list"),
    ("bad pull secret", {"imagePullSecrets": ["ok", "not ok"]}, "kubernetes.imagePullSecrets[1]",
     "must be a DNS-1123 subdomain"),
    ("pull secret as a mapping", {"imagePullSecrets": [{"name": "reg"}]}, "kubernetes.imagePullSecrets[0]",
     "must be a string, not a mapping"),
    ("env as a list", {"env": [{"name": "A", "value": "b"}]}, "kubernetes.env", "must be a mapping"),
    ("bad env name", {"env": {"1ST": "x"}}, "kubernetes.env[1ST]", "the name must be letters, digits and '_'"),
    ("donut env", {"env": {"DONUT_TOKEN": "x"}}, "kubernetes.env[DONUT_TOKEN]",
     "names starting with DONUT_ are donut's own"),
    ("non-string env value", {"env": {"COUNT": 3}}, "kubernetes.env[COUNT]", "must be a string, not 3"),
]


@pytest.mark.parametrize(("settings_", "place", "fragment"), [case[1:] for case in BAD], ids=[c[0] for c in BAD])
def test_bad_settings_are_refused_at_their_place(settings_: object, place: str, fragment: str) -> None:
    found_place, message = only_problem({"jobs": [job("a"), job("b", kubernetes=settings_)]})
    assert (found_place, fragment in message) == (f"jobs[1].{place}", True), message
    found_place, message = only_problem({"kubernetes": settings_, "jobs": [job("a")]})
    assert (found_place, fragment in message) == (place, True), message


def test_every_problem_is_reported_together() -> None:
    document = {
        "kubernetes": {"hostNetwork": True, "env": {"DONUT_X": "1"}},
        "jobs": [job("a", kubernetes={"labels": {"donut/job": "a"}, "resources": {"limits": {"gpu": "1"}}}),
                 job("b", retries=-1, kubernetes={"tolerations": [{"key": "k", "operator": "In"}]})],
    }
    assert [place for place, _ in problems(document)] == [
        "kubernetes.hostNetwork", "kubernetes.env[DONUT_X]",
        "jobs[0].kubernetes.labels[donut/job]", "jobs[0].kubernetes.resources.limits",
        "jobs[1].retries", "jobs[1].kubernetes.tolerations[0].operator",
    ]


def test_a_key_given_twice_is_refused() -> None:
    text = "jobs:\n- {name: a, image: i, cmd: c, args: [], kubernetes: {labels: {x: a, x: b}}}\n"
    assert only_problem(text) == ("jobs[0].kubernetes.labels.x", "given more than once")


def test_settings_too_large_once_merged_are_refused() -> None:
    half = {f"k{i}": "v" * 60 for i in range(MAX_KUBERNETES_BYTES // 120)}
    rest = {f"j{i}": "v" * 60 for i in range(MAX_KUBERNETES_BYTES // 120)}
    validate_document({"kubernetes": {"annotations": half}, "jobs": [job("a")]})
    place, message = only_problem({"kubernetes": {"annotations": half},
                                   "jobs": [job("a"), job("b", kubernetes={"annotations": rest})]})
    assert place == "jobs[1].kubernetes" and "too large" in message


# ---------------------------------------------------------------------- kept and read back


def test_stored_specs_round_trip() -> None:
    definition = validate_document({"kubernetes": EVERYTHING, "jobs": [job("a"), job("b")],
                                    "neighbors": {"a": ["b"]}})
    stored = json.loads(json.dumps(list(definition.stored())))
    again = Definition.from_stored(stored)
    assert again == definition
    assert again.jobs["a"].kubernetes == EVERYTHING_NORMALIZED
    assert stored[0]["spec"]["kubernetes"]["env"] == {"APPLE_COUNT": "3", "ZEBRA": "z", "_x": ""}
    assert validate_document(definition.to_dict()) == definition
    assert hash(again.jobs["a"]) == hash(definition.jobs["a"])


def test_specs_stored_before_settings_existed_still_load() -> None:
    old = {"name": "a", "image": "i", "cmd": "c", "args": []}
    spec = JobSpec.from_dict(old)
    assert spec.kubernetes == {} and spec.kubernetes_json == ""
    assert spec.to_dict() == old


def test_reading_the_settings_gives_a_copy() -> None:
    spec = validate_document({"jobs": [job("a", kubernetes={"labels": {"x": "y"}})]}).jobs["a"]
    spec.kubernetes["labels"]["x"] = "changed"
    assert spec.kubernetes == {"labels": {"x": "y"}}


# ---------------------------------------------------------------------- normalizing is idempotent

_label = st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,10}[a-z0-9])?", fullmatch=True)
_subdomain = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?)?", fullmatch=True)
_quantity = st.one_of(st.integers(0, 10**6), st.sampled_from(["500m", "1.5", "4Gi", "2", "129e6", ".5"]))
_settings = st.fixed_dictionaries({}, optional={
    "resources": st.fixed_dictionaries({}, optional={
        kind: st.dictionaries(st.sampled_from(["cpu", "memory"]), _quantity, max_size=2)
        for kind in ("requests", "limits")}),
    "nodeSelector": st.dictionaries(_label, _label, max_size=3),
    "tolerations": st.lists(st.fixed_dictionaries({"key": _label, "operator": st.just("Exists")}, optional={
        "effect": st.sampled_from(["NoSchedule", "PreferNoSchedule"])}), max_size=2),
    "labels": st.dictionaries(_label, _label, max_size=3),
    "annotations": st.dictionaries(_label, st.text(max_size=10).filter(lambda t: "\x00" not in t), max_size=3),
    "serviceAccountName": _subdomain,
    "imagePullSecrets": st.lists(_subdomain, max_size=2),
    "env": st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True).filter(
        lambda n: not n.startswith("DONUT_")), st.text(max_size=5).filter(lambda t: "\x00" not in t), max_size=3),
})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_settings, _settings)
def test_normalizing_again_changes_nothing(workflow: dict[str, Any], own: dict[str, Any]) -> None:
    first = validate_document({"kubernetes": workflow, "jobs": [job("a", kubernetes=own)]}).jobs["a"]
    written = definition_settings(first.kubernetes)
    again = validate_document({"jobs": [job("a", kubernetes=written)]}).jobs["a"]
    assert again == first
    assert JobSpec.from_dict(json.loads(json.dumps(first.to_dict()))) == first


_json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from(["cpu", "500m", "Exists", "NoExecute", "donut/x", "DONUT_X", "a/b"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from([*FIELDS, "requests", "limits", "cpu", "nvidia.com/gpu", "key", "operator", "value",
                         "effect", "tolerationSeconds", "x"]) | st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json_like)
def test_arbitrary_settings_parse_or_are_refused_by_place(value: object) -> None:
    try:
        spec = validate_document({"jobs": [job("a", kubernetes=value)]}).jobs["a"]
    except InvalidArgument as e:
        assert all(p.place.startswith("jobs[0].kubernetes") for p in e.problems), e.problems
    else:
        assert validate_document({"jobs": [job("a", kubernetes=definition_settings(spec.kubernetes))]}).jobs["a"] \
            == spec


def test_the_readme_example_is_valid() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme[readme.index("kubernetes:                      # every job"):]
    example = example[:example.index("```")].replace("  # ...\n", "  image: i\n  cmd: c\n  args: []\n")
    pod = parse_definition(example).jobs["apple"].kubernetes
    assert pod["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                "limits": {"memory": "2Gi", "nvidia.com/gpu": "1"}}
    assert pod["env"] == [{"name": "MODE", "value": "slow"}]
