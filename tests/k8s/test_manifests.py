"""The deployment under k8s/: what `kubectl kustomize` makes of the base and the minikube
overlay is valid for Kubernetes 1.29 and 1.33, and keeps the promises the README makes
(least-privilege RBAC, only placeholder secrets, probes and requests everywhere, the job
template in its ConfigMap, the member and replica counts, dagger's pods as replicas of one
scheduler)."""

from __future__ import annotations

import base64
import functools
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "k8s" / "base"
MINIKUBE = ROOT / "k8s" / "overlays" / "minikube"
KUSTOMIZATIONS = {"base": BASE, "minikube": MINIKUBE}
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")

PLACEHOLDER = "change-me"
"""The only value an example Secret may hold (the README says to replace them)."""
NAMESPACE = "donut"
JOB_TEMPLATE_PATH = "/etc/donut/job-template.yaml"
WORKFLOWS_CLAIM = "donut-workflows"
WORKFLOWS_MOUNT = "/srv/workflows"
SERVICES_IMAGE = "donut-dagger/donut:0.1.0"
JOB_IMAGE = "donut-dagger/fruit-job:0.1.0"

DAGGER_MAY = {("batch", "jobs"), ("", "pods"), ("", "pods/log"), ("", "secrets")}
"""(API group, resource) pairs dagger's Role may name: its attempts' Jobs, their Pods and logs, their token Secrets."""
DAGGER_VERBS = {"get", "list", "watch", "create", "delete", "patch"}
NOT_CREDENTIALS = {"ETCD_INITIAL_CLUSTER_TOKEN"}
"""Environment variables named like credentials that are not (etcd's is a cluster's name)."""
CLUSTER_WIDE_RBAC = {"ClusterRole", "ClusterRoleBinding"}
WORKLOADS = {"Deployment", "StatefulSet", "Job"}
LONG_RUNNING = {"Deployment", "StatefulSet"}

Doc = dict[str, Any]


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed: install kubectl 1.27 or newer (its built-in Kustomize v5 builds "
                    "k8s/base and k8s/overlays/minikube) to check the manifests")
    return found


@functools.cache
def _build(path: Path) -> tuple[Doc, ...]:
    done = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"kubectl kustomize {path.relative_to(ROOT)} failed:\n{done.stderr}"
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def build(name: str) -> list[Doc]:
    return list(_build(KUSTOMIZATIONS[name]))


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Doc, *, init: bool = True) -> Iterator[Doc]:
    spec = pod_spec(workload)
    yield from spec["containers"]
    if init:
        yield from spec.get("initContainers", [])


