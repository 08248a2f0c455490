"""`donut logs`: the output of a job, or of every job of a workflow, followed live.

A follower rides out a lost connection: each job's log is taken up again at the attempt and
line it had reached. A whole workflow is followed by watching it for jobs that start and
following each in a thread of its own; their lines meet in one queue the main thread prints.
"""

from __future__ import annotations

import functools
import os
import queue
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import click

from donut.dagger.v1 import dagger_pb2 as pb
from donut_cli.cli import (
    DURATION,
    EXIT_BAD_INPUT,
    INT32_MAX,
    WORKFLOW_ID,
    Client,
    Settings,
    cli,
    fail,
    job_status_name,
    pass_settings,
    rpc_errors,
)

_COLOURS = ("cyan", "green", "yellow", "magenta", "blue", "red",
            "bright_cyan", "bright_green", "bright_yellow", "bright_magenta", "bright_blue", "bright_red")
_NEVER_RAN = frozenset({pb.JOB_STATUS_SKIPPED, pb.JOB_STATUS_TERMINATED, pb.JOB_STATUS_DEAD,
                        pb.JOB_STATUS_FAILED, pb.JOB_STATUS_SUCCEEDED})  # finished, when no attempt started


@dataclass(frozen=True)
class _Line:
    job: str
    stream: int
    text: bytes
    time: int = 0  # when the server received it, unix ms; 0: unknown (a note of the CLI's own, an old log)


Emit = Callable[[list[_Line]], None]


class _Printer:
    """Writes lines as the options ask: stdout lines to stdout, the rest to stderr; with
    the job's name in front (coloured on a terminal, the same colour for a job every time)."""

    def __init__(self, prefixed: bool, timestamps: bool, since_ms: int) -> None:
        self.prefixed, self.timestamps, self.since_ms = prefixed, timestamps, since_ms
        colour = "NO_COLOR" not in os.environ
        self.out = (sys.stdout.buffer, colour and sys.stdout.isatty())
        self.err = (sys.stderr.buffer, colour and sys.stderr.isatty())

    def __call__(self, lines: list[_Line]) -> None:
        for line in lines:
            if not (line.time and line.time < self.since_ms):
                self._write(line)
        self.out[0].flush()
        self.err[0].flush()

    def _write(self, line: _Line) -> None:
        file, coloured = self.out if line.stream == pb.LOG_STREAM_STDOUT else self.err
        head = ""
        if self.prefixed:
            name = f"{line.job}:"
            head = (click.style(name, fg=_COLOURS[zlib.crc32(line.job.encode()) % len(_COLOURS)]) if coloured
                    else name) + " "
        if self.timestamps and line.time:
            at = datetime.fromtimestamp(line.time / 1000, UTC)
            head += at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{line.time % 1000:03d}Z "
        if line.stream == pb.LOG_STREAM_SYSTEM:
            head += "[donut] "
        file.write(head.encode() + line.text + b"\n")


class _Connection:
    """Says once that the connection was lost, however many followers notice it."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._away = False
        self._lock = threading.Lock()

    def lost(self) -> None:
        with self._lock:
            if self.client.moved():
                return
            if not self._away:
                click.echo(f"[donut] lost the connection to {self.client.endpoint}; following again once it is "
                           "back", err=True)
            self._away = True
        time.sleep(1)

    def back(self) -> None:
        self._away = False


def _unavailable(error: Exception) -> bool:
    import grpc

    return isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAVAILABLE


def _job_log(client: Client, connection: _Connection, workflow_id: str, job: str, attempt: int, follow: bool,
             tail: int | None, emit: Emit) -> None:
    """Emits a job's lines: the last `tail` of the attempt asked for (all without tail), then,
    following, every later line of it and of the attempts after it until the job ends."""
    import grpc

    shown, offset = attempt, 0  # where to take up again
    connected = follow  # a follower rides out a lost connection once it has reached the job

    def chunks(live: bool) -> Iterator[pb.LogLines]:
        nonlocal shown, offset, connected
        while True:
            request = pb.TailLogsRequest(workflow_id=workflow_id, job=job, attempt=shown, offset=offset, follow=live,
                                         tail=0 if live or tail is None else tail)
            try:
                for chunk in client.dagger.TailLogs(request, metadata=client.metadata):
                    connected = True
                    connection.back()
                    if shown and chunk.attempt != shown:
                        emit([_Line(job, pb.LOG_STREAM_SYSTEM, b"attempt %d" % chunk.attempt)])
                    shown, offset = chunk.attempt, chunk.offset + len(chunk.lines)
                    yield chunk
                return
            except grpc.RpcError as e:
                if not (live and connected and _unavailable(e)):
                    raise
                connection.lost()

    def lines(chunk: pb.LogLines) -> list[_Line]:
        return [_Line(job, line.stream, line.text, line.time) for line in chunk.lines]

    if tail is not None:
        last = deque((line for chunk in chunks(live=False) for line in lines(chunk)), maxlen=tail)
        emit(list(last))
        if not follow:
            return
    for chunk in chunks(live=follow):
        emit(lines(chunk))


def _started(job: pb.Job) -> int:
    first = min(job.attempts, key=lambda a: a.number).started_at if job.attempts else job.started_at
    return int(first.ToMilliseconds())


def _workflow_logs(client: Client, workflow_id: str, tail: int | None, emit: Emit) -> None:
    """Every started job's current attempt, job by job in the order they started."""
    jobs = client.dagger.ListJobs(pb.ListJobsRequest(workflow_id=workflow_id), metadata=client.metadata).jobs
    connection = _Connection(client)
    for job in sorted((j for j in jobs if j.attempt), key=_started):
        _job_log(client, connection, workflow_id, job.name, 0, False, tail, emit)


