"""`donut cluster`: the scheduler replicas serving this stack, and what each owns."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import click

from donut_cli.cli import Settings, cli, iso_time, pass_settings, rpc_errors
from donut_cli.output import columns, emit, output_option

if TYPE_CHECKING:
    from donut.dagger.v1 import dagger_pb2


@cli.command()
@output_option
@pass_settings
@rpc_errors
def cluster(settings: Settings, output: str) -> None:
    """List the live scheduler replicas (admins): endpoint, pid, running workflows owned,
    when each lease ends unless renewed, metrics URL."""
    from donut.dagger.v1 import dagger_pb2

    client = settings.client
    replicas = client.dagger.ListReplicas(dagger_pb2.ListReplicasRequest(), metadata=client.metadata).replicas
    docs = [_replica_json(r) for r in replicas]
    if output == "json":  # one document, as `donut cluster --json` promises
        import json

        click.echo(json.dumps({"replicas": docs}, indent=2))
        return
    emit(docs, output, _table)


def _replica_json(r: dagger_pb2.Replica) -> dict[str, Any]:
    return {"id": r.id, "endpoint": r.endpoint, "pid": r.pid, "workflows": r.workflows,
            "started_at": iso_time(r.started_at), "lease_expires_at": iso_time(r.lease_expires_at),
            "metrics_url": r.metrics_url}


def _table(docs: list[dict[str, Any]], wide: bool) -> None:
    now = time.time()
    rows = []
    for d in docs:
        lease = d["lease_expires_at"]
        left = "" if not lease else f"{max(0.0, _epoch(lease) - now):.0f}s"
        rows.append([d["id"], d["endpoint"], str(d["pid"]), str(d["workflows"]), left, d["metrics_url"] or "-"])
    for line in columns(["REPLICA", "ENDPOINT", "PID", "WORKFLOWS", "LEASE", "METRICS"], rows):
        click.echo(line)


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()
