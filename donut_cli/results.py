"""`donut results`: a workflow's saved outputs, listed or downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import click

from donut.dagger.v1 import dagger_pb2 as pb
from donut_cli.cli import (
    EXIT_BAD_INPUT,
    WORKFLOW_ID,
    Settings,
    cli,
    fail,
    pass_settings,
    rpc_errors,
)


@cli.command()
@click.argument("workflow_id", type=WORKFLOW_ID)
@click.option("--download", type=click.Path(path_type=Path), help="Copy every result into DIR/<job>/<path>.")
@click.option("--overwrite", is_flag=True, help="With --download: replace files that are there already.")
@click.option("--json", "as_json", is_flag=True)
@pass_settings
@rpc_errors
def results(settings: Settings, workflow_id: str, download: Path | None, overwrite: bool, as_json: bool) -> None:
    """List (or download) the saved outputs of a workflow."""
    if download is not None and download.exists() and not download.is_dir():
        fail(f"--download: not a directory: {download}", EXIT_BAD_INPUT)
    client = settings.client
    client.dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id), metadata=client.metadata)  # NOT_FOUND early
    files = client.cellar.list("result", workflow_id)
    if as_json:
        click.echo(json.dumps([{"job": f.ref.job, "path": f.ref.path, "size": f.size, "sha256": f.sha256}
                               for f in files], indent=2))
    elif not files:
        click.echo("no results saved (yet)", err=True)
    else:
        for f in files:
            click.echo(f"{f.ref.job}/{f.ref.path}  {f.size} bytes  sha256:{f.sha256[:16]}")
    if download is None:
        return
    if not files:
        click.echo(f"nothing to download: {download} left as it was", err=True)
        return
    root = download.resolve()
    targets = [(f, (root / f.ref.job / f.ref.path).resolve()) for f in files]
    for f, target in targets:
        if root not in target.parents:  # every name the server sends is checked again here
            fail(f"the server named a result outside {download}: {f.ref.job}/{f.ref.path}")
    if not overwrite:
        for f, target in targets:
            if target.exists() or target.is_symlink():
                fail(f"--download: {download / f.ref.job / f.ref.path} exists already (--overwrite replaces it)")
    for f, target in targets:
        client.cellar.get("result", workflow_id, f.ref.path, target, job=f.ref.job)
    click.echo(f"downloaded {len(files)} file(s) to {download}", err=True)
