"""A Kubernetes API server and kubelet for tests: what the Kubernetes executor is tested
against, since no real API server can run here. The official `kubernetes` client talks
HTTP to it through the kubeconfig it writes, so the executor's code path is the one it
takes against a real cluster. One per test: it starts in milliseconds.

Why not kmock alone: it leaves uid/resourceVersion empty, ignores label selectors, sends
no events for later changes, has no 410, no cascade, stores objects on an injected 500, and
slows down as requests pile up; this small server does those as a real one does, for the
three resources the executor touches (batch/v1 Jobs, v1 Pods, v1 Secrets)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml
from werkzeug.serving import BaseWSGIServer, make_server

from tests.k8s.fakecluster.api import ApiState, Fault, RequestRecord, create_app
from tests.k8s.fakecluster.kubelet import Kubelet
from tests.k8s.fakecluster.store import Obj, Store

__all__ = ["FakeCluster", "RequestRecord"]

T = TypeVar("T")


class FakeCluster:
    """The API server on 127.0.0.1 (a free port), its store and its kubelet.

    `volumes` maps a PersistentVolumeClaim name to the host directory that stands for it:
    a container path `<mountPath>/x` of a mount of that claim is `<host dir>/x`.
    `env` is the host environment every container process starts from (PATH, HOME and
    LANG of this process by default, with this interpreter's bin directory first); the
    container's own env is laid over it."""

    def __init__(self, work_dir: Path, volumes: Mapping[str, Path] | None = None,
                 env: Mapping[str, str] | None = None, namespace: str = "donut",
                 token: str = "fake-cluster-token") -> None:
        self.work_dir = work_dir
        self.namespace = namespace
        self.token = token
        self.store = Store()
        self.kubelet = Kubelet(self.store, dict(volumes or {}), work_dir, dict(env) if env is not None else _host_env())
        self._api = ApiState(self.store, token, work_dir / "logs")
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.kubeconfig = work_dir / "kubeconfig"
        self.url = ""

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> FakeCluster:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request drowns a test's own log
        self._server = make_server("127.0.0.1", 0, create_app(self._api), threaded=True)
        # threaded=True gives a ThreadingMixIn: its request threads must not keep a test alive
        self._server.daemon_threads = True  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-apiserver", daemon=True)
        self._thread.start()
        self.kubelet.start()
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": self.namespace}}],
        }))
        return self

    def stop(self) -> None:
        """Ends the watches, the server and every container process."""
        self.store.close()
        self.kubelet.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` from the kubeconfig, as a user would build it."""
        import kubernetes

        config_file = str(self.kubeconfig)
        return kubernetes.config.new_client_from_config(config_file=config_file)  # type: ignore[no-untyped-call]

    # -- faults -------------------------------------------------------------------------

    def fail_image_pull(self, image: str, reason: str = "ImagePullBackOff") -> None:
        """Pods of `image` started from now on stay Pending, their container waiting with
        `reason` (ImagePullBackOff, ErrImagePull, or any other stuck-pending reason)."""
        self.kubelet.call(lambda: self.kubelet.image_pull_failures.__setitem__(image, reason))

    def allow_image_pull(self, image: str) -> None:
        """Undoes fail_image_pull: the pods waiting on `image` start, as after a kubelet's
        retried pull succeeds."""
        self.kubelet.call(lambda: self.kubelet.allow_image_pull(image))

    def oom_kill(self, pod: str, namespace: str | None = None) -> None:
        """Kills the pod's process: the pod Failed, its container terminated with exitCode
        137 reason OOMKilled. Raises LookupError if no container of that pod is running."""
        self.kubelet.call(lambda: self.kubelet.oom_kill(namespace or self.namespace, pod))

    def evict(self, pod: str, namespace: str | None = None) -> None:
        """Kills the pod's process: pod phase Failed, status.reason Evicted, container
        terminated with exitCode 137 reason Error."""
        self.kubelet.call(lambda: self.kubelet.evict(namespace or self.namespace, pod))

    def lose_node(self, pod: str, namespace: str | None = None, delete: bool = True) -> None:
        """Kills the pod's process, sets its phase Unknown with status.reason NodeLost and,
        if `delete`, then deletes the pod as the node controller eventually does."""
        self.kubelet.call(lambda: self.kubelet.lose_node(namespace or self.namespace, pod, delete))

    def delete_pod(self, pod: str, namespace: str | None = None) -> None:
        """Deletes the pod as `kubectl delete pod` would: its process is killed and its Job
        counts a failure (a new pod if backoffLimit allows, else the Job Failed)."""
        self.kubelet.call(lambda: self.store.delete("pods", namespace or self.namespace, pod))

    def expire_next_watch(self, plural: str = "*", count: int = 1) -> None:
        """The next `count` watches of `plural` (pods, jobs, secrets, or * for any) get an
        ERROR event carrying a 410 Expired Status, then end, as for a compacted revision."""
        with self._api.lock:
            self._api.gone_watches[plural] = self._api.gone_watches.get(plural, 0) + count

    def compact(self) -> None:
        """Forgets the history: any later watch from an earlier resourceVersion gets 410."""
        self.store.compact()

    def fail_next(self, verb: str = "*", plural: str = "*", count: int = 1, status: int = 500) -> None:
        """The next `count` requests of `verb` (create, get, list, watch, patch, update,
        delete, *) on `plural` answer `status` (500, 503, 429 with Retry-After...) with a
        Status body, and change nothing."""
        with self._api.lock:
            self._api.faults.append(Fault(verb, plural, count, status=status))

    def delay_next(self, seconds: float, verb: str = "*", plural: str = "*", count: int = 1) -> None:
        """The next `count` requests of `verb` on `plural` are carried out `seconds` late
        (a client timing out first still finds a create done, as on a real cluster)."""
        with self._api.lock:
            self._api.faults.append(Fault(verb, plural, count, delay=seconds))

    # -- looking -------------------------------------------------------------------------

    def requests(self, verb: str | None = None, plural: str | None = None) -> list[RequestRecord]:
        """Every request so far, in order of arrival, optionally only of a verb/plural."""
        with self._api.lock:
            return [record for record in self._api.requests
                    if verb in (None, record.verb) and plural in (None, record.plural)]

    def get(self, plural: str, name: str, namespace: str | None = None) -> Obj | None:
        """The stored object (a copy, as JSON), or None."""
        return self.store.find(plural, namespace or self.namespace, name)

    def objects(self, plural: str, label_selector: str | None = None, namespace: str | None = None) -> list[Obj]:
        """The stored objects of `plural` in the namespace (copies, as JSON), by name."""
        return self.store.list(plural, namespace or self.namespace, label_selector)[0]

    def pods_of(self, job: str, namespace: str | None = None) -> list[Obj]:
        """The pods the Job controller made for `job`, oldest first."""
        pods = self.objects("pods", f"batch.kubernetes.io/job-name={job}", namespace)
        return sorted(pods, key=lambda pod: int(pod["metadata"]["resourceVersion"]))

    def pod_log(self, pod: str, namespace: str | None = None) -> str:
        path = self.kubelet.log_path(namespace or self.namespace, pod)
        return path.read_text() if path.exists() else ""

    def wait_for(self, condition: Callable[[], T], timeout: float = 30.0, what: str = "the condition") -> T:
        """Polls `condition` until it returns something truthy, and returns that."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"the fake cluster waited {timeout}s for {what}")
            time.sleep(0.02)


def _host_env() -> dict[str, str]:
    import os
    import sys

    environment = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment.get("PATH", "/usr/bin:/bin")])
    return environment
