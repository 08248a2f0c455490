"""Workflow commands: submit, status, list, cancel, retry, and how a workflow is shown."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click

from dagger_svc.core.limits import MAX_PARALLELISM, label_problems, name_problem
from donut.dagger.v1 import dagger_pb2 as pb
from donut_cli.cli import (
    ACTIVE,
    DURATION,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    INT32_MAX,
    JOB_STATUS_NAMES,
    LABEL,
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
from donut_cli.output import TABLE, age, cell, columns, elapsed, emit, output_option, parse_time

EXIT_INTERRUPTED = 130
NAME_COLUMNS = 30


def _attempt_json(a: pb.Attempt) -> dict[str, Any]:
    return {"number": a.number, "status": job_status_name(a.status),
            "exit_code": a.exit_code if a.HasField("exit_code") else None, "signal": a.signal,
            "message": a.message, "started_at": iso_time(a.started_at), "finished_at": iso_time(a.finished_at)}


def workflow_json(w: pb.Workflow) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": w.id, "name": w.name, "owner": w.owner, "status": status_name(w.status),
        "parallelism": w.parallelism, "fail_fast": w.fail_fast, "message": w.message,
        "created_at": iso_time(w.created_at), "started_at": iso_time(w.started_at),
        "finished_at": iso_time(w.finished_at), "job_counts": dict(w.job_counts), "workdir": w.workdir,
        "labels": dict(w.labels),
        "archived_at": iso_time(w.archived_at), "archive_sha256": w.archive_sha256,
    }
    if w.jobs:
        doc["jobs"] = [
            {
                "name": j.name, "status": job_status_name(j.status),
                "exit_code": j.exit_code if j.HasField("exit_code") else None, "attempt": j.attempt,
                "retries": j.spec.retries, "retry_at": iso_time(j.retry_at),
                "started_at": iso_time(j.started_at), "finished_at": iso_time(j.finished_at), "message": j.message,
                "depends_on": list(j.depends_on), "neighbors": list(j.neighbors),
                "attempts": [_attempt_json(a) for a in j.attempts],
            }
            for j in w.jobs
        ]
    return doc


def _counts_line(w: pb.Workflow) -> str:
    parts = [f"{w.job_counts[s]} {s}" for s in JOB_STATUS_NAMES if w.job_counts.get(s)]
    return ", ".join(parts) or "no jobs"


def _job_message(job: dict[str, Any], now: datetime) -> str:
    """The job's message, or how long until its next attempt while it waits out a retry backoff."""
    retry_at = parse_time(job["retry_at"])
    if retry_at is None:
        return str(job["message"])
    seconds = max(0, math.ceil((retry_at - now).total_seconds()))
    return f"retry {job['attempt']}/{job['retries']} in {seconds}s"


def _job_duration(job: dict[str, Any], now: datetime) -> str:
    if job["status"] == "running" or job["finished_at"]:
        return elapsed(job["started_at"], job["finished_at"], now)
    return ""


def _exit(code: int | None) -> str:
    return "" if code is None else str(code)


def job_lines(doc: dict[str, Any], wide: bool = False) -> list[str]:
    """The jobs as a table: the latest attempt of each."""
    now = datetime.now(UTC)
    headers = ["JOB", "STATUS", "ATTEMPT", "EXIT", "DURATION", *(["STARTED", "AFTER"] if wide else []), "MESSAGE"]
    rows = [[j["name"], j["status"], str(j["attempt"]), _exit(j["exit_code"]), _job_duration(j, now),
             *([age(j["started_at"], now), ",".join(j["depends_on"])] if wide else []), _job_message(j, now)]
            for j in doc.get("jobs", [])]
    return columns(headers, rows) if rows else []


def attempt_lines(doc: dict[str, Any]) -> list[str]:
    """Every attempt of every job."""
    now = datetime.now(UTC)
    rows = [[j["name"], str(a["number"]), a["status"], _exit(a["exit_code"]),
             elapsed(a["started_at"], a["finished_at"], now), a["message"]]
            for j in doc.get("jobs", []) for a in j["attempts"]]
    return columns(["JOB", "ATTEMPT", "STATUS", "EXIT", "DURATION", "MESSAGE"], rows) if rows else []


