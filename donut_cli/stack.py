"""The whole stack on one machine (`donut up`): etcd, the dagger, cellar and users
services on one gRPC server, the scheduler with the local executor, and the gateway.

In a cluster each service is its own deployment; here they share a process and one
address so the CLI needs only that address.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import grpc
from werkzeug.serving import BaseWSGIServer

from cellar_svc.backends import SweepSettings, open_storage, start_sweeper
from cellar_svc.storage import Storage
from dagger_svc.archives import ARCHIVE_PATH, ArchiveInfo, Archiver
from dagger_svc.core.limits import MAX_LOG_BYTES
from dagger_svc.core.records import WorkflowId
from dagger_svc.core.run import MAX_LOST_ATTEMPTS
from dagger_svc.deletion import Deleter, Retention, RetentionSettings
from dagger_svc.executors.kubernetes import KubernetesExecutor, KubernetesSettings, api_client
from dagger_svc.executors.local import LocalExecutor
from dagger_svc.executors.wrapper import WrapperExecutor
from dagger_svc.keys import Keys
from dagger_svc.log_copies import LogCopier
from dagger_svc.log_pulses import LogPulses
from dagger_svc.logs import LogStore
from dagger_svc.scheduler import Scheduler
from dagger_svc.service import DaggerConfig, DaggerService
from dagger_svc.store import Replica, Store
from dagger_svc.workflow_counts import WorkflowCounts
from donut.cellar.v1 import cellar_pb2
from donut_common.auth import AuthInterceptor, CachedVerifier, JobTokens
from donut_common.clock import Clock
from donut_common.config import ServerLimits
from donut_common.errors import NotFound, Unavailable
from donut_common.etcd import Etcd, EtcdAccess
from donut_common.etcd_server import EtcdServer
from donut_common.files import write_private
from donut_common.metrics import REGISTRY, serve
from donut_common.rpc import Registration, channel, create_server
from gateway.links import LinkSigner
from streamed_job.cellar import CellarClient, why_unavailable
from streamed_job.spec import FetchSettings, SaveSettings
from users_svc.service import UsersService
from users_svc.store import UserStore

if TYPE_CHECKING:
    from cellar_svc.s3 import S3Settings

log = logging.getLogger(__name__)

SESSION_KEY_BYTES = 32
JOB_TEMPLATE = Path(__file__).resolve().parents[1] / "k8s" / "base" / "job-template.yaml"
"""The shipped Kubernetes job template."""


@dataclass(frozen=True)
class KubeConfig:
    """Where the Kubernetes executor runs jobs (with executor `kubernetes`)."""

    kubeconfig: str | None = None
    """The kubeconfig file (None: the in-cluster config inside a pod, else ~/.kube/config)."""
    context: str | None = None
    """The kubeconfig's context to use (None: its current one)."""
    namespace: str = "donut"
    """The namespace of the Jobs, their pods and Secrets."""
    job_template: Path = JOB_TEMPLATE
    """The job template (an editable YAML file; the shipped one by default)."""
    workflows_mount: str = "/srv/workflows"
    """Where the shared workflows volume is mounted in jobs' containers."""
    workflows_claim: str = "donut-workflows"
    """The PersistentVolumeClaim of the shared workflows volume (ReadWriteMany, e.g. NFS)."""
    callback_endpoint: str = ""
    """host:port at which jobs reach dagger and cellar ("": the stack's gRPC address)."""
    qps: float = 20.0
    """API requests per second (bursts of 1.5 times as many)."""
    pending_grace: float = 300.0
    """Seconds a job's pod may stay stuck pending (an image it cannot pull...) before the attempt fails."""


@dataclass(frozen=True)
class GithubSignIn:
    """Signing in to the web GUI with GitHub (OAuth); off without a client id."""

    client_id: str = ""
    """The OAuth app's client id ("": no GitHub sign-in, only `donut ui` links)."""
    client_secret: str = field(default="", repr=False)
    """The OAuth app's client secret (from the environment, never a flag)."""
    url: str = "https://github.com"
    """GitHub's address (a GitHub Enterprise Server's for one)."""
    users: tuple[str, ...] = ()
    """Logins that may sign in (with orgs: members of those too; both empty: anyone)."""
    orgs: tuple[str, ...] = ()
    """Organisations whose members may sign in."""


