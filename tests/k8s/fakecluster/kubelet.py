"""The test kubelet and Job controller: turns every created Job into a Pod, runs the pod's
single container command as a local process (own process group) with the container's
environment (Secrets resolved) and its working directory mapped onto host directories,
and writes back the pod phases and the Job's status as a real cluster would, including
retries up to backoffLimit and activeDeadlineSeconds. It also carries out the pod faults
a test injects (image pull failure, OOM kill, eviction, node lost)."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import queue
import random
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.k8s.fakecluster.store import ApiError, Event, Obj, Store, now_iso

logger = logging.getLogger(__name__)

NODE_NAME = "fake-node"
_POD_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_VARIABLE_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ContainerConfigError(Exception):
    """The container cannot start yet (a missing Secret or key): the pod waits."""


@dataclass
class Running:
    """A pod whose container process is alive."""

    namespace: str
    name: str
    owner_uid: str | None
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    started_at: str
    termination_log: Path | None = None  # the host file standing for the container's terminationMessagePath


@dataclass
class JobState:
    """What the Job controller remembers of one Job."""

    namespace: str
    name: str
    uid: str
    deadline: float | None
    backoff_limit: int
    template: Obj
    failed: int = 0
    ttl: float | None = None
    """ttlSecondsAfterFinished: the Job is deleted (Background) that long after it ends."""
    finished: bool = False
    finished_at: float = 0.0


@dataclass
class Kubelet:
    """Runs in one thread; faults from the test run on that thread too (through `call`)."""

    store: Store
    volumes: dict[str, Path]
    work_dir: Path
    host_env: dict[str, str]
    image_pull_failures: dict[str, str] = field(default_factory=dict)
    _inbox: queue.Queue[object] = field(default_factory=queue.Queue)
    _running: dict[tuple[str, str], Running] = field(default_factory=dict)
    _jobs: dict[str, JobState] = field(default_factory=dict)
    _waiting_for_config: dict[tuple[str, str], Obj] = field(default_factory=dict)
    _waiting_for_image: dict[tuple[str, str], Obj] = field(default_factory=dict)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.store.subscribe(self._inbox.put)
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)
        for running in list(self._running.values()):
            self._kill(running)

    def call(self, action: Callable[[], Any]) -> Any:
        """Runs `action` on the kubelet's thread and returns its result (or raises)."""
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = action()
            except Exception as error:  # noqa: BLE001 - handed back to the caller's thread
                outcome["error"] = error
            done.set()

        self._inbox.put(run)
        if not done.wait(30):
            raise TimeoutError("the fake kubelet did not carry out the action within 30 s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result")

    def log_path(self, namespace: str, pod: str) -> Path:
        return self.work_dir / "logs" / f"{namespace}_{pod}.log"

    # -- the loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            try:
                item = self._inbox.get(timeout=0.02)
            except queue.Empty:
                item = _TICK
            if item is None:
                return
            try:
                if isinstance(item, Event):
                    self._on_event(item)
                elif callable(item):
                    item()
                self._sweep()
            except Exception:  # a kubelet that dies would hang every test waiting on it
                logger.exception("the fake kubelet failed on %r", item)

    def _on_event(self, event: Event) -> None:
        obj, metadata = event.obj, event.obj["metadata"]
        key = (metadata["namespace"], metadata["name"])
        if event.plural == "jobs" and event.type == "ADDED":
            self._start_job(obj)
        elif event.plural == "jobs" and event.type == "DELETED":
            self._jobs.pop(metadata["uid"], None)
        elif event.plural == "pods" and event.type == "ADDED":
            self._start_pod(obj)
        elif event.plural == "pods" and event.type == "DELETED":
            self._waiting_for_config.pop(key, None)
            self._waiting_for_image.pop(key, None)
            running = self._running.pop(key, None)
            if running is not None:
                self._kill(running)
            phase = (obj.get("status") or {}).get("phase")
            if phase not in ("Succeeded", "Failed"):
                self._pod_failed(_controller_uid(obj))
        elif event.plural == "secrets":
            for pod in list(self._waiting_for_config.values()):
                self._start_pod(pod)

    def _sweep(self) -> None:
        for key, running in list(self._running.items()):
            code = running.process.poll()
            if code is None:
                continue
            del self._running[key]
            running.log.close()
            exit_code = code if code >= 0 else 128 - code
            self._terminate_pod(running, exit_code, "Completed" if exit_code == 0 else "Error")
        now = time.monotonic()
        for job in list(self._jobs.values()):
            if not job.finished and job.deadline is not None and now >= job.deadline:
                self._deadline_exceeded(job)
            if job.finished and job.ttl is not None and now >= job.finished_at + job.ttl:
                self._jobs.pop(job.uid, None)
                with contextlib.suppress(ApiError):
                    self.store.delete("jobs", job.namespace, job.name, "Background")

    # -- jobs ---------------------------------------------------------------------------

    def _start_job(self, job: Obj) -> None:
        spec = job["spec"]
        if spec.get("suspend"):
            return
        deadline = spec.get("activeDeadlineSeconds")
        state = JobState(job["metadata"]["namespace"], job["metadata"]["name"], job["metadata"]["uid"],
                         time.monotonic() + deadline if deadline is not None else None,
                         int(spec.get("backoffLimit", 6)), spec["template"],
                         ttl=spec.get("ttlSecondsAfterFinished"))
        self._jobs[state.uid] = state
        self._update_job(state, lambda status: status.update(startTime=now_iso(), active=1))
        self._create_pod(state)

    def _create_pod(self, job: JobState) -> None:
        template = job.template
        base = f"{job.name}-"[:58]
        name = base + "".join(random.choices(_POD_SUFFIX_ALPHABET, k=5))
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels.update({"job-name": job.name, "controller-uid": job.uid, "batch.kubernetes.io/job-name": job.name,
                       "batch.kubernetes.io/controller-uid": job.uid})
        pod = {
            "metadata": {
                "name": name, "generateName": base, "labels": labels,
                "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job.name, "uid": job.uid,
                                     "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": {**template.get("spec", {}), "nodeName": NODE_NAME},
            "status": {"phase": "Pending"},
        }
        self.store.create("pods", job.namespace, pod)

    def _update_job(self, job: JobState, change: Callable[[Obj], None]) -> None:
        def apply(current: Obj) -> Obj:
            status = current.setdefault("status", {})
            change(status)
            return current

        try:
            self.store.update("jobs", job.namespace, job.name, apply)
        except ApiError:
            self._jobs.pop(job.uid, None)

    def _finish_job(self, job: JobState, condition: str, reason: str, message: str, **counts: int) -> None:
        job.finished = True
        job.finished_at = time.monotonic()
        now = now_iso()

        def change(status: Obj) -> None:
            status.update(active=0, **counts)
            if condition == "Complete":
                status["completionTime"] = now
                interim = {"type": "SuccessCriteriaMet", "reason": "CompletionsReached",
                           "message": "Reached expected number of succeeded pods"}
            else:
                interim = {"type": "FailureTarget", "reason": reason, "message": message}
            status["conditions"] = [
                {**interim, "status": "True", "lastProbeTime": now, "lastTransitionTime": now},
                {"type": condition, "status": "True", "reason": reason, "message": message, "lastProbeTime": now,
                 "lastTransitionTime": now},
            ]

        self._update_job(job, change)

    def _pod_succeeded(self, owner_uid: str | None) -> None:
        job = self._jobs.get(owner_uid or "")
        if job is not None and not job.finished:
            self._finish_job(job, "Complete", "CompletionsReached", "Reached expected number of succeeded pods",
                             succeeded=1)

    def _pod_failed(self, owner_uid: str | None) -> None:
        job = self._jobs.get(owner_uid or "")
        if job is None or job.finished:
            return
        job.failed += 1
        if job.failed > job.backoff_limit:
            self._finish_job(job, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit",
                             failed=job.failed)
        else:
            self._update_job(job, lambda status: status.update(failed=job.failed, active=1))
            self._create_pod(job)

    def _deadline_exceeded(self, job: JobState) -> None:
        self._finish_job(job, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline",
                         failed=job.failed + 1)
        pods, _ = self.store.list("pods", job.namespace, f"batch.kubernetes.io/controller-uid={job.uid}")
        for pod in pods:
            if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                with contextlib.suppress(ApiError):
                    self.store.delete("pods", job.namespace, pod["metadata"]["name"])

    # -- pods ---------------------------------------------------------------------------

    def _start_pod(self, pod: Obj) -> None:
        metadata, spec = pod["metadata"], pod["spec"]
        key = (metadata["namespace"], metadata["name"])
        self._waiting_for_config.pop(key, None)
        self._waiting_for_image.pop(key, None)
        if self.store.find("pods", *key) is None:
            return
        container = spec["containers"][0]
        image = container.get("image", "")
        failure = self.image_pull_failures.get(image)
        if failure is not None:
            self._waiting_for_image[key] = pod
            message = {"ImagePullBackOff": f'Back-off pulling image "{image}"',
                       "ErrImagePull": f'failed to pull and unpack image "{image}": pull access denied'}.get(
                failure, f"{failure} (injected by the test)")
            self._set_pod_status(pod, "Pending", {"waiting": {"reason": failure, "message": message}})
            return
        try:
            env = self._environment(pod, container)
        except ContainerConfigError as error:
            self._waiting_for_config[key] = pod
            self._set_pod_status(pod, "Pending", {"waiting": {"reason": "CreateContainerConfigError",
                                                              "message": str(error)}})
            return
        self._set_pod_status(pod, "Pending", {"waiting": {"reason": "ContainerCreating"}})
        argv = [_expand(part, env) for part in (container.get("command") or []) + (container.get("args") or [])]
        cwd = self._host_path(pod, container, container.get("workingDir") or "/")
        log = self.log_path(*key).open("wb")
        # the container's terminationMessagePath is a file of its own on the host; the
        # environment naming that path (as a program told where to write it) is pointed there
        message_path = container.get("terminationMessagePath") or "/dev/termination-log"
        termination_log = self.log_path(*key).with_suffix(".termination-log")
        termination_log.unlink(missing_ok=True)
        env = {name: str(termination_log) if value == message_path else value for name, value in env.items()}
        try:
            if not argv:
                raise OSError("the fake kubelet needs the container's command: it has no image entrypoints")
            cwd.mkdir(parents=True, exist_ok=True)
            process = subprocess.Popen(argv, cwd=cwd, env={**self.host_env, **env, "HOSTNAME": metadata["name"]},
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        except OSError as error:
            log.write(f"{error}\n".encode())
            log.close()
            now = now_iso()
            self._set_pod_status(pod, "Failed", {"terminated": {"exitCode": 128, "reason": "StartError",
                                                                "message": str(error), "startedAt": now,
                                                                "finishedAt": now}})
            self._pod_failed(_controller_uid(pod))
            return
        started_at = now_iso()
        self._running[key] = Running(*key, _controller_uid(pod), process, log, started_at, termination_log)
        self._set_pod_status(pod, "Running", {"running": {"startedAt": started_at}}, ready=True)

    def _set_pod_status(self, pod: Obj, phase: str, state: Obj, ready: bool = False, reason: str | None = None,
                        message: str | None = None) -> None:
        container = pod["spec"]["containers"][0]
        image = container.get("image", "")

        def change(current: Obj) -> Obj:
            status: Obj = {"phase": phase, "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "qosClass": "BestEffort",
                           "startTime": (current.get("status") or {}).get("startTime") or now_iso()}
            if reason:
                status["reason"] = reason
            if message:
                status["message"] = message
            container_status: Obj = {"name": container.get("name", "main"), "image": image, "ready": ready,
                                     "restartCount": 0, "started": "running" in state, "state": state,
                                     "imageID": "" if "waiting" in state else f"{image}@sha256:{'0' * 64}"}
            if "waiting" not in state:
                container_id = uuid.uuid5(uuid.NAMESPACE_URL, current["metadata"]["uid"]).hex
                container_status["containerID"] = f"containerd://{container_id}"
            status["containerStatuses"] = [container_status]
            current["status"] = status
            return current

        with contextlib.suppress(ApiError):
            self.store.update("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], change)

    def _terminate_pod(self, running: Running, exit_code: int, container_reason: str, phase: str | None = None,
                       pod_reason: str | None = None, message: str | None = None) -> None:
        pod = self.store.find("pods", running.namespace, running.name)
        if pod is None:
            return
        phase = phase or ("Succeeded" if exit_code == 0 else "Failed")
        terminated = {"exitCode": exit_code, "reason": container_reason, "startedAt": running.started_at,
                      "finishedAt": now_iso()}
        if running.termination_log is not None and running.termination_log.exists():  # as the kubelet keeps it
            terminated["message"] = running.termination_log.read_bytes()[:4096].decode("utf-8", "replace")
        self._set_pod_status(pod, phase, {"terminated": terminated}, reason=pod_reason, message=message)
        if phase == "Succeeded":
            self._pod_succeeded(running.owner_uid)
        elif phase == "Failed":
            self._pod_failed(running.owner_uid)

    def _kill(self, running: Running) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(running.process.pid, signal.SIGKILL)
        running.process.wait()
        running.log.close()

    def _environment(self, pod: Obj, container: Obj) -> dict[str, str]:
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                data = self._secret_data(namespace, source["secretRef"]["name"], source["secretRef"].get("optional"))
                env.update({source.get("prefix", "") + key: value for key, value in data.items()})
        for variable in container.get("env") or []:
            if "value" in variable:
                env[variable["name"]] = _expand(variable["value"], env)
            elif "secretKeyRef" in (variable.get("valueFrom") or {}):
                reference = variable["valueFrom"]["secretKeyRef"]
                data = self._secret_data(namespace, reference["name"], reference.get("optional"))
                if reference["key"] in data:
                    env[variable["name"]] = data[reference["key"]]
                elif not reference.get("optional"):
                    raise ContainerConfigError(f"couldn't find key {reference['key']} in Secret "
                                               f"{namespace}/{reference['name']}")
            elif "fieldRef" in (variable.get("valueFrom") or {}):
                path = variable["valueFrom"]["fieldRef"]["fieldPath"]
                value: Any = pod
                for step in path.split("."):
                    value = value.get(step) if isinstance(value, dict) else None
                env[variable["name"]] = "" if value is None else str(value)
            else:
                env[variable["name"]] = ""
        return env

    def _secret_data(self, namespace: str, name: str, optional: bool | None) -> dict[str, str]:
        secret = self.store.find("secrets", namespace, name)
        if secret is None:
            if optional:
                return {}
            raise ContainerConfigError(f'secret "{name}" not found')
        return {key: base64.b64decode(value).decode() for key, value in (secret.get("data") or {}).items()}

    def _host_path(self, pod: Obj, container: Obj, container_path: str) -> Path:
        """Where a container path lives on this machine: under the host directory of the
        claim (or hostPath) mounted there, else in a scratch root of the pod's own."""
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes") or []}
        mounts = sorted(container.get("volumeMounts") or [], key=lambda mount: -len(mount["mountPath"]))
        for mount in mounts:
            mount_path = mount["mountPath"].rstrip("/") or "/"
            if container_path != mount_path and not container_path.startswith(mount_path.rstrip("/") + "/"):
                continue
            volume = volumes.get(mount["name"]) or {}
            claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
            if claim in self.volumes:
                host = self.volumes[claim]
            elif "hostPath" in volume:
                host = Path(volume["hostPath"]["path"])
            else:
                host = self.work_dir / "volumes" / str(pod["metadata"]["uid"]) / str(mount["name"])
            host = host / str(mount.get("subPath", ""))
            return host / container_path[len(mount_path):].lstrip("/")
        return self.work_dir / "rootfs" / str(pod["metadata"]["uid"]) / container_path.lstrip("/")

    # -- faults (run through `call`) ----------------------------------------------------

    def _take_running(self, namespace: str, pod: str) -> Running:
        running = self._running.pop((namespace, pod), None)
        if running is None:
            raise LookupError(f"pod {namespace}/{pod} has no running container")
        self._kill(running)
        return running

    def allow_image_pull(self, image: str) -> None:
        self.image_pull_failures.pop(image, None)
        for pod in list(self._waiting_for_image.values()):
            if pod["spec"]["containers"][0].get("image") == image:
                self._start_pod(pod)

    def oom_kill(self, namespace: str, pod: str) -> None:
        self._terminate_pod(self._take_running(namespace, pod), 137, "OOMKilled")

    def evict(self, namespace: str, pod: str) -> None:
        self._terminate_pod(self._take_running(namespace, pod), 137, "Error", "Failed", "Evicted",
                            "The node was low on resource: memory. Threshold quantity: 100Mi, available: 50Mi.")

    def lose_node(self, namespace: str, pod: str, delete: bool) -> None:
        running = self._take_running(namespace, pod)
        found = self.store.find("pods", namespace, pod)
        if found is None:
            return
        self._set_pod_status(found, "Unknown", {"running": {"startedAt": running.started_at}}, reason="NodeLost",
                             message=f"Node {NODE_NAME} which was running pod {pod} is unresponsive")
        if delete:
            self.store.delete("pods", namespace, pod)


_TICK = object()


def _controller_uid(obj: Obj) -> str | None:
    for owner in obj["metadata"].get("ownerReferences") or []:
        if owner.get("controller"):
            return str(owner["uid"])
    return None


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` references in command, args and env values."""
    return _VARIABLE_REFERENCE.sub(lambda match: env.get(match[1], match[0]), text)