def tree_lines(doc: dict[str, Any]) -> list[str]:
    """The jobs under the jobs they depend on; a job after several is drawn in full once."""
    jobs = {j["name"]: j for j in doc.get("jobs", [])}
    lines: list[str] = []
    drawn: set[str] = set()

    def draw(name: str, prefix: str, branch: str, inner: str) -> None:
        job = jobs[name]
        lines.append(f"{prefix}{branch}{name}  {job['status']}" + ("  (see above)" if name in drawn else ""))
        if name in drawn:
            return
        drawn.add(name)
        children = job["neighbors"]
        for i, child in enumerate(children):
            last = i == len(children) - 1
            draw(child, prefix + inner, "└─ " if last else "├─ ", "   " if last else "│  ")

    for name, job in jobs.items():
        if not job["depends_on"]:
            draw(name, "", "", "")
    return lines


def _header(doc: dict[str, Any]) -> list[str]:
    return [f"workflow {doc['id']} ({doc['name']}): {doc['status']}"
            + (f" - {doc['message']}" if doc.get("message") else ""),
            f"  owner {doc.get('owner_login') or doc['owner'] or '-'}, "
            f"fail-fast {'on' if doc['fail_fast'] else 'off'}, "
            f"parallelism {doc['parallelism']}, created {doc['created_at']}, workdir {doc['workdir']}"] + (
        [f"  archived {doc['archived_at']} (sha256:{doc['archive_sha256']})"] if doc.get("archived_at") else [])


def print_workflow(doc: dict[str, Any], wide: bool = False, view: str = "jobs") -> None:
    """The workflow and its jobs as a table (or every attempt, or the dependency tree)."""
    body = {"jobs": lambda: job_lines(doc, wide), "attempts": lambda: attempt_lines(doc),
            "tree": lambda: tree_lines(doc)}[view]()
    for line in _header(doc) + ["  " + line for line in body]:
        click.echo(line)


def follow(settings: Settings, workflow_id: str, include_jobs: bool = False) -> Iterator[pb.Workflow]:
    """The workflow on every change until it ends, through the server going away and coming back."""
    import grpc

    client = settings.client
    away = False
    while True:
        try:
            for w in client.dagger.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id, include_jobs=include_jobs),
                                                 metadata=client.metadata):
                away = False
                yield w
                if w.status not in ACTIVE:
                    return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            if client.moved():
                continue
            if not away:
                click.echo(f"cannot reach donut at {client.endpoint}; still trying (Ctrl-C stops waiting, "
                           "not the workflow)", err=True)
                away = True
            time.sleep(1)


def _still_running(workflow_id: str) -> NoReturn:
    click.echo(f"\nthe workflow keeps running; follow it again with: donut watch {workflow_id}", err=True)
    sys.exit(EXIT_INTERRUPTED)


def wait_for(settings: Settings, workflow_id: str, output: str) -> NoReturn:
    """Follows the workflow to its end, showing progress on stderr; exits 0 when done."""
    last = ""
    final = ""
    try:
        for w in follow(settings, workflow_id):
            line = f"{status_name(w.status)}: {_counts_line(w)}"
            if line != last:
                click.echo(f"[{datetime.now().strftime('%H:%M:%S')}] {line}", err=True)
                last = line
            final = status_name(w.status)
    except KeyboardInterrupt:
        _still_running(workflow_id)
    show_workflow(settings.client, workflow_id, output)
    sys.exit(0 if final == "done" else EXIT_FAILED)


def show_workflow(client: Client, workflow_id: str, output: str, view: str = "jobs") -> pb.Workflow:
    """Prints the workflow and its jobs in the chosen format; returns what it printed."""
    w = client.dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id, include_jobs=True), metadata=client.metadata)
    emit(workflow_json(w), output,
         lambda doc, wide: print_workflow({**doc, "owner_login": _owner_login(client, w.owner)}, wide, view))
    return w


def kubernetes_note(w: pb.Workflow) -> str:
    """The note that a workflow's pod settings matter only on Kubernetes ("" if it has none):
    the CLI can't tell which executor the server runs."""
    count = sum(1 for j in w.jobs if j.spec.kubernetes_json)
    if not count:
        return ""
    jobs = "1 job has" if count == 1 else f"{count} jobs have"
    return f"note: {jobs} kubernetes: settings, which only the Kubernetes executor uses"


