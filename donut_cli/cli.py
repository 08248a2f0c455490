"""The `donut` command: run the stack (`up`) and drive it (submit, watch, logs, results).

Every command talks to the stack over gRPC; heavy imports happen inside the commands so
`donut --help` and friends start quickly. Errors are one line on stderr, never a traceback:
exit 2 for bad input, 1 for everything else that went wrong.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from dagger_svc.core.limits import MAX_LOG_BYTES, MAX_PARALLELISM, name_problem
from donut.dagger.v1 import dagger_pb2 as pb
from donut_common.config import ServerLimits
from streamed_job.spec import FetchSettings

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

    from donut.dagger.v1 import dagger_pb2_grpc
    from donut.users.v1 import users_pb2_grpc
    from streamed_job.cellar import CellarClient

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
ACTIVE = frozenset({pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING})


def status_name(value: pb.WorkflowStatus.ValueType) -> str:
    """`running` for WORKFLOW_STATUS_RUNNING..."""
    return pb.WorkflowStatus.Name(value).removeprefix("WORKFLOW_STATUS_").lower()


def job_status_name(value: pb.JobStatus.ValueType) -> str:
    """`succeeded` for JOB_STATUS_SUCCEEDED..."""
    return pb.JobStatus.Name(value).removeprefix("JOB_STATUS_").lower()


STATUS_NAMES = tuple(status_name(value) for value in pb.WorkflowStatus.values() if value)
JOB_STATUS_NAMES = tuple(job_status_name(value) for value in pb.JobStatus.values() if value)


class Failure(click.ClickException):
    """A one-line error with its exit code."""
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    raise Failure(message, code)


# ---- talking to the stack -------------------------------------------------------------


class Client:
    """Stubs over one channel, with the token on every call."""
    def __init__(self, endpoint: str, token: str, tls_ca: str = "") -> None:
        from donut_common.rpc import channel

        self.endpoint = endpoint
        ca = None
        if tls_ca:
            try:
                ca = Path(tls_ca).read_bytes()
            except OSError as e:
                fail(f"--tls-ca: cannot read {tls_ca}: {e.strerror}", EXIT_BAD_INPUT)
        self.channel = channel(endpoint, tls_ca=ca)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    @functools.cached_property
    def users(self) -> users_pb2_grpc.UsersStub:
        from donut.users.v1 import users_pb2_grpc

        return users_pb2_grpc.UsersStub(self.channel)

    @functools.cached_property
    def dagger(self) -> dagger_pb2_grpc.DaggerStub:
        from donut.dagger.v1 import dagger_pb2_grpc

        return dagger_pb2_grpc.DaggerStub(self.channel)

    @functools.cached_property
    def cellar(self) -> CellarClient:
        from streamed_job.cellar import CellarClient

        return CellarClient(self.channel, self.metadata)


def rpc_errors(command: F) -> F:
    """Turns gRPC errors into one-line messages and exit codes."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import grpc

        try:
            return command(*args, **kwargs)
        except grpc.RpcError as e:
            code = e.code()
            settings = click.get_current_context().find_object(Settings)
            endpoint = settings.endpoint if settings is not None else "?"
            if code == grpc.StatusCode.UNAVAILABLE:
                if (e.details() or "").startswith("etcd unavailable"):
                    fail(f"donut at {endpoint} answers, but its {e.details()}")
                fail(f"cannot reach donut at {endpoint} ({e.details()})")
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                for line in (e.details() or "").splitlines():
                    click.echo(f"error: {line}", err=True)
                sys.exit(EXIT_BAD_INPUT)
            fail(f"{e.details()} ({code.name.lower()})")
        except OSError as e:  # a local file or directory
            fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
        except KeyboardInterrupt:
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


class Settings:
    def __init__(self, endpoint: str | None, token: str | None, tls_ca: str | None) -> None:
        from donut_common.config import ClientConfig

        self.problem = ""  # a client config that cannot be used: said when a command needs it
        try:
            config = ClientConfig.load(endpoint, token, tls_ca)
        except ValueError as e:
            config, self.problem = ClientConfig(), str(e)
        self.endpoint, self.token, self.tls_ca = config.endpoint, config.token, config.tls_ca
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self.problem:
            fail(self.problem)
        if self._client is None:
            self._client = Client(self.endpoint, self.token, self.tls_ca)
        return self._client


