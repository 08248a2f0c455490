"""Workflow commands: submit, status, list, cancel, retry, and how a workflow is shown."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from dagger_svc.core.limits import MAX_PARALLELISM, name_problem
from donut.dagger.v1 import dagger_pb2 as pb
from donut_cli.cli import (
    ACTIVE,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    INT32_MAX,
    JOB_STATUS_NAMES,
    STATUS_NAMES,
    WORKFLOW_ID,
    Client,
    Settings,
    cli,
    iso_time,
    job_status_name,
    pass_settings,
    rpc_errors,
    status_name,
)


def workflow_json(w: pb.Workflow) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": w.id, "name": w.name, "status": status_name(w.status),
        "parallelism": w.parallelism, "message": w.message, "created_at": iso_time(w.created_at),
        "started_at": iso_time(w.started_at), "finished_at": iso_time(w.finished_at), "job_counts": dict(w.job_counts),
        "workdir": w.workdir,
    }
    if w.jobs:
        doc["jobs"] = [
            {
                "name": j.name, "status": job_status_name(j.status),
                "exit_code": j.exit_code if j.HasField("exit_code") else None, "attempt": j.attempt,
                "started_at": iso_time(j.started_at), "finished_at": iso_time(j.finished_at), "message": j.message,
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
@click.argument("workflow_id", type=WORKFLOW_ID)
@click.option("--json", "as_json", is_flag=True)
@pass_settings
@rpc_errors
def status(settings: Settings, workflow_id: str, as_json: bool) -> None:
    """Show a workflow and its jobs."""
    show_workflow(settings.client, workflow_id, as_json)


@cli.command(name="list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUS_NAMES), help="Only these (repeatable).")
@click.option("--limit", type=click.IntRange(0, INT32_MAX), default=0, help="At most this many, newest first (0: all).")
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
@click.argument("workflow_id", type=WORKFLOW_ID)
@pass_settings
@rpc_errors
def cancel(settings: Settings, workflow_id: str) -> None:
    """Terminate a workflow's running jobs and skip the rest."""
    client = settings.client
    client.dagger.CancelWorkflow(pb.CancelWorkflowRequest(id=workflow_id), metadata=client.metadata)
    click.echo(f"cancelling {workflow_id}", err=True)


@cli.command()
@click.argument("workflow_id", type=WORKFLOW_ID)
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
