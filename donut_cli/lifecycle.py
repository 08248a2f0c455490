"""Workflows made from other workflows: clone (alias resubmit)."""

from __future__ import annotations

import click

from dagger_svc.core.limits import MAX_PARALLELISM
from donut.dagger.v1 import dagger_pb2 as pb
from donut_cli.cli import WORKFLOW_ID, Settings, cli, pass_settings, rpc_errors
from donut_cli.output import TABLE, emit, output_option
from donut_cli.workflows import wait_for, workflow_json


@cli.command()
@click.argument("workflow_id", type=WORKFLOW_ID)
@click.option("--name", default="", help="A friendly name (default: the original's).")
@click.option("--parallelism", type=click.IntRange(0, MAX_PARALLELISM), default=0,
              help="Jobs at once (0: the original's).")
@click.option("--wait", is_flag=True, help="Follow the new workflow to its end; exit 0 only when it is done.")
@output_option
@pass_settings
@rpc_errors
def clone(settings: Settings, workflow_id: str, name: str, parallelism: int, wait: bool, output: str) -> None:
    """Submit a workflow again: its definition, parallelism, fail-fast, uploads and labels, as a new workflow."""
    client = settings.client
    w = client.dagger.CloneWorkflow(pb.CloneWorkflowRequest(id=workflow_id, name=name, parallelism=parallelism),
                                    metadata=client.metadata)
    if wait:
        click.echo(w.id, err=output != TABLE)
        wait_for(settings, w.id, output)
    emit(workflow_json(w), output, lambda doc, wide: click.echo(doc["id"]))


cli.add_command(clone, name="resubmit")