pass_settings = click.make_pass_decorator(Settings)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "DONUT"})
@click.option("--endpoint", envvar="DONUT_ENDPOINT", help="host:port of the donut server [env DONUT_ENDPOINT; "
              "default: from ~/.donut/client.json]")
@click.option("--token", envvar="DONUT_TOKEN", help="API token [env DONUT_TOKEN]")
@click.option("--tls-ca", envvar="DONUT_TLS_CA", help="CA certificate (PEM) to reach a TLS server [env DONUT_TLS_CA]")
@click.pass_context
def cli(ctx: click.Context, endpoint: str | None, token: str | None, tls_ca: str | None) -> None:
    """donut-dagger: DAGs of batch jobs, with live logs and saved results."""
    ctx.obj = Settings(endpoint, token, tls_ca)


# ---- formatting ------------------------------------------------------------------------


def _iso(ts: Timestamp) -> str | None:
    from streamed_job.timestamps import seconds

    at = seconds(ts)
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def workflow_json(w: pb.Workflow) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": w.id, "name": w.name, "status": status_name(w.status),
        "parallelism": w.parallelism, "message": w.message, "created_at": _iso(w.created_at),
        "started_at": _iso(w.started_at), "finished_at": _iso(w.finished_at), "job_counts": dict(w.job_counts),
        "workdir": w.workdir,
    }
    if w.jobs:
        doc["jobs"] = [
            {
                "name": j.name, "status": job_status_name(j.status),
                "exit_code": j.exit_code if j.HasField("exit_code") else None, "attempt": j.attempt,
                "started_at": _iso(j.started_at), "finished_at": _iso(j.finished_at), "message": j.message,
            }
            for j in w.jobs
        ]
    return doc


def _counts_line(w: pb.Workflow) -> str:
    parts = [f"{w.job_counts[s]} {s}" for s in JOB_STATUS_NAMES if w.job_counts.get(s)]
    return ", ".join(parts) or "no jobs"


def print_workflow(doc: dict[str, Any]) -> None:
    click.echo(f"workflow {doc['id']} ({doc['name']}): {doc['status']}"
               + (f" - {doc['message']}" if doc.get("message") else ""))
    click.echo(f"  parallelism {doc['parallelism']}, created {doc['created_at']}, workdir {doc['workdir']}")
    jobs = doc.get("jobs", [])
    if jobs:
        width = max(len(j["name"]) for j in jobs)
        click.echo(f"  {'JOB':<{width}}  {'STATUS':<10}  ATTEMPT  EXIT  DURATION  MESSAGE")
        for j in jobs:
            duration = ""
            if j["started_at"] and j["finished_at"]:
                seconds = (datetime.fromisoformat(j["finished_at"]) - datetime.fromisoformat(j["started_at"]))
                duration = f"{seconds.total_seconds():.2f}s"
            exit_code = "" if j["exit_code"] is None else str(j["exit_code"])
            click.echo(f"  {j['name']:<{width}}  {j['status']:<10}  {j['attempt']:>7}  {exit_code:>4}  "
                       f"{duration:>8}  {j['message']}")


def wait_for(settings: Settings, workflow_id: str, as_json: bool) -> NoReturn:
    """Follows the workflow to its end, showing progress on stderr; exits 0 when done."""
    client = settings.client
    last = ""
    final = None
    away = False
    while final is None:
        try:
            for w in client.dagger.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id), metadata=client.metadata):
                away = False
                status = status_name(w.status)
                line = f"{status}: {_counts_line(w)}"
                if line != last:
                    stamp = datetime.now().strftime("%H:%M:%S")
                    click.echo(f"[{stamp}] {line}", err=True)
                    last = line
                if w.status not in ACTIVE:
                    final = status
        except Exception as e:  # the server went away mid-watch: keep watching once it is back
            import grpc

            if not isinstance(e, grpc.RpcError) or e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            if not away:
                click.echo(f"cannot reach donut at {settings.endpoint}; still trying (Ctrl-C stops waiting, "
                           "not the workflow)", err=True)
                away = True
            time.sleep(1)
    show_workflow(client, workflow_id, as_json)
    sys.exit(0 if final == "done" else EXIT_FAILED)