def env_value(container: Doc, name: str) -> str:
    values = [e["value"] for e in container.get("env", []) if e["name"] == name]
    assert len(values) == 1, f"{container['name']}: expected one literal env {name}"
    return str(values[0])


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_every_manifest_is_valid_against_the_official_schemas(kustomization: str, version: str) -> None:
    docs = build(kustomization)
    assert docs
    for doc in docs:
        name = f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{kustomization}: {name} is not valid for Kubernetes {version}: {e}")


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_everything_lives_in_the_donut_namespace(kustomization: str) -> None:
    docs = build(kustomization)
    assert one(docs, "Namespace", NAMESPACE)
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']} {doc['metadata']['name']}"


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_dagger_may_touch_only_jobs_pods_and_secrets_in_its_namespace(kustomization: str) -> None:
    docs = build(kustomization)
    assert not [d for d in docs if d["kind"] in CLUSTER_WIDE_RBAC], "no cluster-wide RBAC"
    role = one(docs, "Role", "dagger")
    granted = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
        assert set(rule["verbs"]) <= DAGGER_VERBS, f"verbs beyond {sorted(DAGGER_VERBS)}: {rule['verbs']}"
        granted |= {(group, resource) for group in rule["apiGroups"] for resource in rule["resources"]}
    assert granted <= DAGGER_MAY, f"dagger's Role grants more than jobs, pods and secrets: {granted - DAGGER_MAY}"
    assert {("batch", "jobs"), ("", "pods"), ("", "secrets")} <= granted
    bindings = find(docs, "RoleBinding")
    assert [b["roleRef"]["name"] for b in bindings] == ["dagger"]
    assert bindings[0]["roleRef"]["kind"] == "Role"
    assert bindings[0]["subjects"] == [{"kind": "ServiceAccount", "name": "dagger", "namespace": NAMESPACE}]
    assert pod_spec(one(docs, "Deployment", "dagger"))["serviceAccountName"] == "dagger"
    for workload in docs:  # no other pod gets an API token it does not need
        if workload["kind"] in WORKLOADS and workload["metadata"]["name"] != "dagger":
            assert pod_spec(workload).get("automountServiceAccountToken") is False, workload["metadata"]["name"]


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_secrets_hold_only_the_documented_placeholder(kustomization: str) -> None:
    docs = build(kustomization)
    secrets = find(docs, "Secret")
    assert {s["metadata"]["name"].rsplit("-", 1)[0] for s in secrets} == {
        "etcd-credentials", "s3-credentials", "github-oauth"}
    for secret in secrets:
        assert "stringData" not in secret
        for key, value in secret["data"].items():
            assert base64.b64decode(value).decode() == PLACEHOLDER, f"{secret['metadata']['name']}: {key}"
    for workload in docs:  # and no credential is written into a workload instead
        if workload["kind"] in WORKLOADS:
            for container in containers(workload):
                for env in container.get("env", []):
                    if (any(word in env["name"] for word in ("PASSWORD", "SECRET", "ACCESS_KEY", "TOKEN"))
                            and env["name"] not in NOT_CREDENTIALS):
                        assert "secretKeyRef" in env.get("valueFrom", {}), f"{container['name']}: {env['name']}"


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_every_container_has_probes_and_resource_requests(kustomization: str) -> None:
    docs = build(kustomization)
    for workload in docs:
        if workload["kind"] not in WORKLOADS:
            continue
        name = workload["metadata"]["name"]
        for container in containers(workload):
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), f"{name}/{container['name']}: no cpu and memory requests"
        if workload["kind"] in LONG_RUNNING:
            for container in containers(workload, init=False):
                assert "readinessProbe" in container and "livenessProbe" in container, f"{name}/{container['name']}"
    dagger = next(containers(one(docs, "Deployment", "dagger"), init=False))
    assert dagger["readinessProbe"]["grpc"]["port"] == 7000, "the services' gRPC health"
    assert dagger["livenessProbe"]["httpGet"]["path"] == "/healthz", "the gateway's health"


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_the_job_template_reaches_dagger_through_its_configmap(kustomization: str) -> None:
    docs = build(kustomization)
    maps = [m for m in find(docs, "ConfigMap") if m["metadata"]["name"].startswith("job-template-")]
    assert len(maps) == 1
    assert maps[0]["data"] == {"job-template.yaml": (BASE / "job-template.yaml").read_text()}
    assert yaml.safe_load(maps[0]["data"]["job-template.yaml"])["kind"] == "Job"
    deployment = one(docs, "Deployment", "dagger")
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    container = next(containers(deployment, init=False))
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    directory, file = JOB_TEMPLATE_PATH.rsplit("/", 1)
    assert volumes[mounts[directory]]["configMap"]["name"] == maps[0]["metadata"]["name"]
    assert file in maps[0]["data"]
    assert f"--job-template={JOB_TEMPLATE_PATH}" in container["args"]


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_dagger_and_the_jobs_share_the_readwritemany_workflows_claim(kustomization: str) -> None:
    docs = build(kustomization)
    claim = one(docs, "PersistentVolumeClaim", WORKFLOWS_CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    deployment = one(docs, "Deployment", "dagger")
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    container = next(containers(deployment, init=False))
    mounted = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    data_dir = next(arg.split("=", 1)[1] for arg in container["args"] if arg.startswith("--data-dir="))
    # where dagger keeps the workflows' directories (<data dir>/workflows) is the claim the jobs mount
    assert mounted[f"{data_dir}/workflows"]["persistentVolumeClaim"]["claimName"] == WORKFLOWS_CLAIM
    assert {f"--workflows-claim={WORKFLOWS_CLAIM}", f"--workflows-mount={WORKFLOWS_MOUNT}", "--executor=kubernetes",
            "--storage=s3", "--s3-endpoint=$(S3_ENDPOINT)"} <= set(container["args"])


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_everything_referred_to_is_there(kustomization: str) -> None:
    """Names kustomize gives a hash suffix must be rewritten everywhere they are used."""
    docs = build(kustomization)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for workload in docs:
        if workload["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(workload)
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
        for container in containers(workload):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = one(docs, "Secret", ref["name"])
                    assert ref["key"] in secret["data"], f"{ref['name']} has no {ref['key']}"
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names
    for ingress in find(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert ("Service", path["backend"]["service"]["name"]) in names


def test_the_base_runs_two_dagger_replicas_and_three_etcd_members() -> None:
    docs = build("base")
    assert one(docs, "Deployment", "dagger")["spec"]["replicas"] == 2
    etcd = one(docs, "StatefulSet", "etcd")
    assert etcd["spec"]["replicas"] == 3
    members = env_value(next(containers(etcd)), "ETCD_INITIAL_CLUSTER").split(",")
    assert [m.split("=")[0] for m in members] == ["etcd-0", "etcd-1", "etcd-2"]
    assert one(docs, "Ingress", "gateway")["spec"]["rules"][0]["host"] != "donut.local"


def test_minikube_runs_one_etcd_member_minio_and_donut_local() -> None:
    docs = build("minikube")
    etcd = one(docs, "StatefulSet", "etcd")
    assert etcd["spec"]["replicas"] == 1
    assert env_value(next(containers(etcd)), "ETCD_INITIAL_CLUSTER").split("=")[0] == "etcd-0"
    assert "," not in env_value(next(containers(etcd)), "ETCD_INITIAL_CLUSTER")
    minio = one(docs, "Deployment", "minio")
    assert next(containers(minio))["image"].startswith("quay.io/minio/minio:")
    assert one(docs, "Service", "minio")
    config = [m for m in find(docs, "ConfigMap") if m["metadata"]["name"].startswith("donut-config-")]
    assert config[0]["data"]["S3_ENDPOINT"] == "http://minio:9000"
    assert one(docs, "Ingress", "gateway")["spec"]["rules"][0]["host"] == "donut.local"
    assert one(docs, "PersistentVolumeClaim", WORKFLOWS_CLAIM)["spec"]["storageClassName"] == "standard"


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_the_services_run_the_image_the_guide_builds(kustomization: str) -> None:
    docs = build(kustomization)
    images = {c["image"] for w in docs if w["kind"] in WORKLOADS for c in containers(w)
              if not c["image"].startswith(("quay.io/coreos/etcd:", "quay.io/minio/minio:"))}
    assert images == {SERVICES_IMAGE}
    script = (ROOT / "scripts" / "e2e-minikube.sh").read_text()
    assert SERVICES_IMAGE in script and JOB_IMAGE in script


def test_the_fruit_example_names_the_example_job_image() -> None:
    definition = yaml.safe_load((ROOT / "examples" / "fruit_gather.yaml").read_text())
    assert {job["image"] for job in definition["jobs"]} == {JOB_IMAGE}
    dockerfile = (ROOT / "examples" / "job-image" / "Dockerfile").read_text()
    assert "pip install ./streamed_job" in dockerfile and "ENTRYPOINT" not in dockerfile
    assert f"-t {JOB_IMAGE}" in dockerfile


def test_the_minikube_script_is_valid_shell() -> None:
    script = ROOT / "scripts" / "e2e-minikube.sh"
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    shellcheck = shutil.which("shellcheck")
    if shellcheck is not None:
        done = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_prometheus_scrapes_the_port_dagger_serves_its_metrics_on(kustomization: str) -> None:
    deployment = one(build(kustomization), "Deployment", "dagger")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    container = next(containers(deployment, init=False))
    port = next(arg.split("=", 1)[1] for arg in container["args"] if arg.startswith("--metrics-port="))
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == port
    assert annotations["prometheus.io/path"] == "/metrics"
    assert {"name": "metrics", "containerPort": int(port)} in container["ports"]


def test_the_dagger_deployment_passes_only_options_donut_up_has() -> None:
    from donut_cli.cli import cli

    up = cli.commands["up"]
    known = {name for param in up.params if not getattr(param, "hidden", False) for name in param.opts}
    args = next(containers(one(build("base"), "Deployment", "dagger"), init=False))["args"]
    assert args[0] == "up"
    passed = {arg.split("=", 1)[0] for arg in args[1:]}
    assert all(arg.startswith("--") and "=" in arg for arg in args[1:]), "--option=value, so none is read as a value"
    assert passed <= known, f"not (documented) options of donut up: {sorted(passed - known)}"


def option(container: Doc, name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in container["args"] if arg.startswith(f"--{name}=")]
    assert len(values) == 1, f"{container['name']}: expected --{name} once"
    return values[0]


def selects_dagger(service_or_budget: Doc, docs: list[Doc]) -> bool:
    labels = one(docs, "Deployment", "dagger")["spec"]["template"]["metadata"]["labels"]
    selector = service_or_budget["spec"]["selector"]
    selector = selector.get("matchLabels", selector) if service_or_budget["kind"] != "Service" else selector
    return bool(selector) and selector.items() <= labels.items()


def grpc_port(service: Doc, docs: list[Doc]) -> int:
    """The Service's port that reaches dagger's gRPC container port."""
    container = next(containers(one(docs, "Deployment", "dagger"), init=False))
    grpc = next(p for p in container["ports"] if p["name"] == "grpc")
    targets = ("grpc", grpc["containerPort"])
    ports = [p["port"] for p in service["spec"]["ports"] if p.get("targetPort", p["port"]) in targets]
    assert len(ports) == 1, f"Service {service['metadata']['name']}: expected one port to dagger's gRPC"
    return int(ports[0])


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_every_dagger_pod_is_a_replica_named_after_itself(kustomization: str) -> None:
    """Pods of one Deployment would otherwise share one scheduler id (and a data-dir lock)."""
    container = next(containers(one(build(kustomization), "Deployment", "dagger"), init=False))
    assert option(container, "replica-id") == "$(POD_NAME)"
    pod_name = [e for e in container["env"] if e["name"] == "POD_NAME"]
    assert pod_name == [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    assert 2 <= int(option(container, "lease-ttl")) <= 60, "a lost replica's runs are taken over this soon"
    assert option(container, "etcd-endpoints"), "replicas share an external etcd"


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_a_headless_service_lists_every_ready_dagger_replica_for_round_robin(kustomization: str) -> None:
    docs = build(kustomization)
    headless = [s for s in find(docs, "Service") if s["spec"].get("clusterIP") == "None" and selects_dagger(s, docs)]
    assert [s["metadata"]["name"] for s in headless] == ["dagger-replicas"]
    assert grpc_port(headless[0], docs) == 7000
    assert not headless[0]["spec"].get("publishNotReadyAddresses"), "clients must not be sent to a replica starting up"
    regular = one(docs, "Service", "dagger")
    assert regular["spec"].get("clusterIP") != "None" and selects_dagger(regular, docs)


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_jobs_call_back_through_a_service_that_reaches_any_live_replica(kustomization: str) -> None:
    docs = build(kustomization)
    container = next(containers(one(docs, "Deployment", "dagger"), init=False))
    host, port = option(container, "callback-endpoint").rsplit(":", 1)
    name, *domain = host.split(".")
    assert domain in ([], [NAMESPACE], [NAMESPACE, "svc"], [NAMESPACE, "svc", "cluster", "local"]), host
    service = one(docs, "Service", name)
    assert selects_dagger(service, docs), f"Service {name} does not select the dagger pods"
    assert service["spec"].get("clusterIP") != "None", "one address that always leads to a live replica"
    assert grpc_port(service, docs) == int(port)


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_the_replicas_share_a_data_dir_the_jobs_cannot_read(kustomization: str) -> None:
    """Live logs, the session and download-link keys and the services' token: every
    replica's, and on no volume a job mounts."""
    docs = build(kustomization)
    deployment = one(docs, "Deployment", "dagger")
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    container = next(containers(deployment, init=False))
    mounted = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    claim = mounted[option(container, "data-dir")]["persistentVolumeClaim"]["claimName"]
    assert claim != WORKFLOWS_CLAIM, "jobs mount the workflows claim: they would read the services' keys"
    assert one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]
    template = yaml.safe_load((BASE / "job-template.yaml").read_text())
    assert claim not in yaml.safe_dump(template)


@pytest.mark.parametrize("kustomization", sorted(KUSTOMIZATIONS))
def test_a_disruption_budget_keeps_a_replica_up_when_there_are_several(kustomization: str) -> None:
    docs = build(kustomization)
    replicas = one(docs, "Deployment", "dagger")["spec"]["replicas"]
    budgets = [b for b in find(docs, "PodDisruptionBudget") if selects_dagger(b, docs)]
    if replicas == 1:  # a budget would stop every node drain
        assert budgets == []
    else:
        assert [b["spec"].get("minAvailable") for b in budgets] == [1]

