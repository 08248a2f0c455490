"""`donut ui`: into the web GUI as the CLI's own user, with a one-time sign-in link.

Holding a token is what lets someone in: the link is made with it, works once and for a
minute only, so the GUI needs no GitHub app on a laptop and stays safe on a shared machine.
"""

from __future__ import annotations

import urllib.parse

import click

from donut_cli.cli import EXIT_BAD_INPUT, Settings, cli, fail, pass_settings, rpc_errors

SIGN_IN_PATH = "/login/code"  # the GUI's page spending a code (as users_svc builds it)


@cli.command()
@click.option("--print-url", is_flag=True, help="Print the link instead of opening it in a browser.")
@click.option("--url", default="", metavar="BASE",
              help="The web GUI's address, http(s)://host[:port][/path] (default: the one the server knows).")
@pass_settings
@rpc_errors
def ui(settings: Settings, print_url: bool, url: str) -> None:
    """Open the web GUI, signed in as yourself (a link valid 60 s, once)."""
    import webbrowser

    from donut.users.v1 import users_pb2

    base = web_url("--url", url)
    client = settings.client
    code = client.users.CreateSignInCode(users_pb2.CreateSignInCodeRequest(), metadata=client.metadata)
    if base:
        link = f"{base}{SIGN_IN_PATH}?code={urllib.parse.quote(code.code, safe='')}"
    elif code.url:
        link = code.url
    else:
        fail("the server does not know the web GUI's address: pass --url")
    if not print_url:
        try:
            opened = webbrowser.open(link)
        except webbrowser.Error:
            opened = False
        if opened:
            click.echo(f"Opened {link} (valid 60 s, once)", err=True)
            return
    click.echo(link)


def web_url(option: str, text: str) -> str:
    """`text` if it is http(s)://host[:port][/path] (without a trailing /), or "" for "";
    else a one-line exit 2 naming the option."""
    if not text:
        return ""
    problem = f"{option}: expected http(s)://host[:port][/path], not {text!r}"
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError when it is not a port number
    except ValueError:
        fail(problem, EXIT_BAD_INPUT)
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None
            or parts.query or parts.fragment or any(c in text for c in "?#") or any(c.isspace() for c in text)):
        fail(problem, EXIT_BAD_INPUT)
    return text.rstrip("/")