def show_workflow(client: Client, workflow_id: str, as_json: bool) -> None:
    """Prints the workflow and its jobs, as a table or as JSON."""
    w = client.dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id, include_jobs=True), metadata=client.metadata)
    doc = workflow_json(w)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        print_workflow(doc)


# ---- commands --------------------------------------------------------------------------


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("~/.donut/data").expanduser(),
              show_default=True, help="Where the stack keeps its state, logs and files.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=7000, show_default=True,
              help="gRPC port (0: any free port).")
@click.option("--http-port", type=click.IntRange(-1, 65535), default=7080, show_default=True,
              help="Gateway port (0: any; -1: none).")
@click.option("--executor", type=click.Choice(["local", "wrapper"]), default="local", show_default=True,
              help="local: jobs are processes run in-process; wrapper: each job runs under its own "
                   "streamed-job process, talking gRPC as in a cluster.")
@click.option("--etcd-endpoints", default="", help="External etcd ([https://]host:port,...); default: start one "
              "that only this stack can reach.")
@click.option("--etcd-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CA (PEM) of the external etcd's certificates: speak TLS to it.")
@click.option("--etcd-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Client certificate (PEM) for the external etcd; with --etcd-key.")
@click.option("--etcd-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Private key (PEM) of --etcd-cert.")
@click.option("--etcd-user", default="", help="etcd user of the external etcd; its password only from the "
              "environment, DONUT_ETCD_PASSWORD.")
@click.option("--etcd-prefix", default="/donut/", show_default=True, help="Key prefix in etcd.")
@click.option("--parallelism", type=click.IntRange(1, MAX_PARALLELISM), default=4, show_default=True,
              help="Parallelism of workflows submitted without one.")
