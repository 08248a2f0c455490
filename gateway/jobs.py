"""A job's page with its live log, and a workflow's results. A log may hold a million
lines: the page starts with its tail, fetches earlier lines when asked, and follows new
ones through server-sent events; the whole log downloads as text."""

from __future__ import annotations

import itertools
import posixpath
import urllib.parse
from collections.abc import Iterator

import grpc
from flask import Blueprint, Response, abort, redirect, render_template, request
from flask.typing import ResponseReturnValue

from donut.cellar.v1 import cellar_pb2 as cpb
from donut.dagger.v1 import dagger_pb2 as pb
from gateway import sse
from gateway.auth import login_required
from gateway.services import Metadata, services
from gateway.workflows import me

TAIL_LINES = 1000
"""Lines of a log the job page starts with (earlier ones come on demand)."""
MAX_LIMIT = 10_000
"""The most lines one request for lines answers with."""
STREAMS = {pb.LOG_STREAM_STDOUT: "stdout", pb.LOG_STREAM_STDERR: "stderr", pb.LOG_STREAM_SYSTEM: "system"}
TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".yaml", ".yml", ".log", ".md", ".xml", ".html", ".py", ".sh")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg")

blueprint = Blueprint("jobs", __name__)
Line = list[str]
"""[stream, text] of a log line, as the page's script gets it."""


@blueprint.app_template_global("quote")
def _quote(part: str) -> str:
    """A part of a path as it goes in a URL (a job's name may hold any character)."""
    return urllib.parse.quote(part, safe="")


def _number(name: str, default: int, least: int = 0) -> int:
    raw = request.args.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = least - 1
    if value < least:
        abort(400, f"{name} must be a whole number of at least {least}")
    return value


def _line(line: pb.LogLine) -> Line:
    return [STREAMS.get(line.stream, "stdout"), line.text.decode("utf-8", "replace")]


def _tail(metadata: Metadata, workflow_id: str, job: str, attempt: int, offset: int = 0,
          tail: int = 0) -> grpc.CallIterator[pb.LogLines]:
    return services().dagger.TailLogs(
        pb.TailLogsRequest(workflow_id=workflow_id, job=job, attempt=attempt, offset=offset, tail=tail),
        metadata=metadata)


def last_lines(metadata: Metadata, workflow_id: str, job: str, attempt: int, count: int) -> tuple[int, list[Line], int]:
    """(index of the first, the last `count` lines, the number of lines) of an attempt."""
    lines: list[Line] = []
    first = total = 0
    for chunk in _tail(metadata, workflow_id, job, attempt, tail=count):
        if not lines:
            first = chunk.offset
        lines += [_line(line) for line in chunk.lines]
        total = chunk.offset + len(chunk.lines)
    return (first if lines else total), lines[-count:], total


def some_lines(metadata: Metadata, workflow_id: str, job: str, attempt: int, offset: int,
               limit: int) -> tuple[list[Line], int]:
    """Up to `limit` lines from line `offset`, and the index after the last."""
    lines: list[Line] = []
    call = _tail(metadata, workflow_id, job, attempt, offset)
    try:
        for chunk in call:
            lines += [_line(line) for line in chunk.lines[:limit - len(lines)]]
            if len(lines) >= limit:
                break
    finally:
        call.cancel()
    return lines, offset + len(lines)


# ---- a job ---------------------------------------------------------------------------

@blueprint.get("/workflows/<workflow_id>/jobs/<name>")
@login_required
def show(workflow_id: str, name: str) -> ResponseReturnValue:
    """The job, and the tail of an attempt's log (`attempt`, default the current one)."""
    user = me()
    workflow = services().dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id), metadata=user.metadata)
    job = services().dagger.GetJob(pb.GetJobRequest(workflow_id=workflow_id, name=name), metadata=user.metadata)
    attempt = _number("attempt", job.attempt, least=1)
    first, total = 0, 0
    lines: list[Line] = []
    if attempt:
        first, lines, total = last_lines(user.metadata, workflow_id, name, attempt, TAIL_LINES)
    finished = job.status in (pb.JOB_STATUS_SUCCEEDED, pb.JOB_STATUS_FAILED, pb.JOB_STATUS_SKIPPED,
                              pb.JOB_STATUS_TERMINATED, pb.JOB_STATUS_DEAD)
    return render_template("job.html", workflow=workflow, job=job, attempt=attempt, first=first, lines=lines,
                           total=total, live=attempt == job.attempt and not finished,
                           base=f"/workflows/{_quote(workflow_id)}/jobs/{_quote(name)}")


@blueprint.get("/workflows/<workflow_id>/jobs/<name>/log.txt")
@login_required
def log_text(workflow_id: str, name: str) -> ResponseReturnValue:
    """An attempt's whole log as text (stderr and the wrapper's notes marked), a download."""
    user = me()
    attempt = _number("attempt", 0)
    call = _tail(user.metadata, workflow_id, name, attempt)
    chunks = iter(call)
    try:
        first = next(chunks, None)
    except grpc.RpcError:
        call.cancel()
        raise
    number = first.attempt if first is not None else attempt

    def text() -> Iterator[bytes]:
        marks = {pb.LOG_STREAM_STDERR: b"[stderr] ", pb.LOG_STREAM_SYSTEM: b"[donut] "}
        for chunk in itertools.chain([first] if first is not None else [], chunks):
            yield b"".join(marks.get(line.stream, b"") + line.text + b"\n" for line in chunk.lines)

    filename = f"{workflow_id}-{name}-{number or 'none'}.log"
    response = Response(text(), content_type="text/plain; charset=utf-8", headers={
        "Content-Disposition": f"attachment; filename*=UTF-8''{_quote(filename)}"})
    response.call_on_close(call.cancel)
    return response


