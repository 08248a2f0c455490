"""The workflow pages: the list, the form that creates one (or one like another), a
workflow with its DAG and jobs, the buttons that cancel, retry and delete it, and the
events that keep those pages live."""

from __future__ import annotations

import posixpath
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, send_file, url_for
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import FileStorage

from donut.cellar.v1 import cellar_pb2 as cpb
from donut.dagger.v1 import dagger_pb2 as pb
from donut.users.v1 import users_pb2 as upb
from gateway import formats, sse
from gateway.auth import login_required, wants_json
from gateway.definitions import definition_yaml
from gateway.layout import Spacing, layout
from gateway.services import SignedIn, services, signed_in

PAGE_SIZE = 50
JOB_ROWS = 500
"""Rows of a workflow's job table per page (the DAG shows every job)."""
JOB_STATUSES = ("waiting", "queued", "running", "succeeded", "failed", "skipped", "terminated", "dead")
WORKFLOW_STATUSES = ("queued", "running", "done", "failed", "terminated", "dead")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fruit_gather.yaml"
UPLOAD_CHUNK = 1024 * 1024
DRAWINGS_KEPT = 16
"""Layouts of workflows kept in memory (the most recently drawn)."""

blueprint = Blueprint("workflows", __name__)


@blueprint.record_once
def _filters(state: Any) -> None:
    formats.register(state.app)
    state.app.jinja_env.globals.update(JOB_STATUSES=JOB_STATUSES, signed_in=signed_in)


def me() -> SignedIn:
    found = signed_in()
    assert found is not None, "the view is login_required"
    return found


# ---- the list ------------------------------------------------------------------------

@blueprint.get("/workflows")
@login_required
def listing() -> ResponseReturnValue:
    """Newest first, a page at a time (`page` is the services' page token), `status` filters;
    `rows=1` gives the table's rows alone (what the page refreshes itself with)."""
    status = request.args.get("status", "")
    if status and status not in WORKFLOW_STATUSES:
        abort(400, f"status must be one of {', '.join(WORKFLOW_STATUSES)}")
    user = me()
    answer = services().dagger.ListWorkflows(pb.ListWorkflowsRequest(
        statuses=[pb.WorkflowStatus.Value(f"WORKFLOW_STATUS_{status.upper()}")] if status else [],
        page_size=PAGE_SIZE, page_token=request.args.get("page", "")), metadata=user.metadata)
    owners = _owner_logins(user) if user.admin else {}
    template = "workflow_rows.html" if request.args.get("rows") else "workflows.html"
    return render_template(template, workflows=answer.workflows, next_page=answer.next_page_token, status=status,
                           statuses=WORKFLOW_STATUSES, owners=owners)


def _owner_logins(user: SignedIn) -> dict[str, str]:
    return {u.id: u.login for u in services().users.ListUsers(upb.ListUsersRequest(), metadata=user.metadata).users}


# ---- creating ------------------------------------------------------------------------

@blueprint.get("/workflows/admin/new")
@blueprint.get("/workflows/admin/new/<workflow_id>")
@login_required
def new(workflow_id: str = "") -> ResponseReturnValue:
    form = {"name": "", "parallelism": "", "definition": "", "like": ""}
    files: list[str] = []
    if workflow_id:
        original = services().dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id, include_jobs=True),
                                                 metadata=me().metadata)
        form = {"name": original.name, "parallelism": str(original.parallelism),
                "definition": definition_yaml(original.jobs), "like": original.id}
        files = _uploaded(original)
    return render_template("new.html", form=form, like_files=files, problems=[])


@blueprint.get("/workflows/admin/example.yaml")
@login_required
def example() -> ResponseReturnValue:
    return send_file(EXAMPLE, mimetype="text/plain; charset=utf-8")