@dataclass(frozen=True)
class StackConfig:
    data_dir: Path
    """Everything the stack keeps: etcd data, workflow directories, logs, cellar files."""
    host: str = "127.0.0.1"
    """Address the gRPC server and the gateway listen on."""
    port: int = 7000
    """gRPC port (0: any free port)."""
    http_port: int = 7080
    """Gateway port (0: any free port; -1: no gateway)."""
    metrics_port: int = 0
    """Port of the Prometheus metrics, served at /metrics on `host` (0: any free port; -1: none)."""
    executor: str = "local"
    """Where jobs run: `local` (processes on this host, the job machinery in-process),
    `wrapper` (one `streamed-job` process per job, talking gRPC as in a cluster) or
    `kubernetes` (a Kubernetes Job per attempt)."""
    kubernetes: KubeConfig = KubeConfig()
    """The cluster, with executor `kubernetes`."""
    etcd_endpoints: str = ""
    """Comma-separated [https://]host:port of an external etcd; empty: start one under
    data_dir, which only this stack can reach (TLS with its own certificates)."""
    etcd_access: EtcdAccess = EtcdAccess()
    """How to get into the external etcd: its CA, a client certificate, a user."""
    etcd_prefix: str = "/donut/"
    """Key prefix in etcd (lets several stacks share one cluster)."""
    default_parallelism: int = 4
    """Parallelism of workflows submitted without one."""
    lease_ttl: int = 10
    """Seconds before a dead scheduler's runs may be taken over."""
    max_lost_attempts: int = MAX_LOST_ATTEMPTS
    """Times a job whose attempt was lost to the infrastructure (its replica died, its pod
    was deleted) runs again, one loss after another, before it is `dead`; its own retries
    count only its own failures."""
    replica_id: str = ""
    """Set: this stack is one replica of several sharing one etcd (`etcd_endpoints`) and
    one data dir, scheduling under this id (a supervisor holds the data dir); empty: the
    stack has the data dir to itself."""
    kill_grace: float = 10.0
    """Seconds between SIGTERM and SIGKILL when a job is cancelled or times out."""
    etcd_fsync: bool = True
    """Turn off only in tests."""
    tls_cert: Path | None = None
    """PEM certificate (chain) of the gRPC server; with tls_key, gRPC speaks only TLS."""
    tls_key: Path | None = None
    """PEM private key of tls_cert."""
    job_env: tuple[str, ...] = ()
    """Names of the stack's environment variables that jobs get too (besides PATH, HOME,
    the locale...); the rest, credentials the server holds among them, never reach a job."""
    max_log_bytes: int = MAX_LOG_BYTES
    """Size at which an attempt's log is cut (with a note saying so); later lines are dropped."""
    token_cache_seconds: float = 3.0
    """How long a verified token is trusted without asking users_svc (revocation delay)."""
    limits: ServerLimits = ServerLimits()
    """Threads, streams and client-stream timeouts of the gRPC server."""
    fetch: FetchSettings = FetchSettings()
    """How jobs download their `origin` inputs: deadline, size limit, private origins."""
    retention: RetentionSettings = RetentionSettings()
    """How long ended workflows are kept (default: for ever), and how often that is looked at."""
    archive_finished: bool = False
    """Archive every workflow's directory into cellar when it ends (in the background)."""
    delete_archived_workdirs: bool = False
    """With archive_finished: remove a workflow's directory once its archive is stored and verified."""
    quota_bytes: int | None = None
    """Most bytes one user's files may hold in cellar together (None: no quota; services'
    and admins' writes are never limited)."""
    save: SaveSettings = SaveSettings()
    """How long jobs keep trying to save their outputs while cellar is unavailable."""
    storage: S3Settings | None = None
    """Where cellar keeps its files: None for local files under data_dir/cellar; else an S3
    bucket, and nothing is written under data_dir/cellar."""
    sweep: SweepSettings = SweepSettings()
    """How often cellar removes what unfinished uploads left behind."""
    public_url: str = ""
    """http(s)://host[:port][/path] the web GUI is reached at behind a proxy ("": the
    gateway's own address); OAuth callbacks and `donut ui` links point there."""
    github: GithubSignIn = GithubSignIn()
    """Signing in to the web GUI with GitHub."""


