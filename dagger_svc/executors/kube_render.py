"""What an attempt becomes on Kubernetes: its Job, rendered from the editable template
(`k8s/base/job-template.yaml`), and the Secret holding its job token.

Pure (YAML and the standard library, plain dicts), so every rule here is tested without a
cluster and the executor only sends what this returns. The template is parsed first and
its string values substituted after, never the text: no value can change the document's
shape. The rules a template cannot break (names, labels, no retries of Kubernetes' own,
the wrapper's environment with the token from the Secret, the definition's pod settings)
are applied to whatever it renders.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from string import Template
from typing import Any, Final, TypedDict

import yaml

from streamed_job.spec import TOKEN_ENV

TOKEN_KEY: Final = "token"
"""The key of the token in an attempt's Secret."""
WRAPPER_COMMAND: Final = ("streamed-job",)
RESERVED_ENV_PREFIXES: Final = ("DONUT_", "STREAMED_JOB_")
"""Environment names only donut sets (the wrapper's spec, token and settings)."""
LABEL_WORKFLOW: Final = "donut/workflow"
LABEL_JOB: Final = "donut/job"
LABEL_ATTEMPT: Final = "donut/attempt"
MAX_NAME: Final = 63
SHORT_WORKFLOW_ID: Final = 8
NAME_HASH: Final = 12

POD_SETTINGS: Final = ("resources", "nodeSelector", "tolerations", "labels", "annotations", "serviceAccountName",
                       "imagePullSecrets", "env")

VARIABLES: Final = ("job_name", "namespace", "workflow_id", "job", "attempt", "image", "command", "args", "env",
                    "secret_name", "token_key", "callback_endpoint", "workdir", "mount_path", "claim_name",
                    "active_deadline_seconds", "ttl_seconds_after_finished", "labels", "annotations", "resources",
                    "node_selector", "tolerations", "service_account_name", "image_pull_secrets")
"""Every variable a job template receives (documented in the shipped template)."""

_LABEL_VALUE: Final = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_WHOLE_PLACEHOLDER: Final = re.compile(r"\$\{([_a-zA-Z][_a-zA-Z0-9]*)\}")


class PodSettings(TypedDict, total=False):
    """A definition's `kubernetes:` settings for a job, in Kubernetes' field names."""

    resources: Mapping[str, Mapping[str, Any]]  # {"requests": {...}, "limits": {...}}
    nodeSelector: Mapping[str, str]
    tolerations: Sequence[Mapping[str, Any]]
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    serviceAccountName: str
    imagePullSecrets: Sequence[str]  # names of Secrets in the namespace
    env: Sequence[Mapping[str, str]]  # [{"name": ..., "value": ...}]


@dataclass(frozen=True)
class RenderSettings:
    """One attempt to render, and the cluster it runs on."""

    workflow_id: str
    """The workflow's id."""
    job: str
    """The job's name in the definition."""
    attempt: int
    """The attempt's number."""
    image: str
    """The job's container image; it must have `streamed-job` installed."""
    spec_env: Mapping[str, str]
    """The wrapper's environment as the executor builds it: the attempt's spec (with no token
    in it), its key and the wrapper's settings."""
    token: str
    """The attempt's job token: goes only into the Secret, never into the Job."""
    timeout: float | None = None
    """The job's timeout in seconds (the Job's activeDeadlineSeconds, rounded up); None: no limit."""
    workdir_prefix: str = ""
    """The job's work dir inside its workflow's directory ("" for that directory itself)."""
    pod: PodSettings = field(default_factory=lambda: PodSettings())
    """The definition's `kubernetes:` settings for this job."""
    namespace: str = "donut"
    """Where the Job and the Secret are created."""
    mount_path: str = "/srv/workflows"
    """Where the shared workflows volume is mounted in the job's container."""
    claim_name: str = "donut-workflows"
    """The PersistentVolumeClaim (ReadWriteMany) of the shared workflows volume."""
    callback_endpoint: str = ""
    """host:port the wrapper reaches dagger and cellar at (a template variable; the spec has it too)."""
    ttl_seconds_after_finished: int = 86400
    """How long Kubernetes keeps a finished Job (with its pods and Secret) before deleting it:
    long enough for a scheduler started after an outage to find how it ended (the reaper
    removes the Jobs of finished workflows sooner)."""


