"""Rendering an attempt into its Kubernetes Job and Secret: names, the template's rules,
the token kept out of the Job, the definition's pod settings, and every result checked
against the official schemas."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from dagger_svc.executors.kube_render import (
    TOKEN_ENV,
    VARIABLES,
    PodSettings,
    RenderSettings,
    check_template,
    job_name,
    owned_by,
    render,
)
from donut_common import names
from streamed_job.spec import JOB_KEY_ENV, SPEC_ENV, RunSpec

TEMPLATE = (Path(__file__).parents[2] / "k8s" / "base" / "job-template.yaml").read_text(encoding="utf-8")
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
TOKEN = "tok_3f9a1c2e.Zr8WqLx0vNfH2kPbT7sYcE1uJ4mD6gAo"
WORKFLOW = "5b0f8a52-1c7e-4d0b-9f3e-2a6c8e4b7d19"
KUBE_VERSIONS = ("1.29.0", "1.33.0")

ALL_POD_SETTINGS: PodSettings = {
    "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi", "nvidia.com/gpu": 1}},
    "nodeSelector": {"disktype": "ssd"},
    "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "labels": {"team": "fruit", "donut/job": "not-this-one"},
    "annotations": {"example.com/owner": "fruit team"},
    "serviceAccountName": "fruit-jobs",
    "imagePullSecrets": ["private-registry"],
    "env": [{"name": "FRUIT", "value": "apple"}],
}

CUSTOM_TEMPLATE = """
apiVersion: batch/v1
kind: Job
metadata:
  name: ${job_name}
  namespace: ${namespace}
  labels: {site: lab-3, donut/attempt: "999"}
spec:
  backoffLimit: 4
  activeDeadlineSeconds: ${active_deadline_seconds}
  template:
    metadata:
      labels: {site: lab-3}
    spec:
      restartPolicy: OnFailure
      imagePullSecrets: [{name: lab-registry}, {name: private-registry}]
      priorityClassName: batch-low
      containers:
        - name: main
          image: "${image}"
          command: ${command}
          env:
            - {name: HTTP_PROXY, value: "http://proxy.lab:3128"}
            - {name: EXPANDED, value: "$$(HTTP_PROXY)/x for ${job} #${attempt}"}
          workingDir: ${workdir}
          resources: {requests: {cpu: 100m}, limits: {cpu: "1"}}
          volumeMounts: [{name: workflows, mountPath: "${mount_path}"}]
      volumes: [{name: workflows, persistentVolumeClaim: {claimName: "${claim_name}"}}]