@dataclass
class Stack:
    """The running parts, each set once `start` has made it (None before, and after `stop`)."""

    config: StackConfig
    clock: Clock = field(default_factory=Clock)
    """Where token lifetimes and the verification cache read the time (tests move it)."""
    endpoint: str = ""
    """host:port of the gRPC server."""
    http_endpoint: str = ""
    """http://host:port of the gateway ("" without one)."""
    metrics_url: str = ""
    """http://host:port/metrics of the Prometheus metrics ("" without them)."""
    service_token: str = ""
    """The services' own credentials."""
    etcd: EtcdServer | None = None
    store: Store | None = None
    users: UsersService | None = None
    logs: LogStore | None = None
    log_copier: LogCopier | None = None
    log_pulses: LogPulses | None = None
    executor: LocalExecutor | WrapperExecutor | KubernetesExecutor | None = None
    scheduler: Scheduler | None = None
    archiver: Archiver | None = None
    server: grpc.Server | None = None
    http: BaseWSGIServer | None = None
    retention: Retention | None = None
    url_signing_key: bytes = b""
    """The key cellar signs download links with and the gateway checks them with."""
    session_key: bytes = b""
    """The key the gateway signs its session cookies with."""
    cellar_storage: Storage | None = None
    _sweeper: threading.Thread | None = None
    _channels: list[grpc.Channel] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _reaper: subprocess.Popen[bytes] | None = None
    _lock: TextIO | None = None
    _stop_metrics: Callable[[], None] | None = None
    _workflow_counts: WorkflowCounts | None = None

    def start(self) -> Stack:
        c = self.config
        c.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        c.data_dir.chmod(0o700)  # for the stack's user only, even when it existed
        if c.replica_id and not c.etcd_endpoints:
            raise ValueError("replica_id: replicas share an etcd: etcd_endpoints must name it")
        self._lock = None if c.replica_id else _lock(c.data_dir)
        try:
            endpoints, access = c.etcd_endpoints, c.etcd_access
            if not endpoints:
                self.etcd = EtcdServer(c.data_dir, host="127.0.0.1", fsync=c.etcd_fsync).start()
                endpoints, access = self.etcd.endpoint, self.etcd.access
                threading.Thread(target=self.etcd.supervise, args=(self._stopping,), name="etcd-supervisor",
                                 daemon=True).start()
            client = Etcd.connect(endpoints, access=access)
            self.store = Store(client, Keys(c.etcd_prefix))
            self.store.upgrade()
            self.users = UsersService(UserStore(client, c.etcd_prefix), clock=self.clock.time,
                                      gui_url=lambda: c.public_url or self.http_endpoint)  # known once it runs
            self.users.store.upgrade(now=self.clock.time())
            self.service_token = self._service_token(self.users)
            self.url_signing_key = _url_signing_key(c.data_dir)
            self.session_key = _session_key(c.data_dir)
            self.logs = LogStore(c.data_dir / "logs", max_bytes=c.max_log_bytes)
            self.cellar_storage = open_storage(c.storage, c.data_dir / "cellar")
            self._sweeper = start_sweeper(self.cellar_storage, c.sweep, self._stopping)
            tls = (c.tls_cert.read_bytes(), c.tls_key.read_bytes()) if c.tls_cert and c.tls_key else None
            verifier = CachedVerifier(self.users.verify, ttl=c.token_cache_seconds, clock=self.clock)
            self._start_metrics()  # (before the services: the scheduler announces the metrics' address)
            self.server, port = create_server(f"{c.host}:{c.port}", self._services,
                                              limits=c.limits, interceptors=[AuthInterceptor(verifier)], tls=tls)
            self.server.start()
            assert self.scheduler is not None
            self.scheduler.start()
            assert self.log_copier is not None
            self.log_copier.start()
            if self.log_pulses is not None:
                self.log_pulses.start()
            assert self.retention is not None
            self.retention.start()  # (it finishes interrupted deletions first, with or without a retention)
            if c.archive_finished:
                assert self.archiver is not None
                self.archiver.start()
            if c.http_port >= 0:
                self._start_gateway()
        except BaseException:
            self.stop()
            raise
        return self

    def _services(self, port: int) -> list[Registration]:
        """Every service of the stack, once the server has its port (jobs are told it)."""
        from cellar_svc.server import registration as cellar_registration
        from dagger_svc.servicer import registration as dagger_registration
        from users_svc.servicer import registration as users_registration

        c = self.config
        assert self.store is not None and self.users is not None and self.logs is not None
        assert self.cellar_storage is not None
        self.endpoint = f"{c.host}:{port}"
        ca = c.tls_cert.read_bytes() if c.tls_cert else None
        internal = self._channel(channel(self.endpoint, tls_ca=ca))
        services = self._channel(channel(self.endpoint, token=self.service_token, tls_ca=ca))
        cellar_files = CellarClient(services)  # dagger's way to cellar, as the services
        uploads = _CellarUploads(cellar_files)  # checks uploads at submit, removes refused ones

        def cellar(token: str) -> CellarClient:
            return CellarClient(internal, (("authorization", f"Bearer {token}"),))

        if c.executor == "local":
            self.executor = LocalExecutor(self.logs, cellar=cellar, tokens=JobTokens(services),
                                          kill_grace=c.kill_grace, job_env=c.job_env, fetch=c.fetch,
                                          save=c.save, replica=c.replica_id)
        elif c.executor == "wrapper":
            self.executor = WrapperExecutor(self.logs, self.endpoint, kill_grace=c.kill_grace,
                                            tokens=JobTokens(services), tls_ca=ca.decode() if ca else "",
                                            state_dir=c.data_dir / "wrappers", job_env=c.job_env, fetch=c.fetch,
                                            save=c.save)
        elif c.executor == "kubernetes":
            self.executor = self._kubernetes_executor(JobTokens(services))
        else:
            raise ValueError(f"executor: unknown executor {c.executor!r} (expected local, wrapper or kubernetes)")
        data_root = c.data_dir / "workflows"
        data_root.mkdir(parents=True, exist_ok=True)
        if c.executor == "local":  # its jobs can't be adopted: none may outlive this process
            self._reaper = subprocess.Popen(
                [sys.executable, "-m", "dagger_svc.executors.reaper", "--parent", str(os.getpid()),
                 "--root", str(data_root), "--replica", c.replica_id], stdin=subprocess.DEVNULL,
                start_new_session=True)
        announce = Replica("", endpoint=self.endpoint, metrics_url=self.metrics_url)
        self.scheduler = Scheduler(self.store, self.executor, data_root,
                                   scheduler_id=c.replica_id or _scheduler_id(c.data_dir), lease_ttl=c.lease_ttl,
                                   max_lost_attempts=c.max_lost_attempts, announce=announce)
        log_copies = _CellarLogCopies(cellar_files)
        self.log_copier = LogCopier(self.logs, log_copies, self.store)
        if c.replica_id:  # a lone stack's logs are its own: no one else to wake
            self.log_pulses = LogPulses(self.logs, self.store, c.replica_id)
        deleter = Deleter(self.store, self.logs, data_root, _CellarWorkflowFiles(cellar_files),
                          self.executor.remove_workflow if isinstance(self.executor, KubernetesExecutor) else None)
        self.retention = Retention(deleter, c.retention, self.clock.time)
        self.archiver = _archiver(c, self.store, cellar_files, data_root)
        service = DaggerService(self.store, self.logs, self.scheduler, DaggerConfig(data_root, c.default_parallelism),
                                uploads, log_copies, deleter, self.archiver)
        links = LinkSigner(self.url_signing_key, lambda: self.http_endpoint)  # known once the gateway runs
        return [dagger_registration(service),
                cellar_registration(self.cellar_storage, quota_bytes=c.quota_bytes, links=links),
                users_registration(self.users)]

    def _channel(self, made: grpc.Channel) -> grpc.Channel:
        self._channels.append(made)
        return made

    def _service_token(self, users: UsersService) -> str:
        """The services' own credentials: kept in the data dir (mode 0600), made on first start."""
        path = self.config.data_dir / "service-token"
        if path.exists():
            token = path.read_text().strip()
            try:
                if users.verify(token).is_service:
                    return token
            except Exception:  # noqa: BLE001 - revoked or from another etcd: make a new one
                pass
        account = users.ensure_user("donut-services", admin=False)
        token = users.mint(account, "donut services", ("service",)).secret
        write_private(path, token)
        return token

    def client_token(self, existing: str = "") -> tuple[str, bool]:
        """A token for the person running the stack (see `admin_token`)."""
        assert self.users is not None, "the stack is not running"
        return admin_token(self.users, existing)

    def _kubernetes_executor(self, tokens: JobTokens) -> KubernetesExecutor:
        k, c = self.config.kubernetes, self.config
        assert self.logs is not None
        settings = KubernetesSettings(
            template=k.job_template.read_text(encoding="utf-8"), namespace=k.namespace, mount_path=k.workflows_mount,
            claim_name=k.workflows_claim, callback_endpoint=k.callback_endpoint or self.endpoint, qps=k.qps,
            burst=max(1, int(k.qps * 1.5)), pending_grace=k.pending_grace, kill_grace=c.kill_grace,
            fetch=c.fetch, save=c.save)
        return KubernetesExecutor(api_client(k.kubeconfig, k.context), self.logs, settings, tokens=tokens,
                                  workflow_state=self._workflow_state)

    def _workflow_state(self, workflow_id: str) -> str:
        """"running", "finished" or "unknown" (no such workflow, or one being deleted)."""
        assert self.store is not None
        try:
            record, _ = self.store.workflow(WorkflowId(workflow_id))
        except NotFound:
            return "unknown"
        return "finished" if record.status.finished else "running"

    def _start_metrics(self) -> None:
        """Counts the workflows on scrape (unless another stack of this process does: same
        metric, same registry) and serves the metrics, unless metrics_port is -1."""
        assert self.store is not None
        counts = WorkflowCounts(self.store, clock=self.clock.monotonic)
        with contextlib.suppress(ValueError):  # registered already, by another stack of this process
            REGISTRY.register(counts)
            self._workflow_counts = counts
        if self.config.metrics_port >= 0:
            self.metrics_url, self._stop_metrics = serve(self.config.host, self.config.metrics_port)

    def _start_gateway(self) -> None:
        from werkzeug.serving import make_server

        from gateway.app import create_app

        c = self.config
        app = create_app({"DONUT_ENDPOINT": self.endpoint, "DONUT_SERVICE_TOKEN": self.service_token,
                          "DONUT_URL_SIGNING_KEY": self.url_signing_key,
                          "DONUT_TLS_CA": c.tls_cert.read_bytes() if c.tls_cert else None,
                          "SECRET_KEY": self.session_key, "DONUT_PUBLIC_URL": c.public_url,
                          "DONUT_GITHUB_CLIENT_ID": c.github.client_id,
                          "DONUT_GITHUB_CLIENT_SECRET": c.github.client_secret,
                          "DONUT_GITHUB_URL": c.github.url, "DONUT_GITHUB_USERS": c.github.users,
                          "DONUT_GITHUB_ORGS": c.github.orgs})
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request (a sign-in link among them)
        http = make_server(self.config.host, self.config.http_port, app, threaded=True)
        self.http_endpoint = f"http://{self.config.host}:{http.server_port}"
        thread = threading.Thread(target=http.serve_forever, name="gateway", daemon=True)
        thread.start()
        self.http = http

    def stop(self) -> None:
        """Stops everything, jobs included; state stays in etcd for the next start."""
        self._stopping.set()
        if self._stop_metrics is not None:
            self._stop_metrics()
            self._stop_metrics, self.metrics_url = None, ""
        if self._workflow_counts is not None:
            REGISTRY.unregister(self._workflow_counts)
            self._workflow_counts = None
        if self.retention is not None:
            self.retention.stop()
            self.retention = None
        if self.http is not None:
            from gateway.app import close

            self.http.shutdown()
            close(self.http.app)  # type: ignore[arg-type]  # the Flask app made in _start_gateway
            self.http = None
        if self.archiver is not None:
            self.archiver.stop()
            self.archiver = None
        if self.scheduler is not None:
            self.scheduler.drain()  # the attempts the executor stops now run again at the next start
        if self.executor is not None:
            self.executor.close()
            self.executor = None
        if self._reaper is not None:
            self._reaper.terminate()
            self._reaper.wait()
            self._reaper = None
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        if self.log_copier is not None:
            self.log_copier.stop()  # what it had not copied yet is copied after the next start
            self.log_copier = None
        if self.log_pulses is not None:
            self.log_pulses.stop()
            self.log_pulses = None
        for made in self._channels:
            made.close()
        self._channels.clear()
        if self.server is not None:
            self.server.stop(grace=1).wait()
            self.server = None
        if self.logs is not None:
            self.logs.close()
            self.logs = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None
        if self._sweeper is not None:
            self._sweeper.join()
            self._sweeper = None
        self.cellar_storage = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class _CellarUploads:
    """dagger's view of the uploads (`dagger_svc.service.Uploads`), through cellar."""

    cellar: CellarClient

    def files(self, upload_id: str) -> dict[str, str]:
        return {f.ref.path: f.owner for f in self.cellar.list("cache", upload_id)}

    def remove(self, upload_id: str) -> None:
        self.cellar.delete("cache", upload_id)


