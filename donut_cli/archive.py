"""`donut archive`: a finished workflow's directory, stored by the server as one .tar.gz in
cellar, then downloaded here and checked against the sha256 cellar keeps."""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from donut.dagger.v1 import dagger_pb2 as pb
from donut_cli.cli import EXIT_BAD_INPUT, WORKFLOW_ID, Settings, cli, fail, pass_settings, rpc_errors


@cli.command()
@click.argument("workflow_id", type=WORKFLOW_ID)
@click.option("-o", "--output", "destination", type=click.Path(path_type=Path), metavar="FILE",
              help="Where to write the archive [default: <workflow id>.tar.gz here].")
@click.option("--overwrite", is_flag=True, help="Replace FILE if it exists already.")
@pass_settings
@rpc_errors
def archive(settings: Settings, workflow_id: str, destination: Path | None, overwrite: bool) -> None:
    """Archive a finished workflow's directory (as one .tar.gz kept by the server) and download it."""
    target = destination if destination is not None else Path(f"{workflow_id}.tar.gz")
    if target.is_dir():
        fail(f"-o: {target} is a directory", EXIT_BAD_INPUT)
    if not overwrite and (target.exists() or target.is_symlink()):
        fail(f"-o: {target} exists already (--overwrite replaces it)")
    client = settings.client
    stored = client.dagger.ArchiveWorkflow(pb.ArchiveWorkflowRequest(id=workflow_id), metadata=client.metadata)
    digest = hashlib.sha256()
    with _progress(stored.size) as advance:
        def received(_: object, chunk: bytes) -> None:
            digest.update(chunk)
            advance(len(chunk))

        client.cellar.get("archive", workflow_id, stored.path, target, progress=received)
    if digest.hexdigest() != stored.sha256:
        target.unlink()
        fail(f"the download of {target} does not match the archive stored (sha256 {stored.sha256}); "
             "removed it: try again")
    click.echo(f"{target}  {stored.size} bytes  sha256:{stored.sha256}")


@contextlib.contextmanager
def _progress(size: int) -> Iterator[Any]:
    """A progress bar on stderr when it is a terminal; else nothing is shown."""
    if not sys.stderr.isatty():
        yield lambda _: None
        return
    with click.progressbar(length=size, label="downloading", file=sys.stderr) as bar:
        yield bar.update