@blueprint.get("/workflows/<workflow_id>/jobs/<name>/log/lines")
@login_required
def log_lines(workflow_id: str, name: str) -> ResponseReturnValue:
    """JSON {attempt, offset, lines: [[stream, text]], next}: up to `limit` lines from line
    `offset` of an attempt; with `tail=N` instead, its last N lines."""
    user = me()
    attempt = _number("attempt", 0)
    if attempt == 0:
        attempt = services().dagger.GetJob(pb.GetJobRequest(workflow_id=workflow_id, name=name),
                                           metadata=user.metadata).attempt
    if tail := _number("tail", 0):
        first, lines, total = last_lines(user.metadata, workflow_id, name, attempt, min(tail, MAX_LIMIT))
        return {"attempt": attempt, "offset": first, "lines": lines, "next": total}
    offset = _number("offset", 0)
    limit = min(_number("limit", TAIL_LINES, 1), MAX_LIMIT)
    lines, after = some_lines(user.metadata, workflow_id, name, attempt, offset, limit) if attempt else ([], offset)
    return {"attempt": attempt, "offset": offset, "lines": lines, "next": after}


@blueprint.get("/workflows/<workflow_id>/jobs/<name>/log/events")
@login_required
def log_events(workflow_id: str, name: str) -> ResponseReturnValue:
    """Server-sent events: `lines` {attempt, offset, lines: [[stream, text]]} from line
    `offset` of `attempt` (0: the current one) on, then of every later attempt, live;
    `end` once the job has ended."""
    user = me()
    attempt, offset = _number("attempt", 0), _number("offset", 0)
    # refused now (a 404 like any page's), not in an event once the stream has begun
    services().dagger.GetJob(pb.GetJobRequest(workflow_id=workflow_id, name=name), metadata=user.metadata)
    call = services().dagger.TailLogs(pb.TailLogsRequest(
        workflow_id=workflow_id, job=name, attempt=attempt, offset=offset, follow=True), metadata=user.metadata)

    def to_events(chunk: pb.LogLines) -> Iterator[sse.Event]:
        yield "lines", {"attempt": chunk.attempt, "offset": chunk.offset, "lines": [_line(x) for x in chunk.lines]}

    return sse.events_response(call, to_events)


# ---- results -------------------------------------------------------------------------

@blueprint.get("/workflows/<workflow_id>/results")
@login_required
def results(workflow_id: str) -> ResponseReturnValue:
    user = me()
    workflow = services().dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id), metadata=user.metadata)
    saved = services().cellar.List(cpb.ListRequest(kind=cpb.KIND_RESULT, scope=workflow_id), metadata=user.metadata)
    by_job: dict[str, list[cpb.FileInfo]] = {}
    for info in sorted(saved.files, key=lambda f: (f.ref.job, f.ref.path)):
        by_job.setdefault(info.ref.job, []).append(info)
    archive = None
    if workflow.HasField("archived_at"):
        archives = services().cellar.List(cpb.ListRequest(kind=cpb.KIND_ARCHIVE, scope=workflow_id),
                                          metadata=user.metadata).files
        archive = archives[0] if archives else None
    return render_template("results.html", workflow=workflow, by_job=by_job, archive=archive, view_kind=view_kind)


def view_kind(path: str) -> str:
    """How the results page shows a file: "image", "text" or "" (download only)."""
    suffix = posixpath.splitext(path)[1].lower()
    return "image" if suffix in IMAGE_SUFFIXES else "text" if suffix in TEXT_SUFFIXES else ""


@blueprint.get("/workflows/<workflow_id>/results/<job>/<path:path>")
@login_required
def result(workflow_id: str, job: str, path: str) -> ResponseReturnValue:
    """A result shown in the page (inline, sandboxed), or with `download=1` a redirect to
    a signed download link."""
    from gateway.app import stream_file

    user = me()
    ref = cpb.FileRef(kind=cpb.KIND_RESULT, scope=workflow_id, job=job, path=path)
    if request.args.get("download"):
        link = services().cellar.GetDownloadUrl(cpb.GetDownloadUrlRequest(ref=ref), metadata=user.metadata)
        return redirect(link.url, 303)
    return stream_file(ref, user.metadata, inline=True)


@blueprint.get("/workflows/<workflow_id>/archive")
@login_required
def archive(workflow_id: str) -> ResponseReturnValue:
    """A redirect to a signed download link of the workflow's archive."""
    user = me()
    found = services().cellar.List(cpb.ListRequest(kind=cpb.KIND_ARCHIVE, scope=workflow_id),
                                   metadata=user.metadata).files
    if not found:
        abort(404, "this workflow has no archive")
    link = services().cellar.GetDownloadUrl(cpb.GetDownloadUrlRequest(ref=found[0].ref), metadata=user.metadata)
    return redirect(link.url, 303)

