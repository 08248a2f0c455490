"""Workflows made from other workflows: clone (alias resubmit)."""

from __future__ import annotations

import json

import click

from dagger_svc.core.limits import MAX_PARALLELISM
from donut.dagger.v1 import dagger_pb2 as pb
from donut_cli.cli import WORKFLOW_ID, Settings, cli, pass_settings, rpc_errors
from donut_cli.workflows import wait_for, workflow_json


@cli.command()
@click.argument("workflow_id", type=WORKFLOW_ID)
@click.option("--name", default="", help="A friendly name (default: the original's).")
@click.option("--parallelism", type=click.IntRange(0, MAX_PARALLELISM), default=0,
              help="Jobs at once (0: the original's).")
@click.option("--wait", is_flag=True, help="Follow the new workflow to its end; exit 0 only when it is done.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with --wait: the final state).")
@pass_settings
@rpc_errors
def clone(settings: Settings, workflow_id: str, name: str, parallelism: int, wait: bool, as_json: bool) -> None:
    """Submit a workflow again: its definition, parallelism, fail-fast, uploads and labels, as a new workflow."""
    client = settings.client
    w = client.dagger.CloneWorkflow(pb.CloneWorkflowRequest(id=workflow_id, name=name, parallelism=parallelism),
                                    metadata=client.metadata)
    if wait:
        click.echo(w.id, err=as_json)
        wait_for(settings, w.id, as_json)
    click.echo(json.dumps(workflow_json(w), indent=2) if as_json else w.id)


cli.add_command(clone, name="resubmit")
