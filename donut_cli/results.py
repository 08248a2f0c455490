"""`donut results`: a workflow's saved outputs, listed, downloaded or linked to."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from donut.dagger.v1 import dagger_pb2 as pb
from donut_cli.cli import (
    DURATION,
    EXIT_BAD_INPUT,
    WORKFLOW_ID,
    Settings,
    cli,
    fail,
    iso_time,
    pass_settings,
    rpc_errors,
)
from donut_cli.output import TABLE, emit, output_option


def _table(docs: list[dict[str, Any]], wide: bool) -> None:
    for d in docs:
        click.echo(f"{d['job']}/{d['path']}  {d['size']} bytes  sha256:{d['sha256'] if wide else d['sha256'][:16]}")


def _links(docs: list[dict[str, Any]], wide: bool) -> None:
    for d in docs:
        click.echo(f"{d['job']}/{d['path']}  {d['url']}")


def _ttl_seconds(ttl: timedelta | None) -> int:
    """Seconds a link lives (0: the server's default), within what the server allows."""
    if ttl is None:
        return 0
    from cellar_svc.servicer import MAX_LINK_SECONDS

    seconds = int(ttl.total_seconds())
    if not 0 < seconds <= MAX_LINK_SECONDS:
        fail("--ttl: must be more than 0 and at most 7 days", EXIT_BAD_INPUT)
    return seconds


@cli.command()
@click.argument("workflow_id", type=WORKFLOW_ID)
@click.option("--download", type=click.Path(path_type=Path), help="Copy every result into DIR/<job>/<path>.")
@click.option("--overwrite", is_flag=True, help="With --download: replace files that are there already.")
@click.option("--url", "links", is_flag=True, help="Print a download link per result, which anyone holding it may "
              "use until it expires.")
@click.option("--ttl", type=DURATION, help="With --url: how long the links work: 3600, 45m, 12h, 7d (default: 1h).")
@output_option
@pass_settings
@rpc_errors
def results(settings: Settings, workflow_id: str, download: Path | None, overwrite: bool, links: bool,
            ttl: timedelta | None, output: str) -> None:
    """List (or download, or link to) the saved outputs of a workflow."""
    if download is not None and download.exists() and not download.is_dir():
        fail(f"--download: not a directory: {download}", EXIT_BAD_INPUT)
    if ttl is not None and not links:
        fail("--ttl goes with --url", EXIT_BAD_INPUT)
    ttl_seconds = _ttl_seconds(ttl)
    client = settings.client
    client.dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id), metadata=client.metadata)  # NOT_FOUND early
    files = client.cellar.list("result", workflow_id)
    docs: list[dict[str, Any]] = [{"job": f.ref.job, "path": f.ref.path, "size": f.size, "sha256": f.sha256}
                                  for f in files]
    if links:
        for doc in docs:
            link = client.cellar.download_url("result", workflow_id, doc["path"], job=doc["job"],
                                              ttl_seconds=ttl_seconds)
            doc.update(url=link.url, expires_at=iso_time(link.expires_at))
    if not files and output in (TABLE, "wide"):
        click.echo("no results saved (yet)", err=True)
    else:
        emit(docs, output, _links if links else _table, name=lambda d: f"{d['job']}/{d['path']}")
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