def files_to_upload(uploads: tuple[Path, ...], problems: list[str]) -> list[tuple[str, Path]]:
    """(name in the upload, file) of every file --upload names: a file by its name, a
    directory's files under its name; what can't be read is added to `problems`."""
    found: list[tuple[str, Path]] = []
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
            found.append((f.name if path.is_file() else str(Path(path.name) / f.relative_to(path)), f))
    return found


@cli.command()
@click.argument("file", type=click.Path(path_type=Path, allow_dash=True))
@click.option("--name", default="", help="A friendly name (default: the file's name; 'stdin' for -).")
@click.option("--parallelism", type=click.IntRange(0, MAX_PARALLELISM), default=0,
              help="Jobs at once (0: the server's default).")
@click.option("--upload", "uploads", multiple=True, type=click.Path(path_type=Path),
              help="A file or directory to upload for `cache:` inputs (repeatable).")
@click.option("--fail-fast", is_flag=True, help="Stop everything at the first failed job.")
@click.option("--label", "labels", multiple=True, type=LABEL,
              help="A label KEY=VALUE to find the workflow by (`list --label`; repeatable).")
@click.option("--dry-run", is_flag=True, help="Check everything on the server, upload and store nothing; "
              "print 'valid' (exit 0) or every problem (exit 2).")
@click.option("--wait", is_flag=True, help="Follow the workflow to its end; exit 0 only when it is done.")
@output_option
@pass_settings
@rpc_errors
def submit(settings: Settings, file: Path, name: str, parallelism: int, uploads: tuple[Path, ...],
           fail_fast: bool, labels: tuple[tuple[str, str], ...], dry_run: bool, wait: bool, output: str) -> None:
    """Submit the workflow definition in FILE (YAML or JSON; - reads it from stdin)."""
    import uuid

    problems = [f"--label: {p.place}: {p.message}" for p in label_problems(dict(labels))]
    text: bytes | None = None
    try:
        text = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as e:
        problems.append(f"FILE: cannot read {file}: {e.strerror}")
    name = name or ("stdin" if str(file) == "-" else file.stem)
    if name_problem(name):
        problems.append(f"--name: {name_problem(name)}")
    to_upload = files_to_upload(uploads, problems)
    client = settings.client
    definition = text or b""  # as it is: the server says where it is not UTF-8
    if text is not None and (problems or to_upload or dry_run):  # every problem at once, before any upload
        check = client.dagger.ValidateDefinition(pb.ValidateDefinitionRequest(
            definition=definition, check_uploads=True, uploads=[relative for relative, _ in to_upload]),
            metadata=client.metadata)
        problems += [f"{p.place}: {p.message}" if p.place else p.message for p in check.problems]
    if problems:
        for problem in problems:
            click.echo("error: " + problem.replace("\n", "\n  "), err=True)
        sys.exit(EXIT_BAD_INPUT)
    if dry_run:
        click.echo("valid")
        return
    upload_id = uuid.uuid4().hex if to_upload else ""
    for relative, f in to_upload:
        client.cellar.put("cache", upload_id, relative, f)
        click.echo(f"uploaded {relative}", err=True)
    w = client.dagger.CreateWorkflow(
        pb.CreateWorkflowRequest(definition=definition, name=name,
                                 parallelism=parallelism, fail_fast=fail_fast, upload_id=upload_id,
                                 labels=dict(labels)),
        metadata=client.metadata,
    )
    if wait:
        click.echo(w.id, err=output != TABLE)
        wait_for(settings, w.id, output)
    emit(workflow_json(w), output, lambda doc, wide: click.echo(doc["id"]))


@cli.command()
@click.argument("workflow_id", type=WORKFLOW_ID)
@click.option("--attempts", "view", flag_value="attempts", help="Every attempt of every job.")
@click.option("--tree", "view", flag_value="tree", help="The jobs under the jobs they depend on.")
@output_option
@pass_settings
@rpc_errors
def status(settings: Settings, workflow_id: str, view: str | None, output: str) -> None:
    """Show a workflow and its jobs (the latest attempt of each)."""
    note = kubernetes_note(show_workflow(settings.client, workflow_id, output, view or "jobs"))
    if note:
        click.echo(note, err=True)