@blueprint.post("/workflows/admin/new")
@login_required
def create() -> ResponseReturnValue:
    """Checks everything first (nothing is uploaded for a refused definition), uploads the
    files, creates the workflow. An XHR (Accept: application/json) gets JSON back."""
    user = me()
    form = {key: request.form.get(key, "") for key in ("name", "parallelism", "definition", "like")}
    files = [f for f in request.files.getlist("files") if f.filename]
    problems: list[tuple[str, str]] = []
    parallelism = 0
    if form["parallelism"].strip():
        try:
            parallelism = int(form["parallelism"])
        except ValueError:
            parallelism = -1
        if parallelism < 1:
            problems.append(("Parallelism", "must be a whole number of at least 1 (empty: the server's default)"))
    names = [posixpath.basename(f.filename or "").strip() for f in files]
    for n in sorted({n for n in names if names.count(n) > 1}):
        problems.append(("Files", f"{n} is chosen twice"))
    like = None
    if form["like"] and not files:  # like another workflow: its files, unless others are chosen
        like = services().dagger.GetWorkflow(pb.GetWorkflowRequest(id=form["like"]), metadata=user.metadata)
    uploads = names if files else (_uploaded(like) if like else [])
    check = services().dagger.ValidateDefinition(pb.ValidateDefinitionRequest(
        definition=form["definition"].encode(), check_uploads=True, uploads=uploads), metadata=user.metadata)
    problems += [(p.place or "Definition", p.message) for p in check.problems]
    if problems:
        return _refused(form, problems)
    upload_id = like.upload_id if like is not None else (uuid.uuid4().hex if files else "")
    try:
        for name, f in zip(names, files, strict=True):
            services().cellar_client(user.metadata).put_chunks("cache", upload_id, name, _chunks(f))
        created = services().dagger.CreateWorkflow(pb.CreateWorkflowRequest(
            definition=form["definition"].encode(), name=form["name"].strip(), parallelism=parallelism,
            upload_id=upload_id), metadata=user.metadata)
    except grpc.RpcError as e:
        if files:  # what was uploaded goes with the refusal
            _remove_upload(upload_id)
        if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise
        problems = [_problem(line) for line in (e.details() or "").splitlines()]
        return _refused(form, problems)
    location = url_for("workflows.show", workflow_id=created.id)
    if wants_json():
        return {"id": created.id, "location": location}, 201
    return redirect(location, 303)


def _chunks(f: FileStorage) -> Iterator[bytes]:
    while chunk := f.stream.read(UPLOAD_CHUNK):
        yield chunk


def _uploaded(workflow: pb.Workflow) -> list[str]:
    if not workflow.upload_id:
        return []
    listed = services().cellar.List(cpb.ListRequest(kind=cpb.KIND_CACHE, scope=workflow.upload_id),
                                    metadata=me().metadata)
    return sorted(f.ref.path for f in listed.files)


def _remove_upload(upload_id: str) -> None:
    try:
        services().cellar.Delete(cpb.DeleteRequest(kind=cpb.KIND_CACHE, scope=upload_id),
                                 metadata=services().as_gateway)
    except grpc.RpcError:
        current_app.logger.warning("cannot remove the upload %s of a refused workflow", upload_id, exc_info=True)


def _problem(line: str) -> tuple[str, str]:
    place, colon, message = line.partition(": ")
    return (place, message) if colon and " " not in place else ("", line)


def _refused(form: dict[str, str], problems: list[tuple[str, str]]) -> ResponseReturnValue:
    if wants_json():
        return {"problems": [{"place": p, "message": m} for p, m in problems]}, 400
    return render_template("new.html", form=form, like_files=[], problems=problems), 400


# ---- one workflow --------------------------------------------------------------------

@blueprint.get("/workflows/<workflow_id>")
@login_required
def show(workflow_id: str) -> ResponseReturnValue:
    user = me()
    workflow = services().dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id, include_jobs=True),
                                             metadata=user.metadata)
    first = max(request.args.get("jobs_from", 0, type=int), 0)
    return render_template("workflow.html", workflow=workflow, owner=_owner_login(user, workflow.owner),
                           graph=graph(workflow), jobs=workflow.jobs[first:first + JOB_ROWS], jobs_from=first,
                           job_rows=JOB_ROWS, finished=formats.workflow_status(workflow.status) in
                           ("done", "failed", "terminated", "dead"))


def _owner_login(user: SignedIn, owner: str) -> str:
    try:
        return services().users.GetUser(upb.GetUserRequest(id=owner), metadata=user.metadata).login
    except grpc.RpcError:
        return owner


