"""The `donut` commands about who acts: whoami, tokens, users."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import click

from donut.users.v1 import users_pb2
from donut_cli.cli import DURATION, EXIT_BAD_INPUT, Settings, cli, fail, iso_time, pass_settings, rpc_errors
from donut_cli.output import emit, output_option


def _lifetime(expires: timedelta) -> int:
    """Seconds of a token's lifetime, within what a token may live."""
    from donut_common.auth import MAX_TOKEN_LIFETIME

    seconds = int(expires.total_seconds())
    if not 0 < seconds <= MAX_TOKEN_LIFETIME:
        fail("--expires: must be more than 0 and at most 100 years (leave it out for never)", EXIT_BAD_INPUT)
    return seconds


def _state(t: users_pb2.Token, now: float) -> str:
    from streamed_job.timestamps import seconds

    if t.revoked:
        return "revoked"
    expires = seconds(t.expires_at)
    return "expired" if expires is not None and expires <= now else "active"


def _token_json(t: users_pb2.Token, now: float) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "scopes": list(t.scopes), "created_at": iso_time(t.created_at),
            "expires_at": iso_time(t.expires_at), "last_used_at": iso_time(t.last_used_at), "revoked": t.revoked,
            "state": _state(t, now)}


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_settings
@rpc_errors
def whoami(settings: Settings, as_json: bool) -> None:
    """Show the user (and token) the CLI acts as."""
    from donut.users.v1 import users_pb2

    client = settings.client
    me = client.users.WhoAmI(users_pb2.WhoAmIRequest(), metadata=client.metadata)
    if as_json:
        click.echo(json.dumps({"login": me.user.login, "id": me.user.id, "admin": me.user.admin,
                               "token": _token_json(me.token, time.time())}, indent=2))
    else:
        click.echo(f"{me.user.login}{' (admin)' if me.user.admin else ''}, token {me.token.id} "
                   f"({', '.join(me.token.scopes)})")


@cli.group()
def token() -> None:
    """Create, list and revoke API tokens."""


@token.command(name="create")
@click.option("--name", default="", help="What the token is for.")
@click.option("--expires", type=DURATION, help="Lifetime: 3600, 45m, 12h, 30d (default: never).")
@click.option("--user", "user_login", default="", help="For another user (admins only).")
@click.option("--admin", "admin_scope", is_flag=True, help="With admin rights (for admins).")
@click.option("--json", "as_json", is_flag=True, help='Print {"id","token"}.')
@pass_settings
@rpc_errors
def token_create(settings: Settings, name: str, expires: timedelta | None, user_login: str, admin_scope: bool,
                 as_json: bool) -> None:
    """Create a token; its secret is shown once."""
    from donut.users.v1 import users_pb2

    client = settings.client
    request = users_pb2.CreateTokenRequest(name=name, user_login=user_login,
                                           scopes=["user", "admin"] if admin_scope else ["user"],
                                           expires_in_seconds=_lifetime(expires) if expires is not None else 0)
    created = client.users.CreateToken(request, metadata=client.metadata)
    if as_json:
        click.echo(json.dumps({"id": created.token.id, "token": created.secret}))
    else:
        click.echo(created.secret)
        click.echo(f"token {created.token.id} created; the secret above is shown only now", err=True)


@token.command(name="list")
@click.option("--user", "user_login", default="", help="Another user's tokens (admins only).")
@output_option
@pass_settings
@rpc_errors
def token_list(settings: Settings, user_login: str, output: str) -> None:
    """List tokens (never their secrets)."""
    from donut.users.v1 import users_pb2

    client = settings.client
    tokens = client.users.ListTokens(users_pb2.ListTokensRequest(user_login=user_login),
                                     metadata=client.metadata).tokens
    now = time.time()
    emit([_token_json(t, now) for t in tokens], output, _token_table)


def _token_table(docs: list[dict[str, Any]], wide: bool) -> None:
    click.echo(f"{'ID':<16}  {'NAME':<20}  {'SCOPES':<12}  {'EXPIRES':<29}  STATE")
    for d in docs:
        click.echo(f"{d['id']:<16}  {d['name'][:20]:<20}  {','.join(d['scopes']):<12}  "
                   f"{d['expires_at'] or 'never':<29}  {d['state']}")


@token.command(name="revoke")
@click.argument("token_id")
@pass_settings
@rpc_errors
def token_revoke(settings: Settings, token_id: str) -> None:
    """Revoke a token (it stops working within seconds)."""
    from donut.users.v1 import users_pb2

    client = settings.client
    client.users.RevokeToken(users_pb2.RevokeTokenRequest(id=token_id), metadata=client.metadata)
    click.echo(f"revoked {token_id}", err=True)


@cli.group()
def user() -> None:
    """Manage users (admins)."""


@user.command(name="create")
@click.argument("login")
@click.option("--admin", is_flag=True, help="Make the user an admin.")
@click.option("--name", "display_name", default="", help="Display name.")
@pass_settings
@rpc_errors
def user_create(settings: Settings, login: str, admin: bool, display_name: str) -> None:
    """Create a user without GitHub (service accounts, tests)."""
    from donut.users.v1 import users_pb2

    client = settings.client
    created = client.users.CreateUser(users_pb2.CreateUserRequest(login=login, admin=admin,
                                                                  display_name=display_name),
                                      metadata=client.metadata)
    click.echo(created.id)


@user.command(name="list")
@output_option
@pass_settings
@rpc_errors
def user_list(settings: Settings, output: str) -> None:
    """List the users (admins only)."""
    from donut.users.v1 import users_pb2

    client = settings.client
    users = client.users.ListUsers(users_pb2.ListUsersRequest(), metadata=client.metadata).users
    docs = [{"id": u.id, "login": u.login, "display_name": u.display_name, "admin": u.admin,
             "github_id": u.github_id or None, "created_at": iso_time(u.created_at)} for u in users]
    emit(docs, output, _user_table, name=lambda d: d["login"])


def _user_table(docs: list[dict[str, Any]], wide: bool) -> None:
    click.echo(f"{'LOGIN':<24}  {'ADMIN':<5}  {'CREATED':<29}  NAME" + ("  ID" if wide else ""))
    for d in docs:
        click.echo(f"{d['login']:<24}  {'yes' if d['admin'] else 'no':<5}  {d['created_at'] or '':<29}  "
                   f"{d['display_name']}" + (f"  {d['id']}" if wide else ""))