def _follow_workflow(client: Client, workflow_id: str, tail: int | None, printer: _Printer) -> None:
    """Every job's lines as they arrive, from each job as it starts, until the workflow and
    all its jobs have ended."""
    arrived: queue.Queue[list[_Line] | Exception | None] = queue.Queue()
    connection = _Connection(client)

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except Exception as e:  # noqa: BLE001 (handed to the main thread, which reports it)
                arrived.put(e)
        return run

    def watch() -> None:
        followers: dict[str, threading.Thread] = {}
        connected = False
        while True:
            request = pb.WatchWorkflowRequest(id=workflow_id, include_jobs=True)
            try:
                for workflow in client.dagger.WatchWorkflow(request, metadata=client.metadata):
                    connected = True
                    connection.back()
                    for job in sorted((j for j in workflow.jobs if j.attempt and j.name not in followers),
                                      key=_started):
                        follower = followers[job.name] = threading.Thread(target=guarded(functools.partial(
                            _job_log, client, connection, workflow_id, job.name, 0, True, tail, arrived.put)),
                            daemon=True)
                        follower.start()
                break
            except Exception as e:
                if not (connected and _unavailable(e)):
                    raise
                connection.lost()
        for follower in followers.values():
            follower.join()
        arrived.put(None)

    threading.Thread(target=guarded(watch), daemon=True).start()
    while True:
        try:
            item = arrived.get(timeout=0.5)  # a timeout lets Ctrl-C through
        except queue.Empty:
            continue
        if item is None:
            return
        if isinstance(item, Exception):
            raise item
        printer(item)



@cli.command()
@click.argument("workflow_id", type=WORKFLOW_ID)
@click.argument("job", required=False)
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing new lines until the job (without JOB: the workflow) ends.")
@click.option("--attempt", type=click.IntRange(0, INT32_MAX), default=0,
              help="Which attempt of JOB (default: the current one).")
@click.option("--tail", type=click.IntRange(0), default=None, metavar="N",
              help="Only the last N lines of each job's attempt, then (with -f) the new ones.")
@click.option("--since", type=DURATION, help="Only lines received in the last DURATION (90, 45s, 30m, 12h, 2d).")
@click.option("--timestamps", is_flag=True, help="Begin each line with the time the server received it (UTC).")
@pass_settings
@rpc_errors
def logs(settings: Settings, workflow_id: str, job: str | None, follow: bool, attempt: int, tail: int | None,
         since: timedelta | None, timestamps: bool) -> None:
    """Print a job's output: stdout lines to stdout, stderr lines and donut's notes to stderr.

    Without JOB, every job's lines, each behind its job's name: job by job in the order they
    started, or with -f as they arrive, from each job as it starts, until the workflow ends.
    """
    since_ms = round((time.time() - min(since.total_seconds(), 1 << 40)) * 1000) if since is not None else 0
    tail = None if tail is None else min(tail, sys.maxsize)
    if attempt and job is None:
        fail("--attempt: needs a JOB", EXIT_BAD_INPUT)
    client = settings.client
    printer = _Printer(prefixed=job is None, timestamps=timestamps, since_ms=since_ms)
    if job is None:
        if follow:
            _follow_workflow(client, workflow_id, tail, printer)
        else:
            _workflow_logs(client, workflow_id, tail, printer)
        return
    record = client.dagger.GetJob(pb.GetJobRequest(workflow_id=workflow_id, name=job), metadata=client.metadata)
    if not attempt and not record.attempt:
        if record.status in _NEVER_RAN:
            click.echo(f"job '{job}' was {job_status_name(record.status)}: it never ran", err=True)
            return
        if not follow:
            click.echo(f"job '{job}' is {job_status_name(record.status)}: no output yet", err=True)
            return
    _job_log(client, _Connection(client), workflow_id, job, attempt, follow, tail, printer)
