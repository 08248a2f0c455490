"""`donut delete`: removing workflows with everything they have, one id after the other.

Each id is handled on its own: one that can't be deleted (unknown, still running) is said
so in one line and the others are still deleted; the exit code says whether any failed.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from donut.dagger.v1 import dagger_pb2 as pb
from donut_cli.cli import EXIT_FAILED, WORKFLOW_ID, Failure, Settings, cli, pass_settings, translated_errors
from donut_cli.output import emit, output_option


@cli.command()
@click.argument("workflow_ids", metavar="WORKFLOW_ID...", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Cancel a queued or running workflow first, then delete it once it "
                                            "has ended.")
@output_option
@pass_settings
def delete(settings: Settings, workflow_ids: tuple[str, ...], force: bool, output: str) -> None:
    """Delete ended workflows: their records, results, archives, logs and work directories (not
    their uploads, which clones share). Each WORKFLOW_ID is an id, a unique start of one, or @latest."""
    ctx = click.get_current_context()
    deleted: list[dict[str, Any]] = []
    code = 0
    for given in workflow_ids:
        try:
            workflow_id = WORKFLOW_ID.convert(given, None, ctx)
            _delete_one(settings, workflow_id, force)
        except Failure as e:
            e.show()
            code = max(code, e.exit_code)
            continue
        except SystemExit as e:  # (bad input: its lines are shown already)
            code = max(code, e.code if isinstance(e.code, int) else EXIT_FAILED)
            continue
        deleted.append({"id": workflow_id})
        if output in ("table", "wide"):
            click.echo(f"deleted {workflow_id}")
    if output not in ("table", "wide"):
        emit(deleted, output, lambda docs, wide: None)
    sys.exit(code)


def _delete_one(settings: Settings, workflow_id: str, force: bool) -> None:
    import grpc

    client = settings.client
    with translated_errors():
        try:
            client.dagger.DeleteWorkflow(pb.DeleteWorkflowRequest(id=workflow_id, force=force),
                                         metadata=client.metadata)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION and not force:
                raise Failure(f"workflow {workflow_id} is still queued or running: --force cancels it first, "
                              "then deletes it") from None
            raise
