"""`donut logs`: a job's output, followed live."""

from __future__ import annotations

import sys
import time

import click

from donut.dagger.v1 import dagger_pb2 as pb
from donut_cli.cli import (
    INT32_MAX,
    WORKFLOW_ID,
    Settings,
    cli,
    pass_settings,
    rpc_errors,
)


@cli.command()
@click.argument("workflow_id", type=WORKFLOW_ID)
@click.argument("job")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the job ends.")
@click.option("--attempt", type=click.IntRange(0, INT32_MAX), default=0,
              help="Which attempt (default: the current one).")
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
