"""`donut version` and `donut completion`: about the CLI itself rather than the work."""

from __future__ import annotations

import click

from donut_cli.cli import Settings, cli, fail, pass_settings
from donut_common.version import donut_version


@cli.command()
@pass_settings
def version(settings: Settings) -> None:
    """Show the versions of this client and of the server it talks to."""
    import grpc

    from donut.users.v1 import users_pb2

    click.echo(f"client: {donut_version()}")
    client = settings.client
    try:
        me = client.users.WhoAmI(users_pb2.WhoAmIRequest(), metadata=client.metadata)
    except grpc.RpcError as e:
        fail(f"cannot ask the server at {settings.endpoint} its version ({e.details()})")
    click.echo(f"server: {me.server_version or 'unknown (older than the version field)'}")


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script.

    E.g. `eval "$(donut completion bash)"` in ~/.bashrc.
    """
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    assert complete is not None  # (click ships all three)
    click.echo(complete(cli, {}, "donut", "_DONUT_COMPLETE").source())