@dataclass(frozen=True)
class _CellarLogCopies:
    """The copies of ended attempts' logs (`dagger_svc.log_copies.LogCopies`): cellar files
    of kind `log`, scope the workflow, job the job, path `<attempt>.log`."""

    cellar: CellarClient

    def put(self, workflow_id: str, job: str, attempt: int, source: Path, owner: str) -> None:
        with _storage_errors():
            self.cellar.put("log", workflow_id, f"{attempt}.log", source, job=job, owner=owner)

    def remove(self, workflow_id: str) -> None:
        with _storage_errors():
            self.cellar.delete("log", workflow_id)

    def read(self, workflow_id: str, job: str, attempt: int) -> Generator[bytes, None, None]:
        with _storage_errors():
            yield from self.cellar.read("log", workflow_id, f"{attempt}.log", job=job)


@dataclass(frozen=True)
class _CellarWorkflowFiles:
    """What cellar keeps of a workflow, as its deletion removes it (`dagger_svc.deletion.WorkflowFiles`)."""

    cellar: CellarClient

    def remove(self, kind: str, workflow_id: WorkflowId) -> None:
        with _storage_errors():
            self.cellar.delete(kind, workflow_id)


# ---- archives: dagger's port over cellar, and the archiver a config asks for ----------


def _archiver(config: StackConfig, store: Store, cellar: CellarClient, data_root: Path) -> Archiver:
    if config.delete_archived_workdirs and not config.archive_finished:
        raise ValueError("delete_archived_workdirs: only with archive_finished (a directory goes only once "
                         "its archive is stored)")
    return Archiver(store, _CellarArchives(cellar), data_root, delete_workdirs=config.delete_archived_workdirs)


