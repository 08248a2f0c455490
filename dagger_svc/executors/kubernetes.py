"""The Kubernetes executor: each attempt is a Kubernetes Job (rendered from the editable
template by `kube_render`) whose one container runs `streamed-job`, the same wrapper the
wrapper executor starts on this host: it fetches inputs, streams the command's output to
dagger and reports the end over gRPC with the attempt's token, which the Job gets from a
Secret of its own.

The executor reports an attempt itself only when the wrapper could not: the pod never
started (an image that cannot be pulled, a pod that cannot be scheduled, past the pending
grace), its container was killed (OOMKilled, the Job's deadline), it was evicted, its pod or
Job vanished, or its node was lost. It tells a wrapper that reported from one that did not
by the termination message the wrapper writes last (Kubernetes keeps it in the container's
status). Job names are deterministic, so a launch that finds its Job already there adopts
it, and a scheduler started after another stopped follows the Jobs that still run.

Everything goes through the official client, over plain HTTP(S), rate limited, with every
API failure (5xx, throttling, timeouts) retried with backoff; nothing here crashes the
scheduler. Objects are read as JSON (dicts), not as the client's models.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from dagger_svc.core.records import Outcome
from dagger_svc.executors.base import (
    AttemptLogs,
    Launch,
    Report,
    outcome_of,
    report_for_the_wrapper,
    run_spec,
    wrapper_environment,
)
from dagger_svc.executors.kube_render import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_WORKFLOW,
    RenderSettings,
    check_template,
    job_name,
    owned_by,
    render,
)
from dagger_svc.executors.local import not_started
from donut_common.auth import JobTokens
from streamed_job.outcome import read_termination_message
from streamed_job.spec import FetchSettings, SaveSettings

log = logging.getLogger(__name__)

TERMINATION_LOG = "/dev/termination-log"  # Kubernetes' terminationMessagePath, kept in the container's status
STUCK_REASONS = frozenset({"ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError", "CreateContainerError",
                           "InvalidImageName", "Unschedulable"})
"""Why a pod may stay pending: it fails once the pending grace has passed."""
HOPELESS_REASONS = frozenset({"InvalidImageName"})
"""Pending reasons that never clear up: they fail at once."""
LOST_REASONS = frozenset({"Evicted", "NodeLost", "Shutdown", "Terminated", "NodeShutdown"})
"""Why a node ends a pod that did nothing wrong: the attempt is lost (and run again)."""
REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read: seconds of each API request
WATCH_SECONDS = 240            # a watch asks the server to end it after this long (then it is renewed)


@dataclass(frozen=True)
class KubernetesSettings:
    """Where and how the executor runs Jobs."""

    template: str
    """The job template's text (see k8s/base/job-template.yaml)."""
    namespace: str = "donut"
    """The namespace of the Jobs, their pods and Secrets."""
    mount_path: str = "/srv/workflows"
    """Where the shared workflows volume is mounted in the job's container."""
    claim_name: str = "donut-workflows"
    """The PersistentVolumeClaim of the shared workflows volume (ReadWriteMany)."""
    callback_endpoint: str = ""
    """host:port at which a job's wrapper reaches dagger and cellar."""
    qps: float = 20.0
    """API requests per second, on average (client-side rate limit)."""
    burst: int = 30
    """API requests that may go at once before the rate limit applies."""
    pending_grace: float = 300.0
    """Seconds a pod may stay stuck pending (an image it cannot pull...) before its attempt fails."""
    kill_grace: float = 10.0
    """Seconds a job's command gets between SIGTERM and SIGKILL (the wrapper's own grace)."""
    resync: float = 30.0
    """Seconds between two full listings of the Jobs and pods (besides the watch)."""
    reap_interval: float = 300.0
    """Seconds between two passes of the reaper (0: no reaper)."""
    ttl_seconds_after_finished: int = 86400
    """How long Kubernetes keeps a finished Job."""
    retries: int = 5
    """Tries of one API request that fails for a passing reason (5xx, throttling, timeouts)."""
    fetch: FetchSettings = field(default_factory=FetchSettings)
    save: SaveSettings = field(default_factory=SaveSettings)