"""


def spec_env(args: tuple[str, ...] = ("--fruit", "apple"), job: str = "gather") -> dict[str, str]:
    run = RunSpec(workflow_id=WORKFLOW, job=job, attempt=2, cmd="gather.sh", args=args,
                  workflow_dir=f"/srv/workflows/{WORKFLOW}", workdir_prefix="out",
                  dagger_endpoint="dagger.donut.svc:50051")
    return {SPEC_ENV: run.to_json(), JOB_KEY_ENV: run.key, "STREAMED_JOB_KILL_GRACE": "10.0"}


def settings(**overrides: Any) -> RenderSettings:
    base = RenderSettings(workflow_id=WORKFLOW, job="gather", attempt=2, image="registry.example/fruit:1.2",
                          spec_env=spec_env(), token=TOKEN, timeout=90.5, workdir_prefix="out",
                          callback_endpoint="dagger.donut.svc:50051")
    return replace(base, **overrides)


def container(job: dict[str, Any]) -> dict[str, Any]:
    (only,) = job["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(job)["env"]}


# ---- names -------------------------------------------------------------------------------

job_names = st.from_regex(f"^{names.JOB_NAME}$", fullmatch=True)
workflow_ids = st.one_of(st.uuids().map(str), st.text(min_size=1, max_size=80))


@examples(deadline=None)
@given(workflow_ids, job_names, st.integers(min_value=0, max_value=10**9))
def test_job_names_are_deterministic_valid_and_one_per_attempt(workflow_id: str, job: str, attempt: int) -> None:
    name = job_name(workflow_id, job, attempt)
    assert name == job_name(workflow_id, job, attempt)
    assert len(name) <= 63
    assert DNS_LABEL.fullmatch(name), name
    assert name.startswith("dd-") and name.endswith(f"-{attempt}")
    assert job_name(workflow_id, job, attempt + 1) != name


def test_job_names_differ_between_jobs_and_workflows_sharing_a_prefix() -> None:
    long_a, long_b = "a" * 62 + "1", "a" * 62 + "2"
    assert job_name(WORKFLOW, long_a, 1) != job_name(WORKFLOW, long_b, 1)
    twin = WORKFLOW[:9] + "ffff-ffff-ffff-ffffffffffff"
    assert job_name(WORKFLOW, "gather", 1) != job_name(twin, "gather", 1)
    assert job_name(WORKFLOW, "gather", 1).startswith("dd-5b0f8a52-")


def test_a_negative_attempt_has_no_job_name() -> None:
    with pytest.raises(ValueError, match="attempt"):
        job_name(WORKFLOW, "gather", -1)


# ---- the default template ----------------------------------------------------------------

def test_the_default_template_renders_the_attempts_job() -> None:
    job, secret = render(TEMPLATE, settings())
    name = job_name(WORKFLOW, "gather", 2)
    labels = {"donut/workflow": WORKFLOW, "donut/job": "gather", "donut/attempt": "2"}
    assert job["metadata"]["name"] == name and job["metadata"]["namespace"] == "donut"
    assert job["metadata"]["labels"] == labels
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 91
    assert job["spec"]["ttlSecondsAfterFinished"] == 86400
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["volumes"] == [{"name": "workflows", "persistentVolumeClaim": {"claimName": "donut-workflows"}}]
    main = container(job)
    assert main["image"] == "registry.example/fruit:1.2"
    assert main["command"] == ["streamed-job"]
    assert main["workingDir"] == f"/srv/workflows/{WORKFLOW}/out"
    assert main["volumeMounts"] == [{"name": "workflows", "mountPath": "/srv/workflows"}]
    env = env_of(job)
    assert env[SPEC_ENV] == spec_env()[SPEC_ENV]
    assert env[JOB_KEY_ENV] == f"{WORKFLOW}/gather/2"
    assert env[TOKEN_ENV] == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "token"}}
    for absent in ("nodeSelector", "tolerations", "serviceAccountName", "imagePullSecrets"):
        assert absent not in pod


def test_the_token_is_only_in_the_secret() -> None:
    job, secret = render(TEMPLATE, settings())
    assert TOKEN not in json.dumps(job)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == job["metadata"]["name"]
    assert secret["metadata"]["namespace"] == job["metadata"]["namespace"]
    assert secret["metadata"]["labels"] == job["metadata"]["labels"]
    assert base64.b64decode(secret["data"]["token"]).decode() == TOKEN
    assert secret["immutable"] is True


def test_a_spec_that_carries_the_token_is_refused() -> None:
    leaky = {**spec_env(), "EXTRA": f"x{TOKEN}x"}
    with pytest.raises(ValueError, match="token"):
        render(TEMPLATE, settings(spec_env=leaky))
    with pytest.raises(ValueError, match=TOKEN_ENV):
        render(TEMPLATE, settings(spec_env={**spec_env(), TOKEN_ENV: "x"}))


def test_without_a_timeout_there_is_no_deadline() -> None:
    job, _ = render(TEMPLATE, settings(timeout=None))
    assert "activeDeadlineSeconds" not in job["spec"]


def test_other_cluster_settings_reach_the_job() -> None:
    job, secret = render(TEMPLATE, settings(namespace="batch", mount_path="/data/wf", claim_name="nfs-wf",
                                            workdir_prefix="", ttl_seconds_after_finished=60))
    assert job["metadata"]["namespace"] == secret["metadata"]["namespace"] == "batch"
    assert container(job)["workingDir"] == f"/data/wf/{WORKFLOW}"
    assert container(job)["volumeMounts"][0]["mountPath"] == "/data/wf"
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "nfs-wf"
    assert job["spec"]["ttlSecondsAfterFinished"] == 60


@pytest.mark.parametrize("hostile", ["${token}", "${job_name}", "$$", "$", "a: b\n- [c", "{x: ${env}}",
                                     '"; rm -rf / #', "${labels}"])
def test_hostile_values_stay_literal(hostile: str) -> None:
    env = spec_env(args=(hostile, "--x"))
    job, _ = render(TEMPLATE, settings(spec_env={**env, "STREAMED_JOB_NOTE": hostile},
                                       image=f"registry.example/{hostile}"))
    assert env_of(job)[SPEC_ENV] == env[SPEC_ENV]
    assert RunSpec.from_json(env_of(job)[SPEC_ENV]).args == (hostile, "--x")
    assert env_of(job)["STREAMED_JOB_NOTE"] == hostile
    assert container(job)["image"] == f"registry.example/{hostile}"
    assert TOKEN not in json.dumps(job)


@examples(deadline=None)  # a noisy machine
@given(st.text(), st.text(), st.text())
def test_any_values_stay_literal(arg: str, setting: str, image: str) -> None:
    env = spec_env(args=(arg,))
    job, _ = render(TEMPLATE, settings(spec_env={**env, "STREAMED_JOB_NOTE": setting}, image=image))
    assert RunSpec.from_json(env_of(job)[SPEC_ENV]).args == (arg,)
    assert env_of(job)["STREAMED_JOB_NOTE"] == setting
    assert container(job)["image"] == image
    assert TOKEN not in json.dumps(job)


def test_the_default_template_documents_every_variable() -> None:
    documented = set(re.findall(r"^#   ([a-z_]+)\s", TEMPLATE, re.MULTILINE))
    used = set(re.findall(r"\$\{([a-z_]+)\}", TEMPLATE.split("\napiVersion:", 1)[1]))
    assert documented == set(VARIABLES)
    assert used <= documented


# ---- the definition's pod settings -------------------------------------------------------

def test_pod_settings_are_applied_and_ours_win() -> None:
    job, secret = render(TEMPLATE, settings(pod=ALL_POD_SETTINGS))
    pod = job["spec"]["template"]["spec"]
    main = container(job)
    assert main["resources"] == ALL_POD_SETTINGS["resources"]
    assert pod["nodeSelector"] == {"disktype": "ssd"}
    assert pod["tolerations"] == ALL_POD_SETTINGS["tolerations"]
    assert pod["serviceAccountName"] == "fruit-jobs"
    assert pod["imagePullSecrets"] == [{"name": "private-registry"}]
    expected_labels = {"team": "fruit", "donut/workflow": WORKFLOW, "donut/job": "gather", "donut/attempt": "2"}
    for metadata in (job["metadata"], job["spec"]["template"]["metadata"], secret["metadata"]):
        assert metadata["labels"] == expected_labels
    for metadata in (job["metadata"], job["spec"]["template"]["metadata"]):
        assert metadata["annotations"] == {"example.com/owner": "fruit team"}
    names_in_order = [e["name"] for e in main["env"]]
    assert names_in_order[-1] == "FRUIT"
    assert set(names_in_order[:-1]) == {SPEC_ENV, JOB_KEY_ENV, "STREAMED_JOB_KILL_GRACE", TOKEN_ENV}


@pytest.mark.parametrize("name", [TOKEN_ENV, SPEC_ENV, "DONUT_ANYTHING", "STREAMED_JOB_KILL_GRACE"])
def test_pod_env_may_not_set_the_wrappers_variables(name: str) -> None:
    with pytest.raises(ValueError, match=f"kubernetes.env.*{name}"):
        render(TEMPLATE, settings(pod={"env": [{"name": name, "value": "x"}]}))


@pytest.mark.parametrize("value", ["-edge", "a" * 64, "sp ace", 7])
def test_pod_labels_must_be_label_values(value: Any) -> None:
    with pytest.raises(ValueError, match="kubernetes.labels.team"):
        render(TEMPLATE, settings(pod={"labels": {"team": value}}))


def test_unknown_pod_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="kubernetes.hostNetwork"):
        render(TEMPLATE, settings(pod={"hostNetwork": True}))


def test_a_custom_template_keeps_its_own_settings_and_gets_ours() -> None:
    job, secret = render(CUSTOM_TEMPLATE, settings(pod=ALL_POD_SETTINGS))
    pod = job["spec"]["template"]["spec"]
    main = container(job)
    assert job["spec"]["backoffLimit"] == 0 and pod["restartPolicy"] == "Never"
    assert pod["imagePullSecrets"] == [{"name": "lab-registry"}, {"name": "private-registry"}]
    assert pod["priorityClassName"] == "batch-low"
    assert job["metadata"]["labels"]["site"] == "lab-3"
    assert job["metadata"]["labels"]["donut/attempt"] == "2"
    assert job["spec"]["template"]["metadata"]["labels"]["site"] == "lab-3"
    assert job["spec"]["template"]["metadata"]["labels"]["donut/workflow"] == WORKFLOW
    assert main["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                 "limits": {"cpu": "1", "memory": "2Gi", "nvidia.com/gpu": 1}}
    env = env_of(job)
    assert env["EXPANDED"] == "$(HTTP_PROXY)/x for gather #2"
    assert env[TOKEN_ENV] == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "token"}}
    assert env[SPEC_ENV] == spec_env()[SPEC_ENV]  # the wrapper's env, even where the template forgot it
    assert [e["name"] for e in main["env"]][-1] == "FRUIT"


# ---- the official schemas ----------------------------------------------------------------

@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("template", [TEMPLATE, CUSTOM_TEMPLATE], ids=["default", "custom"])
@pytest.mark.parametrize("pod", [{}, ALL_POD_SETTINGS, {"imagePullSecrets": ["a", "b"], "labels": {"x": "y"}}],
                         ids=["no-settings", "all-settings", "pull-secrets-and-labels"])
@pytest.mark.parametrize("timeout", [None, 3600.0])
def test_every_rendering_validates(version: str, template: str, pod: PodSettings, timeout: float | None) -> None:
    job, secret = render(template, settings(pod=pod, timeout=timeout))
    kubernetes_validate.validate(job, version, strict=True)
    kubernetes_validate.validate(secret, version, strict=True)
    kubernetes_validate.validate(owned_by(secret, job["metadata"]["name"], "0b6e3f4c-uid"), version, strict=True)


def test_owned_by_makes_the_job_own_a_copy_of_the_secret() -> None:
    _, secret = render(TEMPLATE, settings())
    owned = owned_by(secret, "dd-x-y-1", "uid-1")
    assert owned["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "dd-x-y-1", "uid": "uid-1"}]
    assert "ownerReferences" not in secret["metadata"]


# ---- bad templates -----------------------------------------------------------------------

VALID_TAIL = """
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: job, image: "${image}"}]
"""


@pytest.mark.parametrize(("text", "problem"), [
    ("apiVersion: batch/v1\nkind: [Job\n", "not valid YAML"),
    ("", "mapping"),
    ("- a\n- b\n", "mapping"),
    ("apiVersion: apps/v1\nkind: Deployment\n" + VALID_TAIL, "batch/v1 Job"),
    ("apiVersion: batch/v1\nkind: Job\nspec: {template: {spec: {containers: []}}}\n", "exactly one container"),
    ("apiVersion: batch/v1\nkind: Job\nspec: {template: {spec: {containers: [{name: a}, {name: b}]}}}\n",
     "exactly one container"),
    ("apiVersion: batch/v1\nkind: Job\nspec: {template: {spec: {}}}\n", "exactly one container"),
    ("apiVersion: batch/v1\nkind: Job\nmetadata: {name: '${nope}'}\n" + VALID_TAIL, r"unknown variable \$\{nope\}"),
    ("apiVersion: batch/v1\nkind: Job\nmetadata: {name: 'x-${nope}'}\n" + VALID_TAIL, r"unknown variable \$\{nope\}"),
    ("apiVersion: batch/v1\nkind: Job\nmetadata: {name: 'x'}\n" + VALID_TAIL.replace('"${image}"', "$HOME"),
     r"spec.template.spec.containers\[0\].image.*\$\$"),
    ("apiVersion: batch/v1\nkind: Job\nmetadata: {name: 'x-${command}'}\n" + VALID_TAIL, "command.*not text"),
    ("apiVersion: batch/v1\nkind: Job\n" + VALID_TAIL + "      hostname: x-${active_deadline_seconds}\n",
     "active_deadline_seconds.*null"),
    ("apiVersion: batch/v1\nkind: Job\nmetadata: {labels: [a]}\n" + VALID_TAIL, "malformed.*labels"),
    ("apiVersion: batch/v1\nkind: Job\nmetadata: {name: x}\n" + VALID_TAIL.replace("}]", ", env: x}]"),
     "malformed"),
    ("apiVersion: batch/v1\nkind: Job\nmetadata: [x]\n" + VALID_TAIL, "metadata must be mappings"),
])
def test_bad_templates_are_refused_clearly(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=f"job template.*{problem}"):
        render(text, settings(timeout=None))
    with pytest.raises(ValueError, match=f"job template.*{problem}"):
        check_template(text)


def test_the_shipped_and_custom_templates_pass_the_check() -> None:
    check_template(TEMPLATE)
    check_template(CUSTOM_TEMPLATE)
