"""`donut up`: the whole stack on this machine, until Ctrl-C."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cellar_svc.backends import SweepSettings, s3_settings
from dagger_svc.core.limits import MAX_LOG_BYTES, MAX_PARALLELISM
from donut_cli.cli import (
    EXIT_BAD_INPUT,
    INT32_MAX,
    INT64_MAX,
    Seconds,
    cli,
    fail,
    keep_the_normal_exit,
)
from donut_cli.ui import web_url
from donut_common.config import ServerLimits, donut_home
from streamed_job.spec import FetchSettings, SaveSettings

if TYPE_CHECKING:
    from donut_cli.stack import GithubSignIn, KubeConfig, StackConfig
    from donut_cli.supervisor import StopFlag


@cli.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=donut_home() / "data",
              show_default=True, help="Where the stack keeps its state, logs and files.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=7000, show_default=True,
              help="gRPC port (0: any free port).")
@click.option("--http-port", type=click.IntRange(-1, 65535), default=7080, show_default=True,
              help="Gateway port (0: any; -1: none).")
@click.option("--metrics-port", type=click.IntRange(-1, 65535), default=0, show_default=True,
              help="Port of the Prometheus metrics, at http://HOST:PORT/metrics (0: any; -1: none).")
@click.option("--executor", type=click.Choice(["local", "wrapper", "kubernetes"]), default="local",
              show_default=True,
              help="local: jobs are processes run in-process; wrapper: each job runs under its own "
                   "streamed-job process, talking gRPC as in a cluster; kubernetes: each attempt is a Kubernetes Job.")
@click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False), default=None,
              help="[kubernetes] The kubeconfig (default: in a pod, its service account; else ~/.kube/config).")
@click.option("--kube-context", default=None, help="[kubernetes] The kubeconfig's context (default: its current one).")
@click.option("--namespace", default="donut", show_default=True, help="[kubernetes] The namespace of the Jobs.")
@click.option("--job-template", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="[kubernetes] The job template (default: the shipped k8s/base/job-template.yaml).")
@click.option("--workflows-mount", default="/srv/workflows", show_default=True,
              help="[kubernetes] Where jobs' containers mount the shared workflows volume.")
@click.option("--workflows-claim", default="donut-workflows", show_default=True,
              help="[kubernetes] The PersistentVolumeClaim of the shared workflows volume (ReadWriteMany).")
@click.option("--callback-endpoint", default="", metavar="HOST:PORT",
              help="[kubernetes] Where jobs reach dagger (default: this stack's gRPC address).")
@click.option("--kube-qps", type=click.FloatRange(min=0.1), default=20.0, show_default=True,
              help="[kubernetes] API requests per second (bursts of 1.5 times as many).")
@click.option("--kube-pending-grace", type=Seconds(min_open=True), default=300.0, show_default=True,
              help="[kubernetes] Seconds a job's pod may stay stuck pending (an image it cannot pull...) "
                   "before the attempt fails.")
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
@click.option("--kill-grace", type=Seconds(), default=10.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL for jobs cancelled or over their timeout.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Server certificate (PEM); with --tls-key, gRPC speaks only TLS.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Private key (PEM) of --tls-cert.")
@click.option("--job-env", multiple=True, metavar="NAME",
              help="An environment variable of the stack that jobs get too (repeatable; they always get PATH, "
                   "HOME, the locale...; never the rest).")
@click.option("--rpc-threads", type=click.IntRange(2, INT32_MAX), default=ServerLimits.threads, show_default=True,
              help="Threads serving gRPC calls.")
@click.option("--max-streams", type=click.IntRange(1, INT32_MAX), default=ServerLimits.streams, show_default=True,
              help="Streams open at once, everyone's together (fewer than --rpc-threads: the rest always "
                   "serve other calls).")
@click.option("--streams-per-caller", type=click.IntRange(1, INT32_MAX), default=ServerLimits.streams_per_caller,
              show_default=True, help="Streams one user (or one job attempt) may hold open at once.")
@click.option("--stream-idle-timeout", type=Seconds(min_open=True), default=ServerLimits.idle_timeout,
              show_default=True, help="Seconds an upload or a job's log push may stay silent before it is ended.")
@click.option("--max-log-bytes", type=click.IntRange(1024, INT64_MAX), default=MAX_LOG_BYTES, show_default=True,
              help="Size at which a job attempt's log is cut, with a note saying so; later lines are dropped.")
@click.option("--input-deadline", type=Seconds(min_open=True), default=FetchSettings.deadline,
              show_default=True, help="Seconds all of a job's inputs may take to fetch (a shorter job timeout "
                                      "bounds them instead).")
@click.option("--max-download-bytes", type=click.IntRange(0, INT64_MAX), default=FetchSettings.max_bytes,
              show_default=True, help="Largest `origin` input a job may download.")
@click.option("--deny-private-origins", is_flag=True,
              help="Refuse `origin` inputs (and redirects) at addresses that are not public: loopback, private, "
                   "link-local (the cloud metadata service)...")
@click.option("--retention-days", type=click.IntRange(0, 100_000), default=0, show_default=True,
              help="Delete workflows that ended more than this many days ago, in the background (0: never).")
@click.option("--archive-finished", is_flag=True,
              help="Archive every workflow's directory into cellar (as `donut archive` does) when it ends.")
@click.option("--delete-archived-workdirs", is_flag=True,
              help="With --archive-finished: remove a workflow's directory once its archive is stored and verified.")
@click.option("--quota-bytes", type=click.IntRange(0, INT64_MAX), default=None,
              help="Most bytes one user's files may hold in cellar together (default: no quota; services' and "
                   "admins' writes are never limited; a job's results count for its workflow's owner).")
@click.option("--save-deadline", type=Seconds(), default=SaveSettings.deadline, show_default=True,
              help="Seconds a job keeps trying to save its outputs while storage is unavailable, before it fails.")
@click.option("--storage", type=click.Choice(["local", "s3"]), default="local", show_default=True,
              help="Where cellar keeps uploads and results: local files under the data dir, or an S3 bucket "
                   "(credentials from the environment only: DONUT_S3_ACCESS_KEY / DONUT_S3_SECRET_KEY, else "
                   "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).")
@click.option("--s3-endpoint", default="", help="http(s)://host:port of the S3 server (with --storage s3).")
@click.option("--s3-bucket", default="", help="Bucket cellar keeps its files in; made if missing (with --storage s3).")
@click.option("--s3-region", default="", help="The bucket's region (default us-east-1).")
@click.option("--s3-prefix", default="", help="Key prefix of everything cellar stores in the bucket.")
@click.option("--sweep-interval", type=Seconds(min_open=True), default=SweepSettings.interval, show_default=True,
              help="Seconds between removals of what unfinished uploads left behind (a day old or more).")
@click.option("--public-url", default="", metavar="URL",
              help="http(s)://host[:port][/path] the web GUI is reached at (behind a proxy); GitHub's callback "
                   "and `donut ui` links point there (default: the gateway's own address).")
@click.option("--github-client-id", default="", metavar="ID",
              help="Client id of a GitHub OAuth app: sign in to the web GUI with GitHub (its secret only from the "
                   "environment, DONUT_GITHUB_CLIENT_SECRET).")
@click.option("--github-url", default="https://github.com", show_default=True, metavar="URL",
              help="GitHub's address (a GitHub Enterprise Server's for one).")
@click.option("--github-users", default="", metavar="LOGIN,...",
              help="GitHub logins that may sign in (with --github-orgs: members of those too; neither: anyone).")
@click.option("--github-orgs", default="", metavar="ORG,...", help="GitHub organisations whose members may sign in.")
@click.option("--replicas", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Scheduler replicas to run on this machine over one etcd and this data dir, each a process "
                   "serving every service on its own port (--port, --http-port and --metrics-port count up from "
                   "the given ones); one that dies is started again, and the others take over its runs meanwhile.")
@click.option("--lease-ttl", type=click.IntRange(2, 3600), default=10, show_default=True,
              help="Seconds after which the runs of a replica that stopped answering are taken over by another.")
@click.option("--max-lost-attempts", type=click.IntRange(0, 100), default=3, show_default=True,
              help="Times a job whose attempt was lost to the infrastructure (its replica died, its pod was "
                   "deleted) runs again, one loss after another, before it is `dead` (apart from its own retries).")
@click.option("--replica-id", default="", metavar="ID",
              help="Run as one replica of several (a pod, say) sharing an external etcd (--etcd-endpoints) and "
                   "this data dir, scheduling under ID (unique among them; kept across restarts, it takes its runs "
                   "back at once); no lock on the data dir. --replicas sets it for its own.")
@click.option("-v", "--verbose", is_flag=True, help="Log scheduling decisions.")
def up(data_dir: Path, host: str, port: int, http_port: int, metrics_port: int, executor: str, kubeconfig: str | None,
       kube_context: str | None, namespace: str, job_template: Path | None, workflows_mount: str,
       workflows_claim: str, callback_endpoint: str, kube_qps: float, kube_pending_grace: float, etcd_endpoints: str,
       etcd_ca: Path | None, etcd_cert: Path | None, etcd_key: Path | None, etcd_user: str, etcd_prefix: str,
       parallelism: int, kill_grace: float, tls_cert: Path | None, tls_key: Path | None, job_env: tuple[str, ...],
       rpc_threads: int, max_streams: int, streams_per_caller: int, stream_idle_timeout: float,
       max_log_bytes: int,
       input_deadline: float, max_download_bytes: int, deny_private_origins: bool, retention_days: int,
       archive_finished: bool, delete_archived_workdirs: bool, quota_bytes: int | None, save_deadline: float,
       storage: str, s3_endpoint: str, s3_bucket: str, s3_region: str, s3_prefix: str, sweep_interval: float,
       public_url: str, github_client_id: str, github_url: str, github_users: str, github_orgs: str,
       replicas: int, lease_ttl: int, max_lost_attempts: int, replica_id: str, verbose: bool) -> None:
    """Start the whole stack on this machine (Ctrl-C stops it)."""
    keep_the_normal_exit()
    import logging
    import os
    import signal

    from dagger_svc.deletion import RetentionSettings
    from donut_cli.stack import Stack, StackConfig
    from donut_cli.supervisor import StopFlag
    from donut_common.etcd import EtcdAccess

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s " + (f"[{replica_id}] " if replica_id else "")
                        + "%(levelname)s %(name)s: %(message)s")
    try:
        limits = ServerLimits(threads=rpc_threads, streams=max_streams, streams_per_caller=streams_per_caller,
                              idle_timeout=stream_idle_timeout)
    except ValueError as e:
        fail(f"--max-streams: {e}", EXIT_BAD_INPUT)
    try:
        s3 = s3_settings(storage, s3_endpoint, s3_bucket, s3_region, s3_prefix)
    except ValueError as e:
        fail(str(e), EXIT_BAD_INPUT)
    password = os.environ.get("DONUT_ETCD_PASSWORD", "")  # never a flag: argv is visible in ps
    github = _github_sign_in(github_client_id, os.environ.get("DONUT_GITHUB_CLIENT_SECRET", ""), github_url,
                             github_users, github_orgs)
    public_url = web_url("--public-url", public_url)
    access = EtcdAccess(ca=etcd_ca, cert=etcd_cert, key=etcd_key, user=etcd_user, password=password)
    config = StackConfig(data_dir=data_dir.resolve(), host=host, port=port, http_port=http_port,
                         metrics_port=metrics_port,
                         executor=executor, etcd_endpoints=etcd_endpoints, etcd_access=access, etcd_prefix=etcd_prefix,
                         default_parallelism=parallelism, kill_grace=kill_grace,
                         tls_cert=tls_cert, tls_key=tls_key, job_env=job_env, limits=limits,
                         max_log_bytes=max_log_bytes,
                         fetch=FetchSettings(input_deadline, max_download_bytes, deny_private_origins),
                         retention=RetentionSettings(days=retention_days),
                         archive_finished=archive_finished, delete_archived_workdirs=delete_archived_workdirs,
                         quota_bytes=quota_bytes, save=SaveSettings(deadline=save_deadline),
                         storage=s3, sweep=SweepSettings(interval=sweep_interval), public_url=public_url,
                         github=github, lease_ttl=lease_ttl, max_lost_attempts=max_lost_attempts,
                         replica_id=replica_id, kubernetes=_kubernetes(executor, kubeconfig, kube_context, namespace,
                                                               job_template, workflows_mount, workflows_claim,
                                                               callback_endpoint, kube_qps, kube_pending_grace))
    if delete_archived_workdirs and not archive_finished:
        fail("--delete-archived-workdirs goes only with --archive-finished (a directory is removed only once "
             "its archive is stored)", EXIT_BAD_INPUT)
    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together", EXIT_BAD_INPUT)
    if (etcd_cert is None) != (etcd_key is None):
        fail("--etcd-cert and --etcd-key go together", EXIT_BAD_INPUT)
    if not etcd_endpoints and (etcd_ca or etcd_cert or etcd_user):
        fail("--etcd-ca, --etcd-cert, --etcd-key and --etcd-user are for an external etcd (--etcd-endpoints); "
             "the embedded one uses certificates of its own", EXIT_BAD_INPUT)
    if bool(etcd_user) != bool(password):
        fail("--etcd-user and DONUT_ETCD_PASSWORD (in the environment) go together", EXIT_BAD_INPUT)
    for option, wanted in (("--port", port), ("--http-port", http_port), ("--metrics-port", metrics_port)):
        for index in range(replicas):
            nth = wanted + index if wanted > 0 else wanted
            if trouble := _port_trouble(host, nth):
                fail(f"{option}: cannot listen on {host}:{nth}" + (f" (replica {index})" if replicas > 1 else "")
                     + f": {trouble}")
    stopped = StopFlag()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: its terminal closed
        signal.signal(sig, stopped.raise_)
    if replica_id:
        _serve_as_replica(config, stopped)
        return
    if replicas > 1:
        _supervise(config, replicas, tls_cert, stopped)
        return
    try:
        stack = Stack(config).start()
    except Exception as e:  # noqa: BLE001 - one line for the user
        fail(f"cannot start the stack: {e}")
    try:
        path, new = _write_client_config(stack.endpoint, stack.client_token, tls_cert)
        click.echo(f"donut is up: grpc {stack.endpoint}"
                   + (f", web {stack.http_endpoint}" if stack.http_endpoint else "")
                   + (f", metrics {stack.metrics_url}" if stack.metrics_url else "")
                   + f", data {config.data_dir}", err=True)
        click.echo(f"client config written to {path}" + (" (with a new admin token)" if new else ""), err=True)
        if stack.http_endpoint:
            also = ", or sign in with GitHub" if github.client_id else ""
            click.echo(f"web GUI: run `donut ui` to open it signed in{also}", err=True)
        stopped.wait()
    finally:
        click.echo("stopping...", err=True)
        stack.stop()


def _serve_as_replica(config: StackConfig, stopped: StopFlag) -> None:
    """One replica among several: the stack until told to stop. Under `donut up --replicas`
    the supervisor writes the client config and speaks for them all; a replica started on
    its own (a pod) writes its admin's, as a lone `donut up` does."""
    import os

    from donut_cli.stack import Stack
    from donut_cli.supervisor import SUPERVISED

    try:
        stack = Stack(config).start()
    except Exception as e:  # noqa: BLE001 - one line, in the supervisor's output
        fail(f"replica {config.replica_id}: cannot start: {e}")
    try:
        if supervisor := os.environ.get(SUPERVISED):
            stopped.raise_when_gone(int(supervisor))  # a supervisor killed outright leaves no replica behind
        else:
            _write_client_config(stack.endpoint, stack.client_token, config.tls_cert)
            click.echo(f"donut is up: replica {config.replica_id}, grpc {stack.endpoint}", err=True)
        stopped.wait()
    finally:
        stack.stop()


