"""The test API server and kubelet, driven only through the official `kubernetes` client
as the executor drives a real cluster: these tests are also the example of how to talk
to it (kubeconfig, typed models, watches from a list's resourceVersion, propagation
policies) and of what each injected fault looks like from the client's side."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.k8s.fakecluster import FakeCluster

NAMESPACE = "donut"
MOUNT = "/srv/workflows"


@pytest.fixture
def api(fake_cluster: FakeCluster) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=str(fake_cluster.kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture
def batch(api: client.ApiClient) -> client.BatchV1Api:
    return client.BatchV1Api(api)


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


def job_manifest(name: str, script: str, image: str = "busybox:1.36", backoff_limit: int = 0,
                 deadline: int | None = None, secret: str | None = None,
                 labels: dict[str, str] | None = None) -> client.V1Job:
    """A Job as the executor renders one: one container, the workflows claim mounted, the
    working dir on it, a secret value through secretKeyRef."""
    env = [client.V1EnvVar(name="PLAIN", value="plain-value")]
    if secret:
        env.append(client.V1EnvVar(name="X", value_from=client.V1EnvVarSource(
            secret_key_ref=client.V1SecretKeySelector(name=secret, key="token"))))
    labels = labels or {"donut/workflow": "wf1", "donut/job": name}
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1JobSpec(
            backoff_limit=backoff_limit,
            active_deadline_seconds=deadline,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    containers=[client.V1Container(
                        name="job", image=image, command=["sh", "-c"], args=[script], env=env,
                        working_dir=f"{MOUNT}/wf1/{name}",
                        volume_mounts=[client.V1VolumeMount(name="workflows", mount_path=MOUNT)],
                    )],
                    volumes=[client.V1Volume(name="workflows", persistent_volume_claim=(
                        client.V1PersistentVolumeClaimVolumeSource(claim_name="donut-workflows")))],
                ),
            ),
        ),
    )


def owned_secret(name: str, job: client.V1Job, value: str) -> client.V1Secret:
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels={"donut/workflow": "wf1"}, owner_references=[
            client.V1OwnerReference(api_version="batch/v1", kind="Job", name=job.metadata.name,
                                    uid=job.metadata.uid)]),
        string_data={"token": value})


def wait_for_job(batch: client.BatchV1Api, name: str, condition: str,
                 since: str | None = None) -> tuple[client.V1Job, list[str]]:
    """Watches the Job from `since` (else from a list's resourceVersion) until it has
    `condition`; returns it and the event types seen."""
    seen: list[str] = []
    if since is None:
        jobs = batch.list_namespaced_job(NAMESPACE, field_selector=f"metadata.name={name}")
        for job in jobs.items:
            if _has_condition(job, condition):
                return job, seen
        since = jobs.metadata.resource_version
    stream = watch.Watch().stream(batch.list_namespaced_job, NAMESPACE, field_selector=f"metadata.name={name}",
                                  resource_version=since, timeout_seconds=60)
    for event in stream:
        seen.append(event["type"])
        if _has_condition(event["object"], condition):
            return event["object"], seen
    raise AssertionError(f"job {name} never had condition {condition}; events {seen}")


def _has_condition(job: client.V1Job, condition: str) -> bool:
    return any(c.type == condition and c.status == "True" for c in (job.status.conditions or []))


def wait_for_pod(cluster: FakeCluster, core: client.CoreV1Api, job: str, phase: str,
                 reason: str | None = None) -> client.V1Pod:
    def current() -> client.V1Pod | None:
        for pod in core.list_namespaced_pod(NAMESPACE, label_selector=f"job-name={job}").items:
            if pod.status.phase == phase and (reason is None or _pod_reason(pod) == reason):
                return pod
        return None

    return cluster.wait_for(current, what=f"a pod of {job} {phase} {reason or ''}")


def _pod_reason(pod: client.V1Pod) -> str | None:
    if pod.status.reason:
        return str(pod.status.reason)
    for status in pod.status.container_statuses or []:
        state = status.state
        for detail in (state.waiting, state.terminated):
            if detail is not None and detail.reason:
                return str(detail.reason)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- the happy path ----------------------------------------------------------------------


def test_a_job_runs_its_command_with_the_secret_in_the_mapped_dir_and_completes(
        fake_cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api, workflows_dir: Path) -> None:
    start = batch.list_namespaced_job(NAMESPACE).metadata.resource_version
    manifest = job_manifest("fruit", 'echo "$X $PLAIN" > out.txt', secret="fruit-token")
    job = batch.create_namespaced_job(NAMESPACE, manifest)
    core.create_namespaced_secret(NAMESPACE, owned_secret("fruit-token", job, "s3cret"))
    assert job.metadata.uid and job.metadata.resource_version and job.metadata.creation_timestamp
    assert job.metadata.namespace == NAMESPACE

    done, events = wait_for_job(batch, "fruit", "Complete", since=start)

    assert (workflows_dir / "wf1" / "fruit" / "out.txt").read_text() == "s3cret plain-value\n"
    assert done.status.succeeded == 1 and done.status.active == 0
    assert done.status.start_time is not None and done.status.completion_time is not None
    assert events[0] == "ADDED" and set(events[1:]) == {"MODIFIED"}
    pod = core.list_namespaced_pod(NAMESPACE, label_selector="job-name=fruit").items[0]
    assert pod.metadata.name.startswith("fruit-") and len(pod.metadata.name) == len("fruit-") + 5
    assert pod.metadata.labels["donut/workflow"] == "wf1"
    assert pod.metadata.labels["controller-uid"] == job.metadata.uid
    assert pod.metadata.owner_references[0].uid == job.metadata.uid
    assert pod.status.phase == "Succeeded"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0


def test_a_watch_sees_added_then_each_change_of_a_pod(
        fake_cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api) -> None:
    start = core.list_namespaced_pod(NAMESPACE).metadata.resource_version
    batch.create_namespaced_job(NAMESPACE, job_manifest("seen", "true"))

    phases: list[tuple[str, str]] = []
    for event in watch.Watch().stream(core.list_namespaced_pod, NAMESPACE, resource_version=start,
                                      label_selector="job-name=seen", timeout_seconds=60):
        phases.append((event["type"], event["object"].status.phase))
        if event["object"].status.phase == "Succeeded":
            break

    assert phases[0] == ("ADDED", "Pending")
    assert ("MODIFIED", "Running") in phases
    assert phases[-1] == ("MODIFIED", "Succeeded")


def test_a_watch_without_resource_version_starts_with_what_exists(
        fake_cluster: FakeCluster, core: client.CoreV1Api) -> None:
    core.create_namespaced_secret(NAMESPACE, client.V1Secret(metadata=client.V1ObjectMeta(name="old")))

    first = next(iter(watch.Watch().stream(core.list_namespaced_secret, NAMESPACE, timeout_seconds=5)))

    assert first["type"] == "ADDED" and first["object"].metadata.name == "old"


def test_a_failing_command_fails_the_pod_and_the_job(
        fake_cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api) -> None:
    batch.create_namespaced_job(NAMESPACE, job_manifest("broken", "echo oops; exit 3"))

    failed, _ = wait_for_job(batch, "broken", "Failed")

    pod = wait_for_pod(fake_cluster, core, "broken", "Failed")
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3
    assert pod.status.container_statuses[0].state.terminated.reason == "Error"
    assert failed.status.failed == 1
    assert [c.reason for c in failed.status.conditions if c.type == "Failed"] == ["BackoffLimitExceeded"]
    assert core.read_namespaced_pod_log(pod.metadata.name, NAMESPACE) == "oops\n"


def test_what_a_container_writes_to_its_termination_message_path_is_its_terminated_message(
        fake_cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api) -> None:
    job = job_manifest("says", 'echo "last words" > "$PLAIN"; exit 3')
    job.spec.template.spec.containers[0].env[0].value = "/dev/termination-log"  # where it is told to write it
    batch.create_namespaced_job(NAMESPACE, job)

    pod = wait_for_pod(fake_cluster, core, "says", "Failed")
    assert pod.status.container_statuses[0].state.terminated.message == "last words\n"
    assert not Path("/dev/termination-log").exists()  # the host's own /dev is never written


def test_backoff_limit_makes_new_pods(fake_cluster: FakeCluster, batch: client.BatchV1Api) -> None:
    batch.create_namespaced_job(NAMESPACE, job_manifest("again", "exit 1", backoff_limit=1))

    failed, _ = wait_for_job(batch, "again", "Failed")

    assert failed.status.failed == 2
    assert len(fake_cluster.pods_of("again")) == 2


# -- selectors, deletes ------------------------------------------------------------------


def test_label_selectors_filter_lists(fake_cluster: FakeCluster, core: client.CoreV1Api) -> None:
    for name, labels in [("a", {"donut/workflow": "w1", "tier": "x"}), ("b", {"donut/workflow": "w2"}),
                         ("c", {"other": "1"})]:
        core.create_namespaced_secret(NAMESPACE, client.V1Secret(metadata=client.V1ObjectMeta(name=name,
                                                                                              labels=labels)))

    def names(selector: str) -> list[str]:
        return [s.metadata.name for s in core.list_namespaced_secret(NAMESPACE, label_selector=selector).items]

    assert names("donut/workflow=w1") == ["a"]
    assert names("donut/workflow") == ["a", "b"]
    assert names("!donut/workflow") == ["c"]
    assert names("donut/workflow in (w1,w2),tier!=x") == ["b"]
    assert names("donut/workflow notin (w1)") == ["b", "c"]
    assert [s.metadata.name for s in core.list_secret_for_all_namespaces(label_selector="other").items] == ["c"]


def _running_job(cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api,
                 name: str) -> tuple[client.V1Job, client.V1Pod, int]:
    job = batch.create_namespaced_job(NAMESPACE, job_manifest(name, "echo $$ > pid; exec sleep 300"))
    core.create_namespaced_secret(NAMESPACE, owned_secret(f"{name}-token", job, "v"))
    pod = wait_for_pod(cluster, core, name, "Running")
    pid_file = cluster.kubelet.volumes["donut-workflows"] / "wf1" / name / "pid"
    pid = int(cluster.wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the pid"))
    return job, pod, pid


@pytest.mark.parametrize("how", ["Background", "Foreground", "body"])
def test_deleting_a_job_with_propagation_removes_its_pods_and_secret(
        fake_cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api, how: str) -> None:
    _, pod, pid = _running_job(fake_cluster, batch, core, "cancelled")

    if how == "body":
        options = client.V1DeleteOptions(propagation_policy="Background")
        batch.delete_namespaced_job("cancelled", NAMESPACE, body=options)
    else:
        batch.delete_namespaced_job("cancelled", NAMESPACE, propagation_policy=how)

    assert batch.list_namespaced_job(NAMESPACE).items == []
    assert core.list_namespaced_pod(NAMESPACE).items == []
    assert core.list_namespaced_secret(NAMESPACE).items == []
    fake_cluster.wait_for(lambda: not _alive(pid), what="the process to be killed")


@pytest.mark.parametrize("policy", [None, "Orphan"])
def test_deleting_a_job_without_propagation_orphans_its_pod_and_secret(
        fake_cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api, policy: str | None) -> None:
    _, pod, pid = _running_job(fake_cluster, batch, core, "orphaning")

    batch.delete_namespaced_job("orphaning", NAMESPACE, propagation_policy=policy)

    with pytest.raises(ApiException) as raised:
        batch.read_namespaced_job("orphaning", NAMESPACE)
    assert raised.value.status == 404
    assert [p.metadata.name for p in core.list_namespaced_pod(NAMESPACE).items] == [pod.metadata.name]
    assert [s.metadata.name for s in core.list_namespaced_secret(NAMESPACE).items] == ["orphaning-token"]
    assert _alive(pid)
    core.delete_namespaced_pod(pod.metadata.name, NAMESPACE)
    fake_cluster.wait_for(lambda: not _alive(pid), what="the process to be killed")


def test_a_job_past_its_deadline_is_killed_and_fails_with_deadline_exceeded(
        fake_cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api) -> None:
    batch.create_namespaced_job(NAMESPACE, job_manifest("slow", "echo $$ > pid; exec sleep 300", deadline=1))
    pid_file = fake_cluster.kubelet.volumes["donut-workflows"] / "wf1" / "slow" / "pid"
    pid = int(fake_cluster.wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the pid"))

    failed, _ = wait_for_job(batch, "slow", "Failed")

    assert [c.reason for c in failed.status.conditions if c.type == "Failed"] == ["DeadlineExceeded"]
    fake_cluster.wait_for(lambda: not _alive(pid), what="the process to be killed")
    fake_cluster.wait_for(lambda: not core.list_namespaced_pod(NAMESPACE).items, what="the pod to be deleted")


def test_a_finished_job_with_a_ttl_goes_with_its_pods(
        fake_cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api) -> None:
    manifest = job_manifest("brief", "true")
    manifest.spec.ttl_seconds_after_finished = 0
    start = batch.list_namespaced_job(NAMESPACE).metadata.resource_version
    batch.create_namespaced_job(NAMESPACE, manifest)

    events = []
    for event in watch.Watch().stream(batch.list_namespaced_job, NAMESPACE, resource_version=start,
                                      timeout_seconds=30):
        events.append(event["type"])
        if event["type"] == "DELETED":
            assert _has_condition(event["object"], "Complete")
            break
    assert events[-1] == "DELETED"
    assert core.list_namespaced_pod(NAMESPACE).items == []


def test_a_job_without_containers_is_refused(fake_cluster: FakeCluster, batch: client.BatchV1Api) -> None:
    manifest = job_manifest("empty", "true")
    manifest.spec.template.spec.containers[0].image = None

    with pytest.raises(ApiException) as raised:
        batch.create_namespaced_job(NAMESPACE, manifest)

    assert raised.value.status == 422
    assert "spec.template.spec.containers[0].image" in raised.value.body
    assert batch.list_namespaced_job(NAMESPACE).items == []


def test_create_of_an_existing_job_is_a_conflict(fake_cluster: FakeCluster, batch: client.BatchV1Api) -> None:
    batch.create_namespaced_job(NAMESPACE, job_manifest("twice", "true"))

    with pytest.raises(ApiException) as raised:
        batch.create_namespaced_job(NAMESPACE, job_manifest("twice", "true"))

    assert raised.value.status == 409
    assert "AlreadyExists" in raised.value.body


# -- API faults --------------------------------------------------------------------------


def test_an_expired_watch_is_a_410_and_a_relist_then_watch_works(
        fake_cluster: FakeCluster, core: client.CoreV1Api) -> None:
    listed = core.list_namespaced_secret(NAMESPACE)
    fake_cluster.expire_next_watch("secrets")

    with pytest.raises(ApiException) as raised:
        list(watch.Watch().stream(core.list_namespaced_secret, NAMESPACE,
                                  resource_version=listed.metadata.resource_version, timeout_seconds=5))
    assert raised.value.status == 410

    relisted = core.list_namespaced_secret(NAMESPACE)
    core.create_namespaced_secret(NAMESPACE, client.V1Secret(metadata=client.V1ObjectMeta(name="after")))
    event = next(iter(watch.Watch().stream(core.list_namespaced_secret, NAMESPACE,
                                           resource_version=relisted.metadata.resource_version, timeout_seconds=5)))
    assert (event["type"], event["object"].metadata.name) == ("ADDED", "after")


def test_a_watch_from_a_compacted_resource_version_is_a_410(
        fake_cluster: FakeCluster, core: client.CoreV1Api) -> None:
    old = core.list_namespaced_secret(NAMESPACE).metadata.resource_version
    core.create_namespaced_secret(NAMESPACE, client.V1Secret(metadata=client.V1ObjectMeta(name="s")))
    fake_cluster.compact()

    with pytest.raises(ApiException) as raised:
        list(watch.Watch().stream(core.list_namespaced_secret, NAMESPACE, resource_version=old, timeout_seconds=5))

    assert raised.value.status == 410


@pytest.mark.parametrize("status", [500, 503, 429])
def test_an_injected_error_raises_and_stores_nothing(fake_cluster: FakeCluster, batch: client.BatchV1Api,
                                                     status: int) -> None:
    fake_cluster.fail_next("create", "jobs", status=status)

    with pytest.raises(ApiException) as raised:
        batch.create_namespaced_job(NAMESPACE, job_manifest("unlucky", "true"))

    assert raised.value.status == status
    assert batch.list_namespaced_job(NAMESPACE).items == []
    assert fake_cluster.pods_of("unlucky") == []
    batch.create_namespaced_job(NAMESPACE, job_manifest("unlucky", "true"))
    assert [j.metadata.name for j in batch.list_namespaced_job(NAMESPACE).items] == ["unlucky"]


def test_a_slow_answer_times_the_client_out(fake_cluster: FakeCluster) -> None:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(fake_cluster.kubeconfig), client_configuration=configuration)
    configuration.retries = False  # else urllib3 re-sends the timed-out request (see the next test)
    batch = client.BatchV1Api(client.ApiClient(configuration))
    fake_cluster.delay_next(3, "list", "jobs")

    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        batch.list_namespaced_job(NAMESPACE, _request_timeout=0.3)


def test_the_default_client_resends_a_timed_out_request(fake_cluster: FakeCluster, batch: client.BatchV1Api) -> None:
    fake_cluster.delay_next(3, "list", "jobs")

    assert batch.list_namespaced_job(NAMESPACE, _request_timeout=0.3).items == []

    assert len(fake_cluster.requests("list", "jobs")) == 2


def test_the_request_log_counts_creates(fake_cluster: FakeCluster, batch: client.BatchV1Api) -> None:
    for index in range(3):
        batch.create_namespaced_job(NAMESPACE, job_manifest(f"j{index}", "true"))
    batch.list_namespaced_job(NAMESPACE)

    creates = fake_cluster.requests("create", "jobs")

    assert [r.path for r in creates] == [f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"] * 3
    assert all(r.status == 201 for r in creates)
    assert creates[0].started <= creates[1].started <= creates[2].started <= time.monotonic()
    assert len(fake_cluster.requests("list", "jobs")) == 1


def test_version_and_a_wrong_token(fake_cluster: FakeCluster, api: client.ApiClient) -> None:
    assert client.VersionApi(api).get_code().minor == "33"

    stranger = client.ApiClient(client.Configuration(host=fake_cluster.url))
    with pytest.raises(ApiException) as raised:
        client.CoreV1Api(stranger).list_namespaced_pod(NAMESPACE)
    assert raised.value.status == 401


def test_status_subresource_patch_changes_only_the_status(
        fake_cluster: FakeCluster, core: client.CoreV1Api) -> None:
    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="bare", labels={"a": "b"}),
                       spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox",
                                                                            command=["sleep", "300"])]))
    core.create_namespaced_pod(NAMESPACE, pod)
    fake_cluster.wait_for(lambda: core.read_namespaced_pod("bare", NAMESPACE).status.phase == "Running")

    patched = core.patch_namespaced_pod("bare", NAMESPACE, {"metadata": {"labels": {"c": "d"}},
                                                            "status": {"phase": "Failed"}})

    assert patched.metadata.labels == {"a": "b", "c": "d"} and patched.status.phase == "Running"
    core.delete_namespaced_pod("bare", NAMESPACE)


def test_a_replace_from_a_stale_resource_version_is_a_conflict(
        fake_cluster: FakeCluster, core: client.CoreV1Api) -> None:
    created = core.create_namespaced_secret(NAMESPACE, client.V1Secret(
        metadata=client.V1ObjectMeta(name="s", labels={"v": "1"})))
    core.patch_namespaced_secret("s", NAMESPACE, {"metadata": {"labels": {"v": "2"}}})

    created.metadata.labels = {"v": "3"}
    with pytest.raises(ApiException) as raised:
        core.replace_namespaced_secret("s", NAMESPACE, created)

    assert raised.value.status == 409
    assert core.read_namespaced_secret("s", NAMESPACE).metadata.labels == {"v": "2"}


# -- pod faults --------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "ErrImagePull"])
def test_an_image_that_cannot_be_pulled_leaves_the_pod_pending(
        fake_cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api, reason: str) -> None:
    fake_cluster.fail_image_pull("registry.example/private:1", reason)
    batch.create_namespaced_job(NAMESPACE, job_manifest("private", "true", image="registry.example/private:1"))

    pod = wait_for_pod(fake_cluster, core, "private", "Pending", reason)

    assert pod.status.container_statuses[0].state.waiting.reason == reason
    assert batch.read_namespaced_job("private", NAMESPACE).status.active == 1

    fake_cluster.allow_image_pull("registry.example/private:1")

    wait_for_job(batch, "private", "Complete")


def test_a_missing_secret_leaves_the_pod_pending_until_it_appears(
        fake_cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api, workflows_dir: Path) -> None:
    job = batch.create_namespaced_job(NAMESPACE, job_manifest("late", "echo $X > out.txt", secret="late-token"))
    wait_for_pod(fake_cluster, core, "late", "Pending", "CreateContainerConfigError")

    core.create_namespaced_secret(NAMESPACE, owned_secret("late-token", job, "finally"))

    wait_for_job(batch, "late", "Complete")
    assert (workflows_dir / "wf1" / "late" / "out.txt").read_text() == "finally\n"


def test_oom_killed(fake_cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api) -> None:
    _, pod, pid = _running_job(fake_cluster, batch, core, "hungry")

    fake_cluster.oom_kill(pod.metadata.name)

    failed = wait_for_pod(fake_cluster, core, "hungry", "Failed")
    terminated = failed.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")
    assert not _alive(pid)
    job, _ = wait_for_job(batch, "hungry", "Failed")
    assert [c.reason for c in job.status.conditions if c.type == "Failed"] == ["BackoffLimitExceeded"]


def test_evicted(fake_cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api) -> None:
    _, pod, pid = _running_job(fake_cluster, batch, core, "evicted")

    fake_cluster.evict(pod.metadata.name)

    failed = wait_for_pod(fake_cluster, core, "evicted", "Failed", "Evicted")
    assert "low on resource" in failed.status.message
    assert not _alive(pid)
    wait_for_job(batch, "evicted", "Failed")


def test_a_deleted_pod_kills_its_process_and_fails_the_job(
        fake_cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api) -> None:
    _, pod, pid = _running_job(fake_cluster, batch, core, "deleted")
    start = core.list_namespaced_pod(NAMESPACE).metadata.resource_version

    fake_cluster.delete_pod(pod.metadata.name)

    event = next(iter(watch.Watch().stream(core.list_namespaced_pod, NAMESPACE, resource_version=start,
                                           timeout_seconds=5)))
    assert (event["type"], event["object"].metadata.name) == ("DELETED", pod.metadata.name)
    fake_cluster.wait_for(lambda: not _alive(pid), what="the process to be killed")
    wait_for_job(batch, "deleted", "Failed")


def test_node_lost(fake_cluster: FakeCluster, batch: client.BatchV1Api, core: client.CoreV1Api) -> None:
    _, pod, pid = _running_job(fake_cluster, batch, core, "lost")
    start = core.list_namespaced_pod(NAMESPACE).metadata.resource_version

    fake_cluster.lose_node(pod.metadata.name)

    events: list[tuple[str, Any, Any]] = []
    for event in watch.Watch().stream(core.list_namespaced_pod, NAMESPACE, resource_version=start, timeout_seconds=5):
        events.append((event["type"], event["object"].status.phase, event["object"].status.reason))
        if event["type"] == "DELETED":
            break
    assert events == [("MODIFIED", "Unknown", "NodeLost"), ("DELETED", "Unknown", "NodeLost")]
    assert not _alive(pid)
    wait_for_job(batch, "lost", "Failed")