@dataclass
class _Attempt:
    workflow_id: str
    job: str
    number: int
    name: str
    token_id: str = ""
    created: bool = False  # its Job exists (made, or found there): from then on, its vanishing is noticed
    killed: bool = False
    stuck_since: float | None = None  # when its pod was first seen stuck pending


class KubernetesExecutor:
    """Runs attempts as Kubernetes Jobs; see the module's docstring."""

    def __init__(self, api: k8s.ApiClient, logs: AttemptLogs, settings: KubernetesSettings,
                 tokens: JobTokens | None = None, workflow_state: Callable[[str], str] = lambda _: "unknown",
                 clock: Callable[[], float] = time.monotonic, launchers: int = 4) -> None:
        check_template(settings.template)  # a template that cannot work stops the start, not every launch
        self.api = api
        self.logs = logs
        self.settings = settings
        self.tokens = tokens
        self.workflow_state = workflow_state
        """"running", "finished" or "unknown": what the reaper may remove."""
        self.report: Report = not_started
        self.clock = clock
        self.batch = k8s.BatchV1Api(api)
        self.core = k8s.CoreV1Api(api)
        self.rate = RateLimit(settings.qps, settings.burst, clock)
        self._active: dict[str, _Attempt] = {}  # by Job name
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._launchers = ThreadPoolExecutor(max_workers=launchers, thread_name_prefix="kube-launch")
        self._threads: list[threading.Thread] = []
        self._watching: set[Any] = set()  # the watches' answers being read (shut down to end them at close)

    # ---- the Executor protocol -------------------------------------------------------

    def start(self, report: Report) -> None:
        self.report = report
        loops: list[tuple[str, Callable[[], None]]] = [
            ("kube-pods", lambda: self._watch("pods", self.core.list_namespaced_pod, self._resync,
                                              lambda kind, pod: self._pod_changed(pod, deleted=kind == "DELETED"))),
            ("kube-jobs", lambda: self._watch("Jobs", self.batch.list_namespaced_job, self._jobs_version,
                                              self._job_event)),
            ("kube-resync", self._resync_loop)]
        if self.settings.reap_interval > 0:
            loops.append(("kube-reaper", self._reap_loop))
        for name, loop in loops:
            thread = threading.Thread(target=loop, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def launch(self, launch: Launch) -> None:
        name = job_name(launch.workflow_id, launch.job, launch.attempt)
        with self._lock:
            if name in self._active or self._closing.is_set():
                return
            attempt = self._active[name] = _Attempt(launch.workflow_id, launch.job, launch.attempt, name)
        self._launchers.submit(self._launch, attempt, launch)

    def kill(self, workflow_id: str, job: str, attempt: int) -> None:
        name = job_name(workflow_id, job, attempt)
        with self._lock:
            running = self._active.get(name)
            if running is None:
                return
            running.killed = True
        self._launchers.submit(self._delete_job, name)

    def lost(self, workflow_id: str, job: str, attempt: int) -> bool:
        """On resume: an attempt whose Job is still there is adopted (its end is reported
        like any other's); without one, it is lost."""
        name = job_name(workflow_id, job, attempt)
        with self._lock:
            if name in self._active:
                return False
        try:
            found = self._call(self.batch.read_namespaced_job, name, self.settings.namespace)
        except ApiException as e:
            found = None if e.status == 404 else {}
        except Exception:  # noqa: BLE001 - the API server is away: followed, and found out at a resync
            found = {}
        if found is not None and (not found or _ours(found, workflow_id, job, attempt)):
            with self._lock:
                self._active.setdefault(name, _Attempt(workflow_id, job, attempt, name, created=True))
            return False
        self.logs.end(workflow_id, job, attempt)
        return True

    def close(self) -> None:
        """Stops following Jobs; the Jobs themselves run on (the next scheduler adopts them)."""
        self._closing.set()
        with self._lock:
            watching = list(self._watching)
        for response in watching:
            with contextlib.suppress(Exception):
                response.shutdown()  # unblocks the watch thread's read
        self._launchers.shutdown(wait=True, cancel_futures=True)
        for thread in self._threads:
            thread.join(timeout=10)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._active)

    # ---- launching -------------------------------------------------------------------

    def _launch(self, attempt: _Attempt, launch: Launch) -> None:
        try:
            token = self._mint(attempt, launch)
        except Exception as e:  # noqa: BLE001 - the attempt fails, the executor goes on
            self._end(attempt, Outcome(message=f"cannot mint the job token: {type(e).__name__}", lost=True))
            return
        s = self.settings
        workdir = f"{s.mount_path.rstrip('/')}/{launch.workflow_id}"
        run = run_spec(replace(launch, workflow_dir=workdir), dagger_endpoint=s.callback_endpoint)
        try:
            job, secret = render(s.template, RenderSettings(
                workflow_id=launch.workflow_id, job=launch.job, attempt=launch.attempt, image=launch.spec.image,
                spec_env=wrapper_environment(run, s.kill_grace, s.fetch, s.save, TERMINATION_LOG), token=token,
                timeout=launch.spec.timeout, workdir_prefix=launch.spec.workdir_prefix,
                pod=launch.spec.kubernetes,  # type: ignore[arg-type]  # checked by the definition's parser
                namespace=s.namespace, mount_path=s.mount_path, claim_name=s.claim_name,
                callback_endpoint=s.callback_endpoint, ttl_seconds_after_finished=s.ttl_seconds_after_finished))
        except ValueError as e:
            self._end(attempt, Outcome(message=f"cannot render its Kubernetes Job: {e}"))
            return
        try:
            self._create(attempt, job, secret)
        except Exception as e:  # noqa: BLE001 - the API server is away or refuses: this attempt is lost
            log.warning("cannot create the Kubernetes Job %s: %s", attempt.name, e)
            self._end(attempt, Outcome(message=f"cannot create its Kubernetes Job: {_why(e)}", lost=True))

    def _create(self, attempt: _Attempt, job: dict[str, Any], secret: dict[str, Any]) -> None:
        """Secret, Job, then the Secret owned by the Job (so it goes with it). A Job already
        there (a launch repeated after a restart) is adopted, with the Secret it has."""
        ns = self.settings.namespace
        try:
            self._call(self.core.create_namespaced_secret, ns, secret)
        except ApiException as e:
            if e.status != 409:
                raise
            if self._existing_job(attempt) is not None:
                return self._adopted(attempt)
            self._call(self.core.delete_namespaced_secret, attempt.name, ns)  # left by a launch cut short
            self._call(self.core.create_namespaced_secret, ns, secret)
        try:
            created = self._call(self.batch.create_namespaced_job, ns, job)
        except ApiException as e:
            if e.status != 409:
                raise
            return self._adopted(attempt)
        attempt.created = True
        with contextlib.suppress(ApiException):  # (without an owner the reaper removes it)
            self._call(self.core.patch_namespaced_secret, attempt.name, ns,
                       {"metadata": owned_by(secret, attempt.name, created["metadata"]["uid"])["metadata"]})
        with self._lock:
            if attempt.killed:  # cancelled while it was being created
                self._launchers.submit(self._delete_job, attempt.name)

    def _existing_job(self, attempt: _Attempt) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._call(self.batch.read_namespaced_job, attempt.name, self.settings.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return found

    def _adopted(self, attempt: _Attempt) -> None:
        """The Job was there: it runs with the token it was made with; ours goes."""
        self._revoke(attempt)
        attempt.token_id = ""
        attempt.created = True

    def _mint(self, attempt: _Attempt, launch: Launch) -> str:
        if self.tokens is None:
            return ""
        attempt.token_id, secret = self.tokens.mint(launch.owner, launch.workflow_id, launch.job, launch.attempt,
                                                    launch.upload_id, launch.spec.timeout)
        return secret

    def _delete_job(self, name: str) -> None:
        """Deletes the Job with its pods and Secret (a bare delete would leave them)."""
        try:
            self._call(self.batch.delete_namespaced_job, name, self.settings.namespace,
                       propagation_policy="Background")
        except ApiException as e:
            if e.status != 404:
                log.warning("cannot delete the Kubernetes Job %s: %s", name, _why(e))
        except Exception as e:  # noqa: BLE001 - tried again by the next resync
            log.warning("cannot delete the Kubernetes Job %s: %s", name, _why(e))

    # ---- following -------------------------------------------------------------------

    def _watch(self, what: str, listing: Callable[..., Any], start: Callable[[], str],
               changed: Callable[[str, dict[str, Any]], None]) -> None:
        """Follows `what` (pods or Jobs) of donut's attempts: from the resourceVersion `start`
        lists them at, renewed from where it was when it ends, after a fresh `start` when it
        expired (410 Gone) or failed."""
        version = ""
        while not self._closing.is_set():
            try:
                if not version:
                    version = start()
                for kind, item in self._events(listing, version):
                    version = item.get("metadata", {}).get("resourceVersion") or version
                    changed(kind, item)
            except _Gone:
                version = ""
            except Exception as e:  # noqa: BLE001 - the API server is away: try again
                log.info("watching %s: %s", what, _why(e))
                version = ""
                self._closing.wait(1.0)

    def _events(self, listing: Callable[..., Any], version: str) -> Iterator[tuple[str, dict[str, Any]]]:
        self.rate.acquire()
        response: Any = listing(
            self.settings.namespace, label_selector=LABEL_WORKFLOW, watch=True, resource_version=version,
            allow_watch_bookmarks=False, timeout_seconds=WATCH_SECONDS, _preload_content=False,
            _request_timeout=(REQUEST_TIMEOUT[0], WATCH_SECONDS + 30))
        with self._lock:
            self._watching.add(response)
        if self._closing.is_set():
            response.shutdown()
        try:
            for line in _lines(response):
                if self._closing.is_set():
                    return
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    if event.get("object", {}).get("code") == 410:
                        raise _Gone()
                    raise RuntimeError(f"watch error: {event.get('object', {}).get('message', '')}")
                yield event.get("type", ""), event.get("object", {})
        finally:
            with self._lock:
                self._watching.discard(response)
            response.close()

    def _jobs_version(self) -> str:
        jobs = self._call(self.batch.list_namespaced_job, self.settings.namespace, label_selector=LABEL_WORKFLOW)
        for job in jobs.get("items", []):
            self._job_event("ADDED", job)
        return str(jobs.get("metadata", {}).get("resourceVersion", ""))

    def _job_event(self, kind: str, job: dict[str, Any]) -> None:
        """A Job deleted under a running attempt, or ended by its deadline (its pods go with
        it); every other end is told by the pod, whose container says what the wrapper did."""
        with self._lock:
            attempt = self._active.get(job.get("metadata", {}).get("name", ""))
        if attempt is None or not attempt.created:
            return
        if kind == "DELETED":
            self._gone(attempt, "its Kubernetes Job was deleted")
        elif _failed_because(job) == "DeadlineExceeded":
            self._job_changed(attempt, job)

    def _resync_loop(self) -> None:
        while not self._closing.wait(self.settings.resync):
            try:
                self._resync()
            except Exception as e:  # noqa: BLE001 - the API server is away: the next pass tries again
                log.info("listing Jobs and pods: %s", _why(e))

    def _resync(self) -> str:
        """Looks at every pod and Job of the attempts followed (what a watch may have
        missed: a pod stuck for too long, a Job or pod that vanished). Returns the pods'
        listing's resourceVersion, for a watch to go on from."""
        ns = self.settings.namespace
        pods = self._call(self.core.list_namespaced_pod, ns, label_selector=LABEL_WORKFLOW)
        jobs = self._call(self.batch.list_namespaced_job, ns, label_selector=LABEL_WORKFLOW)
        pods_of: dict[str, list[dict[str, Any]]] = {}
        for pod in pods.get("items", []):
            pods_of.setdefault(_job_of(pod), []).append(pod)
            self._pod_changed(pod, deleted=False)
        present = {j["metadata"]["name"]: j for j in jobs.get("items", [])}
        with self._lock:
            followed = list(self._active.values())
        for attempt in followed:
            found = present.get(attempt.name)
            if found is None:
                if attempt.created:
                    self._gone(attempt, "its Kubernetes Job was deleted")
            elif not pods_of.get(attempt.name):
                self._job_changed(attempt, found)
        return str(pods.get("metadata", {}).get("resourceVersion", ""))

    def _pod_changed(self, pod: dict[str, Any], deleted: bool) -> None:
        with self._lock:
            attempt = self._active.get(_job_of(pod))
        if attempt is None:
            return
        status = pod.get("status", {})
        container: dict[str, Any] = next(iter(status.get("containerStatuses") or []), {})
        terminated = container.get("state", {}).get("terminated")
        if status.get("phase") == "Failed" and status.get("reason") in LOST_REASONS:  # the node's doing
            why = "evicted" if status["reason"] == "Evicted" else f"lost ({status['reason']})"
            return self._end(attempt, Outcome(message=_with(f"its pod was {why}", status.get("message", "")),
                                              lost=True))
        if terminated:
            return self._terminated(attempt, terminated)
        if status.get("phase") == "Failed":  # no container end: the pod itself failed
            return self._end(attempt, Outcome(message=_with("its pod failed", status.get("message", "")), lost=True))
        if deleted or pod.get("metadata", {}).get("deletionTimestamp"):
            if attempt.killed:
                return self._end(attempt, Outcome(signal="SIGTERM", message="cancelled: its pod was deleted"))
            with contextlib.suppress(Exception):  # by its Job's deadline (its timeout)? else the pod is lost
                job = self._existing_job(attempt)
                if job is not None and _failed_because(job) == "DeadlineExceeded":
                    return self._job_changed(attempt, job)
            return self._gone(attempt, "its pod was deleted (or its node was lost)")
        if status.get("phase") == "Unknown":
            return self._gone(attempt, "its node was lost")
        waiting = container.get("state", {}).get("waiting") or {}
        reason = waiting.get("reason", "") or _unschedulable(status)
        if status.get("phase") == "Pending" and reason in STUCK_REASONS:
            now = self.clock()
            if attempt.stuck_since is None:
                attempt.stuck_since = now
                recheck = threading.Timer(self.settings.pending_grace, self._look_again, args=(attempt,))
                recheck.daemon = True
                recheck.start()
            if reason in HOPELESS_REASONS or now - attempt.stuck_since >= self.settings.pending_grace:
                self._launchers.submit(self._delete_job, attempt.name)
                return self._end(attempt, Outcome(message=_with(
                    f"{reason}: its pod stayed pending {now - attempt.stuck_since:.0f} s", waiting.get("message", ""))))
        else:
            attempt.stuck_since = None

    def _look_again(self, attempt: _Attempt) -> None:
        """Looks at the attempt's pods again (one stuck pending sends no event when its grace ends)."""
        if self._closing.is_set():
            return
        try:
            pods = self._call(self.core.list_namespaced_pod, self.settings.namespace,
                              label_selector=f"job-name={attempt.name}")
        except Exception as e:  # noqa: BLE001 - the next resync looks
            log.info("looking at the pods of %s: %s", attempt.name, _why(e))
            return
        for pod in pods.get("items", []):
            self._pod_changed(pod, deleted=False)

    def _terminated(self, attempt: _Attempt, terminated: Mapping[str, Any]) -> None:
        told = read_termination_message(terminated.get("message") or "")
        if told is not None and told[1]:
            return self._end(attempt, None)  # the normal end: dagger has the wrapper's report
        if told is not None:
            outcome = outcome_of(told[0])
            return self._end(attempt, outcome if outcome.message else replace(
                outcome, message="the job wrapper could not report its end"))
        code, reason = terminated.get("exitCode"), terminated.get("reason", "")
        if reason == "OOMKilled":
            message = "OOMKilled: its container ran out of memory (raise kubernetes.resources.limits.memory)"
        elif attempt.killed:
            message = "cancelled"
        else:
            message = f"the job wrapper exited with code {code} ({reason or 'no reason given'}) without reporting"
        self._end(attempt, Outcome(exit_code=None if attempt.killed else code,
                                   signal="SIGKILL" if reason == "OOMKilled" else ("SIGTERM" if attempt.killed else ""),
                                   message=message))

    def _job_changed(self, attempt: _Attempt, job: Mapping[str, Any]) -> None:
        """A Job with no pod left: a failed one (its deadline passed...) ends the attempt."""
        reason = _failed_because(job)
        if reason is None:
            return
        detail = next(c.get("message", "") for c in job["status"]["conditions"] if c.get("type") == "Failed")
        if reason == "DeadlineExceeded":
            why = "its Kubernetes Job's deadline (the job's timeout) was exceeded"
            self._end(attempt, Outcome(signal="SIGKILL", message=_with(why, detail)))
        else:
            self._end(attempt, Outcome(message=_with("its Kubernetes Job failed", detail)))

    def _gone(self, attempt: _Attempt, why: str) -> None:
        if attempt.killed:
            return self._end(attempt, Outcome(signal="SIGTERM", message=f"cancelled: {why}"))
        self._end(attempt, Outcome(message=why, lost=True))

    def _end(self, attempt: _Attempt, outcome: Outcome | None) -> None:
        """Forgets the attempt (once) and revokes its token; with an outcome, reports it with a
        note in the job's log, for a wrapper that could not."""
        with self._lock:
            if self._active.get(attempt.name) is not attempt:
                return
            del self._active[attempt.name]
        self._revoke(attempt)
        if outcome is not None:
            report_for_the_wrapper(self.logs, self.report, attempt.workflow_id, attempt.job, attempt.number, outcome)

    def _revoke(self, attempt: _Attempt) -> None:
        if attempt.token_id and self.tokens is not None:
            with contextlib.suppress(Exception):  # it expires with the attempt's timeout anyway
                self.tokens.revoke(attempt.token_id)

    # ---- the reaper ------------------------------------------------------------------

    def _reap_loop(self) -> None:
        while not self._closing.wait(self.settings.reap_interval):
            try:
                self.reap()
            except Exception as e:  # noqa: BLE001 - the next pass tries again
                log.info("reaping Jobs: %s", _why(e))

    def reap(self) -> list[str]:
        """Deletes the Jobs and Secrets labelled donut/workflow whose workflow has finished
        or is unknown (and nothing else). Returns the names deleted."""
        ns = self.settings.namespace
        deleted = []
        states: dict[str, str] = {}
        for kind, listing, delete in (
                ("Job", self.batch.list_namespaced_job, self._delete_job),
                ("Secret", self.core.list_namespaced_secret, self._delete_secret)):
            for item in self._call(listing, ns, label_selector=LABEL_WORKFLOW).get("items", []):
                workflow_id = item["metadata"].get("labels", {}).get(LABEL_WORKFLOW, "")
                if workflow_id not in states:
                    states[workflow_id] = self.workflow_state(workflow_id)
                if states[workflow_id] in ("finished", "unknown"):
                    delete(item["metadata"]["name"])
                    deleted.append(f"{kind}/{item['metadata']['name']}")
        return deleted

    def remove_workflow(self, workflow_id: str) -> None:
        """Deletes the Jobs and Secrets of a workflow being deleted (finished Jobs are
        otherwise kept for ttlSecondsAfterFinished)."""
        ns, selector = self.settings.namespace, f"{LABEL_WORKFLOW}={workflow_id}"
        for job in self._call(self.batch.list_namespaced_job, ns, label_selector=selector).get("items", []):
            self._delete_job(job["metadata"]["name"])
        for secret in self._call(self.core.list_namespaced_secret, ns, label_selector=selector).get("items", []):
            self._delete_secret(secret["metadata"]["name"])

    def _delete_secret(self, name: str) -> None:
        with contextlib.suppress(ApiException):
            self._call(self.core.delete_namespaced_secret, name, self.settings.namespace)

    # ---- the API ---------------------------------------------------------------------

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One API request, as JSON, rate limited; a failure that may pass (5xx, throttling,
        timeouts, no connection) is tried again with backoff, others raise ApiException."""
        delay = 0.2
        for attempt in range(1, self.settings.retries + 1):
            self.rate.acquire()
            try:
                response = method(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
                return json.loads(response.data or b"{}")
            except ApiException as e:
                if e.status is not None and e.status < 500 and e.status != 429 or attempt == self.settings.retries:
                    raise
                why = _why(e)
            except Exception as e:  # timeouts, refused connections (urllib3's errors)
                if attempt == self.settings.retries:
                    raise
                why = _why(e)
            log.info("Kubernetes API: %s; trying again in %.1f s", why, delay)
            if self._closing.wait(delay):
                raise RuntimeError("the executor is closing")
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")


class RateLimit:
    """A token bucket: `qps` requests a second on average, `burst` at once."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.qps, self.burst, self.clock = qps, max(burst, 1), clock
        self._tokens = float(self.burst)
        self._at = clock()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self._lock:
                now = self.clock()
                self._tokens = min(self.burst, self._tokens + (now - self._at) * self.qps)
                self._at = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self.qps
            time.sleep(wait)


class _Gone(Exception):
    """A watch's resourceVersion is too old (410 Gone): list again."""


def api_client(kubeconfig: str | None = None, context: str | None = None) -> k8s.ApiClient:
    """A client of the cluster: in-cluster config inside a pod, else the kubeconfig (the
    file given, or the usual one). The client's own retries are off: `_call` retries."""
    from kubernetes import config

    configuration = k8s.Configuration()
    if kubeconfig is None and context is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    else:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    configuration.retries = False
    return k8s.ApiClient(configuration)


def _lines(response: Any) -> Iterator[bytes]:
    """The lines of a streamed answer (a watch's events)."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending


def _ours(job: Mapping[str, Any], workflow_id: str, name: str, attempt: int) -> bool:
    labels = job.get("metadata", {}).get("labels") or {}
    return (labels.get(LABEL_WORKFLOW), labels.get(LABEL_JOB), labels.get(LABEL_ATTEMPT)) == \
        (workflow_id, name, str(attempt))


def _job_of(pod: Mapping[str, Any]) -> str:
    labels = pod.get("metadata", {}).get("labels") or {}
    return str(labels.get("job-name") or labels.get("batch.kubernetes.io/job-name") or "")


def _failed_because(job: Mapping[str, Any]) -> str | None:
    """The reason of the Job's Failed condition (None: it has not failed)."""
    for condition in job.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return str(condition.get("reason", ""))
    return None


def _unschedulable(status: Mapping[str, Any]) -> str:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            return "Unschedulable"
    return ""


def _with(message: str, detail: str) -> str:
    return f"{message} ({detail})" if detail else message


def _why(e: BaseException) -> str:
    if isinstance(e, ApiException):
        return f"HTTP {e.status} {e.reason or ''}".strip()
    return f"{type(e).__name__}: {e}"