@click.option("--kill-grace", type=float, default=10.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL for jobs cancelled or over their timeout.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Server certificate (PEM); with --tls-key, gRPC speaks only TLS.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Private key (PEM) of --tls-cert.")
@click.option("--job-env", multiple=True, metavar="NAME",
              help="An environment variable of the stack that jobs get too (repeatable; they always get PATH, "
                   "HOME, the locale...; never the rest).")
@click.option("--rpc-threads", type=click.IntRange(2), default=ServerLimits.threads, show_default=True,
              help="Threads serving gRPC calls.")
@click.option("--max-streams", type=click.IntRange(1), default=ServerLimits.streams, show_default=True,
              help="Streams open at once, everyone's together (fewer than --rpc-threads: the rest always "
                   "serve other calls).")
@click.option("--streams-per-caller", type=click.IntRange(1), default=ServerLimits.streams_per_caller,
              show_default=True, help="Streams one user (or one job attempt) may hold open at once.")
@click.option("--stream-idle-timeout", type=click.FloatRange(0, min_open=True), default=ServerLimits.idle_timeout,
              show_default=True, help="Seconds an upload or a job's log push may stay silent before it is ended.")
@click.option("--max-log-bytes", type=click.IntRange(1024), default=MAX_LOG_BYTES, show_default=True,
              help="Size at which a job attempt's log is cut, with a note saying so; later lines are dropped.")
@click.option("--input-deadline", type=click.FloatRange(0, min_open=True), default=FetchSettings.deadline,
              show_default=True, help="Seconds all of a job's inputs may take to fetch (a shorter job timeout "
                                      "bounds them instead).")
@click.option("--max-download-bytes", type=click.IntRange(0), default=FetchSettings.max_bytes, show_default=True,
              help="Largest `origin` input a job may download.")
@click.option("--deny-private-origins", is_flag=True,
              help="Refuse `origin` inputs (and redirects) at addresses that are not public: loopback, private, "
                   "link-local (the cloud metadata service)...")
@click.option("-v", "--verbose", is_flag=True, help="Log scheduling decisions.")
def up(data_dir: Path, host: str, port: int, http_port: int, executor: str, etcd_endpoints: str,
       etcd_ca: Path | None, etcd_cert: Path | None, etcd_key: Path | None, etcd_user: str, etcd_prefix: str,
       parallelism: int, kill_grace: float, tls_cert: Path | None, tls_key: Path | None, job_env: tuple[str, ...],
       rpc_threads: int, max_streams: int, streams_per_caller: int, stream_idle_timeout: float,
       max_log_bytes: int,
       input_deadline: float, max_download_bytes: int, deny_private_origins: bool, verbose: bool) -> None:
    """Start the whole stack on this machine (Ctrl-C stops it)."""
    import logging
    import os
    import signal
    import threading

    from donut_cli.stack import Stack, StackConfig
    from donut_common.config import ClientConfig
    from donut_common.etcd import EtcdAccess

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        limits = ServerLimits(threads=rpc_threads, streams=max_streams, streams_per_caller=streams_per_caller,
                              idle_timeout=stream_idle_timeout)
    except ValueError as e:
        fail(f"--max-streams: {e}", EXIT_BAD_INPUT)
    password = os.environ.get("DONUT_ETCD_PASSWORD", "")  # never a flag: argv is visible in ps
    access = EtcdAccess(ca=etcd_ca, cert=etcd_cert, key=etcd_key, user=etcd_user, password=password)
    config = StackConfig(data_dir=data_dir.resolve(), host=host, port=port, http_port=http_port,
                         executor=executor, etcd_endpoints=etcd_endpoints, etcd_access=access, etcd_prefix=etcd_prefix,
                         default_parallelism=parallelism, kill_grace=kill_grace,
                         tls_cert=tls_cert, tls_key=tls_key, job_env=job_env, limits=limits,
                         max_log_bytes=max_log_bytes,
                         fetch=FetchSettings(input_deadline, max_download_bytes, deny_private_origins))
    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together", EXIT_BAD_INPUT)
    if (etcd_cert is None) != (etcd_key is None):
        fail("--etcd-cert and --etcd-key go together", EXIT_BAD_INPUT)
    if not etcd_endpoints and (etcd_ca or etcd_cert or etcd_user):
        fail("--etcd-ca, --etcd-cert, --etcd-key and --etcd-user are for an external etcd (--etcd-endpoints); "
             "the embedded one uses certificates of its own", EXIT_BAD_INPUT)
    if bool(etcd_user) != bool(password):
        fail("--etcd-user and DONUT_ETCD_PASSWORD (in the environment) go together", EXIT_BAD_INPUT)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: its terminal closed
        signal.signal(sig, lambda *_: stopped.set())
    try:
        stack = Stack(config).start()
    except Exception as e:  # noqa: BLE001 - one line for the user
        fail(f"cannot start the stack: {e}")
    try:
        try:
            existing = ClientConfig.load().token
        except ValueError:
            existing = ""  # replaced below
        token, new = stack.client_token(existing)
        try:
            path = ClientConfig(endpoint=stack.endpoint, token=token,
                                tls_ca=str(tls_cert.resolve()) if tls_cert else "").save()
        except OSError as e:
            fail(f"cannot write the client config ($DONUT_HOME): {e}")
        click.echo(f"donut is up: grpc {stack.endpoint}"
                   + (f", web {stack.http_endpoint}" if stack.http_endpoint else "")
                   + f", data {config.data_dir}", err=True)
        click.echo(f"client config written to {path}" + (" (with a new admin token)" if new else ""), err=True)
        stopped.wait()
    finally:
        click.echo("stopping...", err=True)
        stack.stop()


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--name", default="", help="A friendly name (default: the file's name).")
@click.option("--parallelism", type=click.IntRange(0, MAX_PARALLELISM), default=0,
              help="Jobs at once (0: the server's default).")
@click.option("--upload", "uploads", multiple=True, type=click.Path(path_type=Path),
              help="A file or directory to upload for `cache:` inputs (repeatable).")
@click.option("--fail-fast", is_flag=True, help="Stop everything at the first failed job.")
@click.option("--wait", is_flag=True, help="Follow the workflow to its end; exit 0 only when it is done.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with --wait: the final state).")
@pass_settings
@rpc_errors
def submit(settings: Settings, file: Path, name: str, parallelism: int, uploads: tuple[Path, ...],
           fail_fast: bool, wait: bool, as_json: bool) -> None:
    """Submit the workflow definition in FILE (YAML or JSON)."""
    import uuid


    problems = []
    text: bytes | None = None
    try:
        text = file.read_bytes()
    except OSError as e:
        problems.append(f"FILE: cannot read {file}: {e.strerror}")
    name = name or file.stem
    if name_problem(name):
        problems.append(f"--name: {name_problem(name)}")
    to_upload: list[tuple[str, Path]] = []
    for path in uploads:
        if not path.exists():
            problems.append(f"--upload: no such file or directory: {path}")
            continue
        for f in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            try:
                with open(f, "rb") as readable:
                    readable.read(1)
            except OSError as e:
                problems.append(f"--upload: cannot read {f}: {e.strerror}")
            to_upload.append((f.name if path.is_file() else str(Path(path.name) / f.relative_to(path)), f))
    client = settings.client
    definition = text or b""  # as it is: the server says where it is not UTF-8
    if text is not None:  # every problem at once: the definition's too
        check = client.dagger.ValidateDefinition(pb.ValidateDefinitionRequest(definition=definition),
                                                 metadata=client.metadata)
        problems += [f"{p.place}: {p.message}" if p.place else p.message for p in check.problems]
    if problems:
        for problem in problems:
            click.echo("error: " + problem.replace("\n", "\n  "), err=True)
        sys.exit(EXIT_BAD_INPUT)
    upload_id = uuid.uuid4().hex if to_upload else ""
    for relative, f in to_upload:
        client.cellar.put("cache", upload_id, relative, f)
        click.echo(f"uploaded {relative}", err=True)
    w = client.dagger.CreateWorkflow(
        pb.CreateWorkflowRequest(definition=definition, name=name,
                                 parallelism=parallelism, fail_fast=fail_fast, upload_id=upload_id),
        metadata=client.metadata,
    )
    if wait:
        click.echo(w.id, err=as_json)
        wait_for(settings, w.id, as_json)
    if as_json:
        click.echo(json.dumps(workflow_json(w), indent=2))
    else:
        click.echo(w.id)


@cli.command()
@click.argument("workflow_id")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
@rpc_errors
def status(settings: Settings, workflow_id: str, as_json: bool) -> None:
    """Show a workflow and its jobs."""
    show_workflow(settings.client, workflow_id, as_json)


@cli.command(name="list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUS_NAMES), help="Only these (repeatable).")
@click.option("--limit", type=click.IntRange(0), default=0, help="At most this many, newest first (0: all).")
@click.option("--page-size", type=click.IntRange(1, 1000), default=100, help="Workflows asked for per call.")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
@rpc_errors
def list_(settings: Settings, statuses: tuple[str, ...], limit: int, page_size: int, as_json: bool) -> None:
    """List workflows, newest first."""
    client = settings.client
    wanted = [pb.WorkflowStatus.Value(f"WORKFLOW_STATUS_{s.upper()}") for s in statuses]
    workflows: list[dict[str, Any]] = []
    token = ""
    while not limit or len(workflows) < limit:  # page after page
        page = client.dagger.ListWorkflows(pb.ListWorkflowsRequest(
            statuses=wanted, page_size=min(page_size, limit - len(workflows)) if limit else page_size,
            page_token=token), metadata=client.metadata)
        workflows += [workflow_json(w) for w in page.workflows]
        token = page.next_page_token
        if not token:
            break
    if as_json:
        click.echo(json.dumps(workflows, indent=2))
        return
    if not workflows:
        click.echo("no workflows", err=True)
        return
    click.echo(f"{'ID':<36}  {'NAME':<20}  {'STATUS':<10}  {'CREATED':<29}  JOBS")
    for w in workflows:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(w["job_counts"].items()))
        click.echo(f"{w['id']:<36}  {w['name'][:20]:<20}  {w['status']:<10}  {w['created_at'] or '':<29}  {counts}")


@cli.command()
@click.argument("workflow_id")
@click.argument("job")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("--attempt", type=click.IntRange(0), default=0, help="Which attempt (default: the current one).")
@pass_settings
@rpc_errors
def logs(settings: Settings, workflow_id: str, job: str, follow: bool, attempt: int) -> None:
    """Print a job's output: stdout lines to stdout, stderr lines to stderr."""
    import grpc

    client = settings.client
    out, err = sys.stdout.buffer, sys.stderr.buffer
    shown, offset = attempt, 0  # where to take up again if the connection drops
    connected, away = False, False
    if follow:  # a follower rides out a lost connection once it has reached the job, lines or not
        client.dagger.GetJob(pb.GetJobRequest(workflow_id=workflow_id, name=job), metadata=client.metadata)
        connected = True
    while True:
        request = pb.TailLogsRequest(workflow_id=workflow_id, job=job, attempt=shown, offset=offset, follow=follow)
        try:
            for chunk in client.dagger.TailLogs(request, metadata=client.metadata):
                connected, away = True, False
                if shown and chunk.attempt != shown:
                    err.write(b"[donut] attempt %d\n" % chunk.attempt)
                shown, offset = chunk.attempt, chunk.offset + len(chunk.lines)
                for line in chunk.lines:
                    if line.stream == pb.LOG_STREAM_STDERR:
                        err.write(line.text + b"\n")
                    elif line.stream == pb.LOG_STREAM_SYSTEM:
                        err.write(b"[donut] " + line.text + b"\n")
                    else:
                        out.write(line.text + b"\n")
                out.flush()
                err.flush()
            return
        except grpc.RpcError as e:
            if not (follow and connected) or e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            if not away:
                click.echo(f"[donut] lost the connection to {settings.endpoint}; following again once it is back",
                           err=True)
                away = True
            time.sleep(1)


@cli.command()
@click.argument("workflow_id")
@click.option("--download", type=click.Path(path_type=Path), help="Copy every result into DIR/<job>/<path>.")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
@rpc_errors
def results(settings: Settings, workflow_id: str, download: Path | None, as_json: bool) -> None:
    """List (or download) the saved outputs of a workflow."""
    if download is not None and download.exists() and not download.is_dir():
        fail(f"--download: not a directory: {download}", EXIT_BAD_INPUT)
    client = settings.client
    client.dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id), metadata=client.metadata)  # NOT_FOUND early
    files = client.cellar.list("result", workflow_id)
    if as_json:
        click.echo(json.dumps([{"job": f.ref.job, "path": f.ref.path, "size": f.size, "sha256": f.sha256}
                               for f in files], indent=2))
    elif not files:
        click.echo("no results saved (yet)", err=True)
    else:
        for f in files:
            click.echo(f"{f.ref.job}/{f.ref.path}  {f.size} bytes  sha256:{f.sha256[:16]}")
    if download is not None:
        root = download.resolve()
        for f in files:
            target = (root / f.ref.job / f.ref.path).resolve()
            if root not in target.parents:  # every name the server sends is checked again here
                fail(f"the server named a result outside {download}: {f.ref.job}/{f.ref.path}")
            client.cellar.get("result", workflow_id, f.ref.path, target, job=f.ref.job)
        click.echo(f"downloaded {len(files)} file(s) to {download}", err=True)


