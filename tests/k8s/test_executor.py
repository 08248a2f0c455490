"""The Kubernetes executor against the test API server and kubelet (tests/k8s/fakecluster),
through a whole stack (`donut up --executor kubernetes`): the official client, the job
template, Jobs and Secrets, pods running the real wrapper, which streams logs and reports
over gRPC, and the faults a cluster has."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from donut.cellar.v1 import cellar_pb2 as cpb
from donut.cellar.v1 import cellar_pb2_grpc
from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut_common.rpc import channel
from tests.k8s.fakecluster import FakeCluster

REPO = Path(__file__).resolve().parents[2]
FRUIT = REPO / "examples" / "fruit_gather.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Kube:
    """A stack whose jobs are Jobs on the fake cluster."""

    def __init__(self, config: Any, cluster: FakeCluster) -> None:
        from donut_cli.stack import Stack

        self.config, self.cluster = config, cluster
        self.stack = Stack(config).start()
        self.connect()

    def connect(self) -> None:
        self.channel = channel(self.stack.endpoint, token=self.stack.client_token()[0])
        self.dagger = dagger_pb2_grpc.DaggerStub(self.channel)
        self.cellar = cellar_pb2_grpc.CellarStub(self.channel)

    def restart(self, between: Callable[[], None] = lambda: None) -> None:
        from donut_cli.stack import Stack

        self.channel.close()
        self.stack.stop()
        between()
        self.stack = Stack(self.config).start()
        self.connect()

    def submit(self, definition: dict[str, Any], parallelism: int = 4) -> str:
        return self.dagger.CreateWorkflow(pb.CreateWorkflowRequest(
            definition=yaml.safe_dump(definition).encode(), parallelism=parallelism)).id

    def wait(self, workflow_id: str, timeout: float = 90) -> pb.Workflow:
        for w in self.dagger.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id), timeout=timeout):
            if w.status not in (pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING):
                break
        return self.dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id, include_jobs=True))

    def job(self, workflow_id: str, name: str) -> pb.Job:
        return self.dagger.GetJob(pb.GetJobRequest(workflow_id=workflow_id, name=name))

    def until(self, workflow_id: str, name: str, status: int, timeout: float = 60) -> pb.Job:
        return self.cluster.wait_for(lambda: (job := self.job(workflow_id, name)).status == status and job,
                                     timeout=timeout, what=f"{name} {pb.JobStatus.Name(status)}")

    def log(self, workflow_id: str, name: str, attempt: int = 0) -> str:
        return "\n".join(line.text.decode() for chunk in self.dagger.TailLogs(pb.TailLogsRequest(
            workflow_id=workflow_id, job=name, attempt=attempt)) for line in chunk.lines)

    def close(self) -> None:
        self.channel.close()
        self.stack.stop()


@pytest.fixture
def kube(stack_config: Any, tmp_path: Path) -> Iterator[Kube]:
    from donut_cli.stack import KubeConfig

    workflows = Path(stack_config.data_dir) / "workflows"  # the stack's, which the cluster's claim stands for
    workflows.mkdir(parents=True)
    with FakeCluster(tmp_path / "cluster", volumes={"donut-workflows": workflows}) as cluster:
        # mounted at the host directory's own path: the wrapper's spec names paths in the container
        config = replace(stack_config, port=free_port(), executor="kubernetes", kill_grace=1.0,
                         kubernetes=KubeConfig(kubeconfig=str(cluster.kubeconfig), pending_grace=2.0,
                                               workflows_mount=str(workflows)))
        running = Kube(config, cluster)
        yield running
        running.close()


def sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox:1.36", "cmd": "/bin/sh", "args": ["-c", script], **extra}


def test_the_fruit_example_runs_as_jobs_with_live_logs_and_saved_results(kube: Kube) -> None:
    definition = yaml.safe_load(FRUIT.read_text())
    definition["jobs"][0]["kubernetes"] = {"resources": {"limits": {"memory": "1Gi"}}, "labels": {"team": "fruit"}}
    workflow_id = kube.submit(definition)
    done = kube.wait(workflow_id)
    assert done.status == pb.WORKFLOW_STATUS_DONE, [(j.name, j.message) for j in done.jobs]
    assert "picking apples" in kube.log(workflow_id, "apple")
    assert "total 10" in kube.log(workflow_id, "dragonfruit")
    results = kube.cellar.List(cpb.ListRequest(kind=cpb.KIND_RESULT, scope=workflow_id)).files
    assert sorted((f.ref.job, f.ref.path) for f in results) == [
        ("apple", "output.txt"), ("banana", "output.txt"), ("cantaloupe", "output.txt"), ("dragonfruit", "total.txt")]

    jobs = kube.cluster.objects("jobs", f"donut/workflow={workflow_id}")
    assert sorted(j["metadata"]["labels"]["donut/job"] for j in jobs) == ["apple", "banana", "cantaloupe",
                                                                          "dragonfruit"]
    apple = next(j for j in jobs if j["metadata"]["labels"]["donut/job"] == "apple")
    container = apple["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == definition["jobs"][0]["image"] and container["command"] == ["streamed-job"]
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert apple["spec"]["template"]["metadata"]["labels"]["team"] == "fruit"
    token = next(e for e in container["env"] if e["name"] == "DONUT_JOB_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] == apple["metadata"]["name"] and "value" not in token
    secrets = kube.cluster.objects("secrets", f"donut/workflow={workflow_id}")
    assert len(secrets) == 4 and all(s["metadata"]["ownerReferences"][0]["kind"] == "Job" for s in secrets)
    assert all(s["metadata"]["ownerReferences"][0]["uid"] in {j["metadata"]["uid"] for j in jobs} for s in secrets)


def test_a_launch_repeated_by_another_executor_adopts_the_job_already_there(kube: Kube) -> None:
    from dagger_svc.executors.base import Launch
    from dagger_svc.executors.kubernetes import KubernetesExecutor, KubernetesSettings, api_client

    workflow_id = kube.submit({"jobs": [sh("slow", "sleep 3; echo done")]})
    running = kube.until(workflow_id, "slow", pb.JOB_STATUS_RUNNING)
    assert running.attempt == 1
    reported: list[Any] = []
    settings = KubernetesSettings(template=(REPO / "k8s/base/job-template.yaml").read_text(),
                                  mount_path=kube.config.kubernetes.workflows_mount,
                                  callback_endpoint=kube.stack.endpoint, reap_interval=0)
    other = KubernetesExecutor(api_client(str(kube.cluster.kubeconfig)), kube.stack.logs, settings)
    other.start(lambda *args: reported.append(args))
    try:
        spec = kube.stack.store.definition(workflow_id).jobs["slow"]
        other.launch(Launch(workflow_id, "slow", 1, spec, f"{kube.config.kubernetes.workflows_mount}/{workflow_id}"))
        assert kube.wait(workflow_id).status == pb.WORKFLOW_STATUS_DONE
        kube.cluster.wait_for(lambda: not other.running, what="the other executor to see the end")
    finally:
        other.close()
    assert len(kube.cluster.objects("jobs", f"donut/workflow={workflow_id}")) == 1
    assert len(kube.cluster.requests("create", "jobs")) == 1  # the second launch found it there and followed it
    assert len(kube.cluster.requests("create", "secrets")) == 2
    assert reported == []  # the wrapper reported; nobody else had to


def test_stopping_leaves_jobs_running_and_the_next_start_adopts_them_re_running_nothing(kube: Kube,
                                                                                       tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    workflow_id = kube.submit({"jobs": [sh("first", "echo once >> runs.txt"),
                                        sh("second", f"while [ ! -e {gate} ]; do sleep 0.1; done; echo second")],
                               "neighbors": {"first": ["second"]}})
    kube.until(workflow_id, "second", pb.JOB_STATUS_RUNNING)
    jobs = kube.cluster.wait_for(lambda: len(found := kube.cluster.objects("jobs")) == 2 and found, what="two Jobs")
    job_names = {j["metadata"]["name"] for j in jobs}

    def while_down() -> None:
        assert {j["metadata"]["name"] for j in kube.cluster.objects("jobs")} == job_names  # left alone
        gate.touch()  # the job ends while no scheduler runs; its wrapper keeps trying to report

    kube.restart(while_down)
    done = kube.wait(workflow_id)
    assert done.status == pb.WORKFLOW_STATUS_DONE, [(j.name, j.message) for j in done.jobs]
    assert [j.attempt for j in done.jobs] == [1, 1]
    assert len(kube.cluster.requests("create", "jobs")) == 2  # nothing launched again
    assert (Path(kube.config.data_dir) / "workflows" / workflow_id / "runs.txt").read_text() == "once\n"


def test_an_image_that_cannot_be_pulled_fails_after_the_pending_grace(kube: Kube) -> None:
    kube.cluster.fail_image_pull("registry.example/missing:1", "ImagePullBackOff")
    workflow_id = kube.submit({"jobs": [{**sh("pull", "true"), "image": "registry.example/missing:1"}]})
    failed = kube.wait(workflow_id).jobs[0]
    assert failed.status == pb.JOB_STATUS_FAILED and "ImagePullBackOff" in failed.message
    kube.cluster.wait_for(lambda: not kube.cluster.objects("jobs"), what="the stuck Job to be deleted")


def once_then(name: str, script: str) -> dict[str, Any]:
    """A job whose first attempt sleeps (to be disturbed) and whose later ones succeed at once."""
    return sh(name, f"if [ -e tried-{name} ]; then echo again; exit 0; fi; touch tried-{name}; {script}")


def test_out_of_memory_fails_and_an_eviction_a_lost_node_or_a_deleted_pod_is_lost_and_run_again(kube: Kube) -> None:
    workflow_id = kube.submit({"jobs": [sh("hungry", "sleep 30"), once_then("evicted", "sleep 30"),
                                        once_then("deleted", "sleep 30"), once_then("stranded", "sleep 30")]})
    for name in ("hungry", "evicted", "deleted", "stranded"):
        kube.until(workflow_id, name, pb.JOB_STATUS_RUNNING)
    jobs = kube.cluster.wait_for(lambda: len(found := [j for j in kube.cluster.objects("jobs")
                                                       if kube.cluster.pods_of(j["metadata"]["name"])]) == 4 and found,
                                 what="four pods")
    pods = {j["metadata"]["labels"]["donut/job"]: kube.cluster.pods_of(j["metadata"]["name"])[0]["metadata"]["name"]
            for j in jobs}
    workdir = Path(kube.config.data_dir) / "workflows" / workflow_id
    kube.cluster.wait_for(lambda: all((workdir / f"tried-{name}").exists() for name in ("evicted", "deleted",
                                                                                          "stranded")),
                          what="the commands running")
    kube.cluster.oom_kill(pods["hungry"])
    kube.cluster.evict(pods["evicted"])
    kube.cluster.delete_pod(pods["deleted"])
    kube.cluster.lose_node(pods["stranded"])
    ended = {j.name: j for j in kube.wait(workflow_id).jobs}
    assert ended["hungry"].status == pb.JOB_STATUS_FAILED and "OOMKilled" in ended["hungry"].message
    assert "OOMKilled" in kube.log(workflow_id, "hungry")
    for name, why in (("evicted", "evicted"), ("deleted", "pod was deleted"), ("stranded", "node was lost")):
        assert len(ended[name].attempts) == 2, ended[name]
        first, second = ended[name].attempts
        assert first.status == pb.JOB_STATUS_DEAD and why in first.message, first
        assert second.status == pb.JOB_STATUS_SUCCEEDED and "again" in kube.log(workflow_id, name, attempt=2)


def test_a_job_deleted_by_someone_else_makes_its_attempt_dead_and_it_runs_again(kube: Kube) -> None:
    from kubernetes import client as k8s

    workflow_id = kube.submit({"jobs": [once_then("victim", "sleep 30")]})
    kube.until(workflow_id, "victim", pb.JOB_STATUS_RUNNING)
    workdir = Path(kube.config.data_dir) / "workflows" / workflow_id
    kube.cluster.wait_for(lambda: (workdir / "tried-victim").exists(), what="the command running")
    [job] = kube.cluster.objects("jobs")
    k8s.BatchV1Api(kube.cluster.api_client()).delete_namespaced_job(job["metadata"]["name"], "donut",
                                                                     propagation_policy="Background")
    victim = kube.wait(workflow_id).jobs[0]
    first, second = victim.attempts
    assert first.status == pb.JOB_STATUS_DEAD and "deleted" in first.message, first
    assert second.status == pb.JOB_STATUS_SUCCEEDED


def test_a_job_past_its_timeout_fails(kube: Kube) -> None:
    workflow_id = kube.submit({"jobs": [sh("slow", "sleep 60", timeout=2)]})
    slow = kube.wait(workflow_id).jobs[0]
    assert slow.status == pb.JOB_STATUS_FAILED and ("deadline" in slow.message or "time" in slow.message), slow


def test_cancel_deletes_the_job_its_pods_and_its_secret(kube: Kube) -> None:
    workflow_id = kube.submit({"jobs": [sh("long", "sleep 600")]})
    kube.until(workflow_id, "long", pb.JOB_STATUS_RUNNING)
    kube.dagger.CancelWorkflow(pb.CancelWorkflowRequest(id=workflow_id))
    ended = kube.wait(workflow_id)
    assert ended.status == pb.WORKFLOW_STATUS_TERMINATED and ended.jobs[0].status == pb.JOB_STATUS_TERMINATED
    for plural in ("jobs", "pods", "secrets"):
        kube.cluster.wait_for(lambda plural=plural: not kube.cluster.objects(plural), what=f"no {plural} left")
    deletes = kube.cluster.requests("delete", "jobs")
    assert deletes and all("Background" in json.dumps(d.__dict__, default=str) for d in deletes)  # never orphaning


def test_deleting_a_workflow_deletes_its_finished_jobs_and_secrets_at_once(kube: Kube) -> None:
    doomed, kept = (kube.submit({"jobs": [sh("quick", "true")]}) for _ in range(2))
    for workflow_id in (doomed, kept):
        assert kube.wait(workflow_id).status == pb.WORKFLOW_STATUS_DONE
    assert kube.cluster.objects("jobs", f"donut/workflow={doomed}")  # finished Jobs are kept a while
    kube.dagger.DeleteWorkflow(pb.DeleteWorkflowRequest(id=doomed))
    for plural in ("jobs", "secrets", "pods"):
        assert not kube.cluster.objects(plural, f"donut/workflow={doomed}"), plural
        assert kube.cluster.objects(plural, f"donut/workflow={kept}"), plural


def test_the_reaper_removes_what_finished_or_unknown_workflows_left_and_nothing_else(kube: Kube) -> None:
    finished = kube.submit({"jobs": [sh("quick", "true")]})
    assert kube.wait(finished).status == pb.WORKFLOW_STATUS_DONE
    running = kube.submit({"jobs": [sh("long", "sleep 600")]})
    kube.until(running, "long", pb.JOB_STATUS_RUNNING)
    api = kube.cluster.api_client()
    from kubernetes import client as k8s

    stray = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "stray", "labels": {
        "donut/workflow": "00000000-0000-4000-8000-000000000000"}}, "spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "600"]}]}}}}
    theirs = {**stray, "metadata": {"name": "not-ours", "labels": {"app": "other"}}}
    for job in (stray, theirs):
        k8s.BatchV1Api(api).create_namespaced_job("donut", job)
    k8s.CoreV1Api(api).create_namespaced_secret("donut", {"metadata": {"name": "stray-secret", "labels": {
        "donut/workflow": finished}}, "stringData": {"x": "y"}})

    executor = kube.stack.executor
    deleted = executor.reap()  # type: ignore[union-attr]
    names = {j["metadata"]["name"] for j in kube.cluster.objects("jobs")}
    assert "stray" not in names and "not-ours" in names
    assert any(j["metadata"]["labels"].get("donut/workflow") == running for j in kube.cluster.objects("jobs"))
    assert "Secret/stray-secret" in deleted and kube.cluster.get("secrets", "stray-secret") is None
    assert kube.job(running, "long").status == pb.JOB_STATUS_RUNNING


def test_api_errors_and_expired_watches_are_ridden_out(kube: Kube) -> None:
    kube.cluster.fail_next("create", "jobs", count=2, status=500)
    kube.cluster.fail_next("create", "secrets", count=1, status=429)
    kube.cluster.expire_next_watch("pods", count=2)
    workflow_id = kube.submit({"jobs": [sh("one", "echo one"), sh("two", "echo two")]})
    done = kube.wait(workflow_id)
    assert done.status == pb.WORKFLOW_STATUS_DONE, [(j.name, j.message) for j in done.jobs]

    kube.cluster.fail_next("*", "*", count=10_000, status=503)  # the API server is away for good
    lost = kube.submit({"jobs": [sh("three", "echo three")]})
    job = kube.until(lost, "three", pb.JOB_STATUS_DEAD, timeout=90)
    assert "cannot create its Kubernetes Job" in job.message and "503" in job.message
    assert kube.dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id)).status == pb.WORKFLOW_STATUS_DONE


def test_requests_keep_to_the_rate_limit() -> None:
    from dagger_svc.executors.kubernetes import RateLimit

    limit = RateLimit(qps=50, burst=5)
    started = time.monotonic()
    for _ in range(5 + 25):
        limit.acquire()
    assert time.monotonic() - started >= 25 / 50 * 0.9  # the burst at once, then never faster than the rate