def _supervise(config: StackConfig, replicas: int, tls_cert: Path | None, stopped: StopFlag) -> None:
    import sys

    from donut_cli.supervisor import Supervisor

    argv = sys.argv[1:]
    supervisor = Supervisor(config, replicas, argv)
    try:
        supervisor.start()
    except Exception as e:  # noqa: BLE001 - one line for the user
        fail(f"cannot start the stack: {e}")
    try:
        endpoints = supervisor.endpoints()
        path, new = _write_client_config(",".join(endpoints), supervisor.client_token, tls_cert)
        click.echo(f"donut is up: {replicas} replicas, grpc {' '.join(endpoints)}, data {config.data_dir}", err=True)
        click.echo(f"client config written to {path}" + (" (with a new admin token)" if new else ""), err=True)
        click.echo("see them with `donut cluster`", err=True)
        supervisor.supervise(stopped)
    finally:
        click.echo("stopping...", err=True)
        supervisor.stop()


def _write_client_config(endpoint: str, client_token: Callable[[str], tuple[str, bool]],
                         tls_cert: Path | None) -> tuple[Path, bool]:
    """Writes client.json for the person running the stack: the endpoint, their admin token
    (the one there while it works, else a new one). Returns where, and whether the token is new."""
    from donut_common.config import ClientConfig

    try:
        existing = ClientConfig.load().token
    except ValueError:
        existing = ""  # replaced
    token, new = client_token(existing)
    try:
        return ClientConfig(endpoint=endpoint, token=token,
                            tls_ca=str(tls_cert.resolve()) if tls_cert else "").save(), new
    except OSError as e:
        fail(f"cannot write the client config ($DONUT_HOME): {e}")