@cli.command()
@click.argument("workflow_id", type=WORKFLOW_ID)
@pass_settings
@rpc_errors
def watch(settings: Settings, workflow_id: str) -> None:
    """Follow a workflow's jobs until it ends; exit 0 when it is done, 1 otherwise.

    On a terminal the table is redrawn in place; piped, each change is one line.
    """
    final = ""
    try:
        if sys.stdout.isatty():
            final = _watch_table(settings, workflow_id)
        else:
            final = _watch_lines(settings, workflow_id)
    except KeyboardInterrupt:
        _still_running(workflow_id)
    sys.exit(0 if final == "done" else EXIT_FAILED)


def _watch_lines(settings: Settings, workflow_id: str) -> str:
    """One line per change: the workflow's status, then each job's."""
    seen: dict[str, tuple[str, ...]] = {}
    final = ""
    for w in follow(settings, workflow_id, include_jobs=True):
        doc = workflow_json(w)
        final = doc["status"]
        changes = [
            (j["name"], (j["status"], str(j["attempt"]), _exit(j["exit_code"]), j["message"], j["retry_at"] or ""))
            for j in doc.get("jobs", [])] + [("workflow", (final, _counts_line(w)))]
        for name, state in changes:
            if seen.get(name) != state:
                seen[name] = state
                click.echo(_change_line(name, state))
        sys.stdout.flush()
    return final


def _change_line(name: str, state: tuple[str, ...]) -> str:
    if name == "workflow":
        return f"workflow: {state[0]} ({state[1]})"
    status, attempt, exit_code, message, retry_at = state
    return (f"{name}: {status}, attempt {attempt}" + (f", exit {exit_code}" if exit_code else "")
            + (f", retry at {retry_at}" if retry_at else "") + (f" - {message}" if message else ""))


def _watch_table(settings: Settings, workflow_id: str) -> str:
    """The table, redrawn in place on every change and every second (elapsed times move)."""
    import queue
    import threading

    updates: queue.Queue[pb.Workflow | BaseException | None] = queue.Queue()

    def receive() -> None:
        try:
            for w in follow(settings, workflow_id, include_jobs=True):
                updates.put(w)
            updates.put(None)
        except BaseException as e:  # noqa: BLE001 - raised again on the main thread
            updates.put(e)

    threading.Thread(target=receive, daemon=True).start()
    doc: dict[str, Any] | None = None
    drawn = 0
    while True:
        try:
            update: pb.Workflow | BaseException | str | None = updates.get(timeout=1)
        except queue.Empty:
            update = "tick"
        if isinstance(update, BaseException):
            raise update
        if isinstance(update, pb.Workflow):
            doc = workflow_json(update)
        if doc is not None:
            lines = _header(doc)[:1] + ["  " + line for line in job_lines(doc)]
            click.echo((f"\x1b[{drawn}F\x1b[J" if drawn else "") + "\n".join(lines))
            drawn = len(lines)
        if update is None:
            return doc["status"] if doc else ""


ENDED = tuple(s for s in STATUS_NAMES if pb.WorkflowStatus.Value(f"WORKFLOW_STATUS_{s.upper()}") not in ACTIVE)


