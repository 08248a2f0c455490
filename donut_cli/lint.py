"""`donut lint`: definitions checked before anyone submits them, offline by default.

The parser is the server's own (dagger_svc.core, which is pure), so what passes here
passes there; --server asks the server as well, for what only it knows.
"""

from __future__ import annotations

import sys

import click

from donut_cli.cli import EXIT_BAD_INPUT, Settings, cli, pass_settings, rpc_errors


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
@pass_settings
@rpc_errors
def lint(settings: Settings, files: tuple[str, ...], on_server: bool) -> None:
    """Check workflow definitions without submitting them (`-`: standard input)."""
    from donut.dagger.v1 import dagger_pb2 as pb

    bad = False
    for file in files:
        text = _read(file)
        name = "<stdin>" if file == "-" else file
        problems = [text] if isinstance(text, str) else _offline_problems(text)
        if not problems and on_server and isinstance(text, bytes):
            client = settings.client
            check = client.dagger.ValidateDefinition(pb.ValidateDefinitionRequest(definition=text),
                                                     metadata=client.metadata)
            problems = [f"{p.place}: {p.message}" if p.place else p.message for p in check.problems]
        for problem in problems:
            click.echo(f"error: {name}: " + problem.replace("\n", "\n  "), err=True)
        if problems:
            bad = True
        else:
            click.echo(f"{name}: ok")
    if bad:
        sys.exit(EXIT_BAD_INPUT)