def _port_trouble(host: str, port: int) -> str | None:
    """Why the stack could not listen on host:port, found before anything starts (the
    servers' own errors say it less plainly, or not in one line)."""
    import errno
    import socket

    if port <= 0:
        return None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            probe.bind(infos[0][4])
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return "the port is in use (is `donut up` running already?)"
        return e.strerror or str(e)
    return None


GITHUB_NAME = re.compile(r"[A-Za-z0-9](?:-?[A-Za-z0-9]){0,38}")  # a GitHub login or organisation name


def _kubernetes(executor: str, kubeconfig: str | None, context: str | None, namespace: str,
                job_template: Path | None, mount: str, claim: str, callback: str, qps: float,
                pending_grace: float) -> KubeConfig:
    """The cluster the flags name; a one-line exit 2 for a template that cannot work."""
    from dagger_svc.executors.kube_render import check_template
    from donut_cli.stack import JOB_TEMPLATE, KubeConfig

    template = job_template or JOB_TEMPLATE
    if executor == "kubernetes":
        try:
            check_template(template.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            fail(f"--job-template: {template}: {e}", EXIT_BAD_INPUT)
        if not mount.startswith("/"):
            fail("--workflows-mount: must be an absolute path", EXIT_BAD_INPUT)
    return KubeConfig(kubeconfig=kubeconfig, context=context, namespace=namespace, job_template=template,
                      workflows_mount=mount, workflows_claim=claim, callback_endpoint=callback, qps=qps,
                      pending_grace=pending_grace)


def _github_sign_in(client_id: str, client_secret: str, url: str, users: str, orgs: str) -> GithubSignIn:
    """The GitHub sign-in the flags ask for; a one-line exit 2 naming what is wrong."""
    from donut_cli.stack import GithubSignIn

    if client_id and not client_secret:
        fail("--github-client-id needs the OAuth app's secret in the environment: DONUT_GITHUB_CLIENT_SECRET",
             EXIT_BAD_INPUT)
    return GithubSignIn(client_id=client_id, client_secret=client_secret if client_id else "",
                        url=web_url("--github-url", url), users=_github_names("--github-users", users),
                        orgs=_github_names("--github-orgs", orgs))


def _github_names(option: str, text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if len(name) > 39 or not GITHUB_NAME.fullmatch(name):
            fail(f"{option}: not a GitHub login or organisation name: {name!r} (letters, digits and single "
                 "hyphens inside, at most 39)", EXIT_BAD_INPUT)
    return names