@dataclass(frozen=True)
class _CellarArchives:
    """dagger's archive storage (`dagger_svc.archives.ArchiveStorage`) through cellar, with
    the services' token: each archive is stored for the workflow's owner, who may read it."""

    cellar: CellarClient

    def put(self, workflow_id: str, owner: str, chunks: Iterable[bytes]) -> ArchiveInfo:
        with _storage_errors():
            return _archive_info(self.cellar.put_chunks("archive", workflow_id, ARCHIVE_PATH, chunks, owner=owner))

    def stat(self, workflow_id: str) -> ArchiveInfo:
        with _storage_errors():
            return _archive_info(self.cellar.stat("archive", workflow_id, ARCHIVE_PATH))


def _archive_info(info: cellar_pb2.FileInfo) -> ArchiveInfo:
    return ArchiveInfo(path=info.ref.path, size=info.size, sha256=info.sha256,
                       created_at=info.created_at.ToNanoseconds() / 1e9)


@contextlib.contextmanager
def _storage_errors() -> Iterator[None]:
    """cellar's answers as domain errors: NotFound, or Unavailable saying why."""
    try:
        yield
    except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.NOT_FOUND:
            raise NotFound(e.details()) from None
        raise Unavailable(f"storage unavailable: {why_unavailable(e)} ({code.name.lower()})") from None