def job_name(workflow_id: str, job: str, attempt: int) -> str:
    """The attempt's Job name: `dd-<short workflow id>-<hash>-<attempt>`, the same every time
    (a second create finds the first), a DNS-1123 label within 63 characters. The hash is of
    the workflow id and the job name both, so workflows whose ids share their first
    characters still get different names."""
    if attempt < 0:
        raise ValueError(f"attempt must be 0 or more, not {attempt}")
    short = re.sub(r"[^a-z0-9]", "", workflow_id.lower())[:SHORT_WORKFLOW_ID] or "w"
    digest = hashlib.sha256(f"{workflow_id}\0{job}".encode()).hexdigest()[:NAME_HASH]
    name = f"dd-{short}-{digest}-{attempt}"
    if len(name) > MAX_NAME:
        raise ValueError(f"attempt {attempt} is too large for a Job name")
    return name


def render(template_text: str, settings: RenderSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the Job, the Secret) of an attempt. Create the Secret, then the Job, then give the
    Secret its owner with `owned_by` (the Job's uid exists only once it is created).
    Raises ValueError naming the problem for a template that does not render a batch/v1
    Job with one container, or settings that would break the attempt's guarantees."""
    document = _parse(template_text)
    variables = _variables(settings)
    rendered = _drop_nulls(_substitute(document, variables, ""))
    job = _checked_job(rendered)
    try:
        _enforce(job, settings, variables)
    except (AttributeError, TypeError) as e:  # a field of the wrong kind: a list for a mapping...
        raise ValueError(f"the job template renders a malformed Job: a field holds the wrong kind of value ({e}); "
                         "labels, annotations, nodeSelector and resources must be mappings, env, tolerations and "
                         "imagePullSecrets lists") from e
    if settings.token and settings.token in json.dumps(job):
        raise ValueError("the job token would appear in the Job; it belongs in its Secret only")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": variables["secret_name"], "namespace": settings.namespace,
                     "labels": dict(job["metadata"]["labels"])},
        "type": "Opaque",
        "immutable": True,  # the token never changes; only the owner is added later
        "data": {TOKEN_KEY: base64.b64encode(settings.token.encode()).decode()},
    }
    return job, secret