@cli.command(name="list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUS_NAMES), help="Only these (repeatable).")
@click.option("--running", is_flag=True, help="Only queued and running ones.")
@click.option("--completed", is_flag=True, help=f"Only ended ones ({', '.join(ENDED)}).")
@click.option("--since", type=DURATION, help="Only those created this recently: 10m, 2h, 1d.")
@click.option("--limit", type=click.IntRange(0, INT32_MAX), default=50, show_default=True,
              help="At most this many, newest first (0: all).")
@click.option("--page-size", type=click.IntRange(1, 1000), default=100, help="Workflows asked for per call.")
@click.option("--label", "labels", multiple=True, type=LABEL, help="Only those with this label (repeatable: all).")
@output_option
@pass_settings
@rpc_errors
def list_(settings: Settings, statuses: tuple[str, ...], running: bool, completed: bool, since: timedelta | None,
          limit: int, page_size: int, labels: tuple[tuple[str, str], ...], output: str) -> None:
    """List workflows, newest first."""
    client = settings.client
    names = set(statuses) | ({"queued", "running"} if running else set()) | (set(ENDED) if completed else set())
    wanted = [pb.WorkflowStatus.Value(f"WORKFLOW_STATUS_{s.upper()}") for s in sorted(names)]
    after = datetime.now(UTC) - since if since is not None else None
    workflows: list[dict[str, Any]] = []
    token = ""
    while not limit or len(workflows) < limit:  # page after page
        page = client.dagger.ListWorkflows(pb.ListWorkflowsRequest(
            statuses=wanted, page_size=min(page_size, limit - len(workflows)) if limit else page_size,
            page_token=token, labels=dict(labels)), metadata=client.metadata)
        docs = [workflow_json(w) for w in page.workflows]
        recent = [d for d in docs if after is None or (parse_time(d["created_at"]) or after) > after]
        workflows += recent
        token = page.next_page_token if len(recent) == len(docs) else ""  # older ones follow: stop
        if not token:
            break
    if not workflows and output in (TABLE, "wide"):
        click.echo("no workflows", err=True)
    else:
        owners = _owner_logins(client, output == "wide") if output in (TABLE, "wide") else None
        emit(workflows, output, lambda docs, wide: _workflow_table(docs, wide, owners))
    if token:
        click.echo("… and more: --limit 0 for all", err=True)


def _owner_logins(client: Client, wide: bool) -> dict[str, str] | None:
    """Every user's login by id for an admin (who sees everyone's workflows); the caller's own
    for others in `wide`; None: no OWNER column."""
    from donut.users.v1 import users_pb2

    me = client.users.WhoAmI(users_pb2.WhoAmIRequest(), metadata=client.metadata).user
    if me.admin:
        return {u.id: u.login for u in client.users.ListUsers(users_pb2.ListUsersRequest(),
                                                               metadata=client.metadata).users}
    return {me.id: me.login} if wide else None


def _owner_login(client: Client, user_id: str) -> str:
    """The owner's login (the id where the caller may not look the user up)."""
    import grpc

    from donut.users.v1 import users_pb2

    try:
        return client.users.GetUser(users_pb2.GetUserRequest(id=user_id), metadata=client.metadata).login
    except grpc.RpcError:
        return user_id


def _workflow_table(docs: list[dict[str, Any]], wide: bool, owners: dict[str, str] | None) -> None:
    now = datetime.now(UTC)
    headers = ["ID", "NAME", *(["OWNER"] if owners is not None else []), "STATUS", "AGE", "DURATION",
               *(["STARTED"] if wide else []), "JOBS", *(["MESSAGE"] if wide else [])]
    rows = [[d["id"], cell(d["name"], NAME_COLUMNS),
             *([owners.get(d["owner"], d["owner"])] if owners is not None else []), d["status"],
             age(d["created_at"], now), elapsed(d["started_at"], d["finished_at"], now),
             *([age(d["started_at"], now)] if wide else []),
             ", ".join(f"{n} {s}" for s, n in sorted(d["job_counts"].items())) or "-",
             *([d["message"]] if wide else [])]
            for d in docs]
    for line in columns(headers, rows):
        click.echo(line)


@cli.command()
@click.argument("workflow_id", type=WORKFLOW_ID)
@pass_settings
@rpc_errors
def cancel(settings: Settings, workflow_id: str) -> None:
    """Terminate a workflow: its running jobs are killed; they and the jobs yet to run end `terminated`."""
    client = settings.client
    client.dagger.CancelWorkflow(pb.CancelWorkflowRequest(id=workflow_id), metadata=client.metadata)
    click.echo(f"cancelling {workflow_id}", err=True)


@cli.command()
@click.argument("workflow_id", type=WORKFLOW_ID)
@click.option("--jobs", "jobs", multiple=True, metavar="A,B",
              help="Only these jobs and their descendants (comma-separated; repeatable).")
@click.option("--restart-successful", is_flag=True, help="Run the succeeded jobs among them again too.")
@click.option("--wait", is_flag=True, help="Follow the workflow to its end.")
@output_option
@pass_settings
@rpc_errors
def retry(settings: Settings, workflow_id: str, jobs: tuple[str, ...], restart_successful: bool, wait: bool,
          output: str) -> None:
    """Re-run the failed, skipped, terminated and dead jobs of an ended workflow."""
    client = settings.client
    only = [name.strip() for names in jobs for name in names.split(",")]
    w = client.dagger.RetryWorkflow(pb.RetryWorkflowRequest(id=workflow_id, jobs=only,
                                                            restart_successful=restart_successful),
                                    metadata=client.metadata)
    if wait:
        wait_for(settings, w.id, output)
    emit(workflow_json(w), output, lambda doc, wide: click.echo(f"retrying {doc['id']}", err=True))