def graph(workflow: pb.Workflow) -> dict[str, Any]:
    """The DAG as the page's script draws it: boxes laid out here, in O(V+E), once per
    workflow (its jobs never change), with the jobs' current states."""
    with _drawn_lock:
        drawn = _drawn.get(workflow.id)
    if drawn is None:
        index = {job.name: i for i, job in enumerate(workflow.jobs)}
        edges = [(parent, job.name) for job in workflow.jobs for parent in job.depends_on]
        spacing = Spacing()
        placed = layout(list(index), edges, spacing)
        drawn = {"width": placed.width, "height": placed.height, "box": [spacing.node_width, spacing.node_height],
                 "places": [(placed.nodes[name].x, placed.nodes[name].y) for name in index],
                 "edges": [[index[parent], index[child]] for parent, child in edges]}
        with _drawn_lock:
            _drawn[workflow.id] = drawn
            while len(_drawn) > DRAWINGS_KEPT:
                _drawn.popitem(last=False)
    return {**{key: drawn[key] for key in ("width", "height", "box", "edges")},
            "nodes": [[job.name, formats.job_status(job.status), x, y]
                      for job, (x, y) in zip(workflow.jobs, drawn["places"], strict=True)]}


_drawn: OrderedDict[str, dict[str, Any]] = OrderedDict()
_drawn_lock = threading.Lock()


@blueprint.get("/workflows/<workflow_id>/events")
@login_required
def events(workflow_id: str) -> ResponseReturnValue:
    """Server-sent events: `workflow` (its status, counts and times) and `jobs` (the jobs
    that changed, by name), first everything, then what changes; `end` once it has ended."""
    services().dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id), metadata=me().metadata)  # or a 404
    call = services().dagger.WatchWorkflow(
        pb.WatchWorkflowRequest(id=workflow_id, include_jobs=True, changed_jobs_only=True), metadata=me().metadata)
    return sse.events_response(call, _Changes().of)


class _Changes:
    """What changed since the previous message of a watch (the first: everything)."""

    def __init__(self) -> None:
        self.workflow: dict[str, Any] = {}
        self.jobs: dict[str, dict[str, Any]] = {}

    def of(self, w: pb.Workflow) -> Iterator[sse.Event]:
        workflow = workflow_json(w)
        if workflow != self.workflow:
            self.workflow = workflow
            yield "workflow", workflow
        changed = {}
        for job in w.jobs:
            now = job_json(job)
            if self.jobs.get(job.name) != now:
                self.jobs[job.name] = changed[job.name] = now
        if changed:
            yield "jobs", changed


def workflow_json(w: pb.Workflow) -> dict[str, Any]:
    return {"status": formats.workflow_status(w.status), "message": w.message, "job_counts": dict(w.job_counts),
            "job_total": w.job_total, "started_at": formats.iso(w.started_at),
            "finished_at": formats.iso(w.finished_at), "duration": formats.duration(w.started_at, w.finished_at)}


def job_json(job: pb.Job) -> dict[str, Any]:
    return {"status": formats.job_status(job.status), "attempt": job.attempt,
            "exit_code": job.exit_code if job.HasField("exit_code") else None, "message": job.message,
            "started_at": formats.iso(job.started_at), "duration": formats.duration(job.started_at, job.finished_at)}


@blueprint.post("/workflows/<workflow_id>/cancel")
@login_required
def cancel(workflow_id: str) -> ResponseReturnValue:
    services().dagger.CancelWorkflow(pb.CancelWorkflowRequest(id=workflow_id), metadata=me().metadata)
    flash("Cancelled: running jobs are being stopped.")
    return redirect(url_for("workflows.show", workflow_id=workflow_id), 303)


@blueprint.post("/workflows/<workflow_id>/retry")
@login_required
def retry(workflow_id: str) -> ResponseReturnValue:
    services().dagger.RetryWorkflow(pb.RetryWorkflowRequest(id=workflow_id), metadata=me().metadata)
    flash("Retrying its failed, skipped and dead jobs.")
    return redirect(url_for("workflows.show", workflow_id=workflow_id), 303)


@blueprint.post("/workflows/<workflow_id>/delete")
@login_required
def delete(workflow_id: str) -> ResponseReturnValue:
    services().dagger.DeleteWorkflow(pb.DeleteWorkflowRequest(id=workflow_id), metadata=me().metadata)
    flash(f"Deleted workflow {workflow_id}.")
    return redirect(url_for("workflows.listing"), 303)