def owned_by(secret: Mapping[str, Any], job_name: str, job_uid: str) -> dict[str, Any]:
    """A copy of the Secret owned by its Job, so deleting the Job (with propagation, or by
    its TTL) deletes the Secret too."""
    owned = copy.deepcopy(dict(secret))
    owned["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                             "uid": job_uid}]
    return owned


def check_template(template_text: str) -> None:
    """Raises ValueError, naming the problem, unless the template renders an attempt with
    and without a timeout (for the executor to refuse to start with a bad one)."""
    sample = RenderSettings(workflow_id="00000000-0000-4000-8000-000000000000", job="check", attempt=1,
                            image="example.org/image:1", spec_env={}, token="")
    for timeout in (None, 60.0):
        render(template_text, replace(sample, timeout=timeout))


# ---- rendering ---------------------------------------------------------------------------

def _parse(template_text: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(template_text)
    except yaml.YAMLError as e:
        raise ValueError(f"the job template is not valid YAML: {e}") from e
    if not isinstance(document, dict):
        raise ValueError(f"the job template must be a mapping (a Job), not {type(document).__name__}")
    return document


def _variables(settings: RenderSettings) -> dict[str, Any]:
    pod = settings.pod
    unknown = sorted(set(pod) - set(POD_SETTINGS))
    if unknown:
        raise ValueError(f"kubernetes.{unknown[0]}: not a pod setting (known: {', '.join(POD_SETTINGS)})")
    if TOKEN_ENV in settings.spec_env:
        raise ValueError(f"the wrapper's environment may not hold {TOKEN_ENV}: it comes from the Secret")
    name = job_name(settings.workflow_id, settings.job, settings.attempt)
    for key, value in pod.get("labels", {}).items():
        _check_label(f"kubernetes.labels.{key}", value)
    labels = {**pod.get("labels", {}), **_our_labels(settings)}
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in settings.spec_env.items()]
    env.append({"name": TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": name, "key": TOKEN_KEY}}})
    workflow_dir = posixpath.join(settings.mount_path, settings.workflow_id)
    pull_secrets = pod.get("imagePullSecrets")
    return {
        "job_name": name,
        "namespace": settings.namespace,
        "workflow_id": settings.workflow_id,
        "job": settings.job,
        "attempt": settings.attempt,
        "image": settings.image,
        "command": list(WRAPPER_COMMAND),
        "args": [],
        "env": env,
        "secret_name": name,
        "token_key": TOKEN_KEY,
        "callback_endpoint": settings.callback_endpoint,
        "workdir": posixpath.join(workflow_dir, settings.workdir_prefix) if settings.workdir_prefix else workflow_dir,
        "mount_path": settings.mount_path,
        "claim_name": settings.claim_name,
        "active_deadline_seconds": None if settings.timeout is None else max(1, math.ceil(settings.timeout)),
        "ttl_seconds_after_finished": settings.ttl_seconds_after_finished,
        "labels": labels,
        "annotations": dict(pod.get("annotations", {})),
        "resources": copy.deepcopy({k: dict(v) for k, v in pod.get("resources", {}).items()}),
        "node_selector": dict(pod["nodeSelector"]) if "nodeSelector" in pod else None,
        "tolerations": [dict(t) for t in pod["tolerations"]] if "tolerations" in pod else None,
        "service_account_name": pod.get("serviceAccountName"),
        "image_pull_secrets": [{"name": n} for n in pull_secrets] if pull_secrets is not None else None,
    }


def _our_labels(settings: RenderSettings) -> dict[str, str]:
    labels = {LABEL_WORKFLOW: settings.workflow_id, LABEL_JOB: settings.job, LABEL_ATTEMPT: str(settings.attempt)}
    for key, value in labels.items():
        _check_label(f"the label {key}", value)
    return labels


def _check_label(what: str, value: object) -> None:
    if not isinstance(value, str) or len(value) > MAX_NAME or not _LABEL_VALUE.fullmatch(value):
        raise ValueError(f"{what}: {value!r} is not a label value (at most 63 letters, digits, '-', '_', '.', "
                         "beginning and ending with a letter or digit)")


class _Placeholders(Template):
    """`${name}` and `$$` only: a `$` followed by anything else is refused."""

    delimiter = "$"
    pattern = r"""
    \$(?:
      (?P<escaped>\$) |
      \{(?P<braced>[_a-zA-Z][_a-zA-Z0-9]*)\} |
      (?P<named>(?!)) |
      (?P<invalid>)
    )
    """  # type: ignore[assignment]  # typeshed has it as a compiled pattern; Template compiles a string


class _TextVariables(Mapping[str, str]):
    """The variables as text, for placeholders inside longer strings."""

    def __init__(self, variables: Mapping[str, Any], where: str) -> None:
        self._variables = variables
        self._where = where

    def __getitem__(self, name: str) -> str:
        if name not in self._variables:
            raise ValueError(f"the job template uses an unknown variable ${{{name}}} at {self._where}")
        value = self._variables[name]
        if value is None:
            raise ValueError(f"the job template uses ${{{name}}}, which can be null, inside text at {self._where}; "
                             "give it a value of its own")
        if isinstance(value, (list, dict)):
            raise ValueError(f"the job template uses ${{{name}}} inside text at {self._where}, but it is not text; "
                             "give it a value of its own")
        return str(value)

    def __iter__(self) -> Any:
        return iter(self._variables)

    def __len__(self) -> int:
        return len(self._variables)


def _substitute(node: Any, variables: Mapping[str, Any], where: str) -> Any:
    if isinstance(node, dict):
        return {key: _substitute(value, variables, f"{where}.{key}" if where else str(key))
                for key, value in node.items()}
    if isinstance(node, list):
        return [_substitute(item, variables, f"{where}[{i}]") for i, item in enumerate(node)]
    if not isinstance(node, str):
        return node
    whole = _WHOLE_PLACEHOLDER.fullmatch(node)
    if whole:
        name = whole.group(1)
        if name not in variables:
            raise ValueError(f"the job template uses an unknown variable ${{{name}}} at {where}")
        return copy.deepcopy(variables[name])
    try:
        return _Placeholders(node).substitute(_TextVariables(variables, where))
    except ValueError as e:
        if str(e).startswith("the job template"):
            raise
        raise ValueError(f"the job template has a lone '$' at {where} ({node!r}): write $$ for a literal $") from e


def _drop_nulls(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_drop_nulls(item) for item in node if item is not None]
    return node


def _checked_job(document: dict[str, Any]) -> dict[str, Any]:
    if document.get("apiVersion") != "batch/v1" or document.get("kind") != "Job":
        raise ValueError(f"the job template must render a batch/v1 Job, not {document.get('apiVersion')!r} "
                         f"{document.get('kind')!r}")
    spec = document.get("spec")
    template = spec.get("template") if isinstance(spec, dict) else None
    pod = template.get("spec") if isinstance(template, dict) else None
    containers = pod.get("containers") if isinstance(pod, dict) else None
    if not isinstance(containers, list) or len(containers) != 1 or not isinstance(containers[0], dict):
        count = len(containers) if isinstance(containers, list) else 0
        raise ValueError(f"the job template must render a Job with exactly one container in "
                         f"spec.template.spec.containers, not {count}")
    if not isinstance(document.setdefault("metadata", {}), dict) or not isinstance(
            template.setdefault("metadata", {}), dict):  # type: ignore[union-attr]
        raise ValueError("the job template's metadata must be mappings")
    return document


def _enforce(job: dict[str, Any], settings: RenderSettings, variables: Mapping[str, Any]) -> None:
    """What no template can change, and the definition's pod settings over what it says."""
    pod_settings = settings.pod
    spec = job["spec"]
    template = spec["template"]
    pod = template["spec"]
    container = pod["containers"][0]
    job["metadata"].update(name=variables["job_name"], namespace=settings.namespace)
    spec["backoffLimit"] = 0
    pod["restartPolicy"] = "Never"
    for metadata in (job["metadata"], template["metadata"]):
        metadata["labels"] = {**metadata.get("labels", {}), **variables["labels"]}
        annotations = {**metadata.get("annotations", {}), **variables["annotations"]}
        metadata.pop("annotations", None)
        if annotations:
            metadata["annotations"] = annotations

    if "resources" in pod_settings:
        resources = container.setdefault("resources", {})
        for section, quantities in variables["resources"].items():
            resources[section] = {**resources.get(section, {}), **quantities}
    if variables["node_selector"] is not None:
        pod["nodeSelector"] = {**pod.get("nodeSelector", {}), **variables["node_selector"]}
    if variables["tolerations"] is not None:
        tolerations = pod.setdefault("tolerations", [])
        tolerations.extend(t for t in variables["tolerations"] if t not in tolerations)
    if variables["service_account_name"] is not None:
        pod["serviceAccountName"] = variables["service_account_name"]
    if variables["image_pull_secrets"] is not None:
        pull = pod.setdefault("imagePullSecrets", [])
        present = {entry.get("name") for entry in pull if isinstance(entry, dict)}
        pull.extend(entry for entry in variables["image_pull_secrets"] if entry["name"] not in present)

    ours = variables["env"]
    our_names = {entry["name"] for entry in ours}
    templates = [e for e in container.get("env", []) if not (isinstance(e, dict) and e.get("name") in our_names)]
    extra = [dict(e) for e in pod_settings.get("env", [])]
    for entry in extra:
        if str(entry.get("name", "")).startswith(RESERVED_ENV_PREFIXES):
            raise ValueError(f"kubernetes.env: {entry.get('name')} is set by donut and may not be set here")
    extra_names = {entry["name"] for entry in extra}
    container["env"] = [*copy.deepcopy(ours), *(e for e in templates if e.get("name") not in extra_names), *extra]