@cli.command()
@click.argument("workflow_id")
@pass_settings
@rpc_errors
def cancel(settings: Settings, workflow_id: str) -> None:
    """Terminate a workflow's running jobs and skip the rest."""
    client = settings.client
    client.dagger.CancelWorkflow(pb.CancelWorkflowRequest(id=workflow_id), metadata=client.metadata)
    click.echo(f"cancelling {workflow_id}", err=True)


@cli.command()
@click.argument("workflow_id")
@click.option("--wait", is_flag=True, help="Follow the workflow to its end.")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
@rpc_errors
def retry(settings: Settings, workflow_id: str, wait: bool, as_json: bool) -> None:
    """Re-run the failed, skipped, terminated and dead jobs of an ended workflow."""
    client = settings.client
    w = client.dagger.RetryWorkflow(pb.RetryWorkflowRequest(id=workflow_id), metadata=client.metadata)
    if wait:
        wait_for(settings, w.id, as_json)
    if as_json:
        click.echo(json.dumps(workflow_json(w), indent=2))
    else:
        click.echo(f"retrying {w.id}", err=True)


def main() -> None:
    cli(prog_name="donut")


from donut_cli import accounts  # noqa: E402,F401 - registers whoami, token and user on the group

if __name__ == "__main__":
    main()