def admin_token(users: UsersService, existing: str = "") -> tuple[str, bool]:
    """A token for the person running the stack: `existing` while it still works, else a
    new admin token (on first start, the first admin user is created). Returns (token,
    whether it is new)."""
    if existing:
        try:
            if users.verify(existing).is_admin:
                return existing, False
        except Exception:  # noqa: BLE001 - from another stack, revoked or expired
            pass
    admin = users.ensure_user("admin", admin=True)
    return users.mint(admin, "donut up", ("user", "admin")).secret, True


def _lock(data_dir: Path) -> TextIO:
    """Holds the data dir for this stack alone (released when it stops, or dies)."""
    import fcntl

    lock = open(data_dir / "lock", "a")  # noqa: SIM115 - held while the stack runs
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise RuntimeError(f"another stack is using {data_dir} (is `donut up` running already?)") from None
    return lock


def _url_signing_key(data_dir: Path) -> bytes:
    """The key of download links, kept with the data (mode 0600), made on first start."""
    # none yet (or emptied): a link signed with no key would be anyone's to make
    return _kept_key(data_dir / "url-signing-key", bytes.strip, lambda: secrets.token_hex(32).encode())


def _session_key(data_dir: Path) -> bytes:
    """The key of the gateway's session cookies, kept with the data (mode 0600), made on
    first start: sessions outlive a restart."""
    # none yet (or emptied, cut short): cookies anyone could sign
    return _kept_key(data_dir / "session-key", lambda key: key if len(key) >= SESSION_KEY_BYTES else b"",
                     lambda: secrets.token_bytes(SESSION_KEY_BYTES))


def _kept_key(path: Path, usable: Callable[[bytes], bytes], make: Callable[[], bytes]) -> bytes:
    """The key in `path` (`usable` of its bytes, b"" if it is not), or a new one from `make`.
    A new key is put in place with a hard link, which fails when the file appeared meanwhile:
    replicas that share the data dir and start together all keep the key written first."""
    key = usable(path.read_bytes()) if path.exists() else b""
    if key:
        return key
    key = make()
    made = path.with_name(f"{path.name}.{uuid.uuid4().hex}")
    write_private(made, key)
    try:
        os.link(made, path)
    except FileExistsError:
        if kept := usable(path.read_bytes()):  # another replica's
            return kept
        os.replace(made, path)  # a broken one
    except OSError:  # no hard links on this file system (SMB): the last one written is kept
        os.replace(made, path)
    finally:
        made.unlink(missing_ok=True)
    return key


def _scheduler_id(data_dir: Path) -> str:
    """A scheduler id kept with the data, so a restarted stack takes its runs back at once."""
    path = data_dir / "scheduler-id"
    if not path.exists():
        path.write_text(uuid.uuid4().hex)
    return path.read_text().strip()
