"""`donut lint`: definitions checked before anyone submits them, offline by default.

The parser is the server's own (dagger_svc.core, which is pure), so what passes here
passes there; --server asks the server as well, for what only it knows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from donut_cli.cli import EXIT_BAD_INPUT, Settings, cli, fail, pass_settings, rpc_errors


def _read(file: str) -> bytes | str:
    """The file's bytes, or why they cannot be read."""
    if file == "-":
        return sys.stdin.buffer.read()
    try:
        with open(file, "rb") as readable:
            return readable.read()
    except OSError as e:
        return f"cannot read: {e.strerror}"


def _offline_problems(text: bytes) -> list[str]:
    from dagger_svc.core.definition import parse_definition
    from donut_common.errors import InvalidArgument

    try:
        parse_definition(text)
    except InvalidArgument as e:
        return [str(p) for p in e.problems]
    return []


@cli.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--server", "on_server", is_flag=True, help="Have the server check them too (needs the stack).")
@click.option("--upload", "uploads", multiple=True, type=click.Path(path_type=Path),
              help="With --server: what `submit --upload` would upload, for the `cache:` inputs (repeatable).")
@pass_settings
@rpc_errors
def lint(settings: Settings, files: tuple[str, ...], on_server: bool, uploads: tuple[Path, ...]) -> None:
    """Check workflow definitions without submitting them (`-`: standard input)."""
    from donut.dagger.v1 import dagger_pb2 as pb
    from donut_cli.workflows import files_to_upload

    if uploads and not on_server:
        fail("--upload: goes with --server (the server checks `cache:` inputs against it)", EXIT_BAD_INPUT)
    upload_problems: list[str] = []
    names = [name for name, _ in files_to_upload(uploads, upload_problems)]
    for problem in upload_problems:
        click.echo(f"error: {problem}", err=True)
    bad = bool(upload_problems)
    for file in files:
        text = _read(file)
        name = "<stdin>" if file == "-" else file
        problems = [text] if isinstance(text, str) else _offline_problems(text)
        if not problems and on_server and isinstance(text, bytes):
            client = settings.client
            check = client.dagger.ValidateDefinition(pb.ValidateDefinitionRequest(
                definition=text, check_uploads=True, uploads=names), metadata=client.metadata)
            problems = [f"{p.place}: {p.message}" if p.place else p.message for p in check.problems]
        for problem in problems:
            click.echo(f"error: {name}: " + problem.replace("\n", "\n  "), err=True)
        if problems:
            bad = True
        else:
            click.echo(f"{name}: ok")
    if bad:
        sys.exit(EXIT_BAD_INPUT)
