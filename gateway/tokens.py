"""The API tokens page: a user's tokens (web sessions among them), a form that makes a new
one (its secret shown on the answer to that form, and never again) and buttons that
revoke them; revoking the session's own token signs the user out."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from donut.users.v1 import users_pb2 as upb
from gateway.auth import login_required
from gateway.services import services
from gateway.workflows import me

MAX_EXPIRY_DAYS = 3650
blueprint = Blueprint("tokens", __name__)


def _page(problems: list[tuple[str, str]] | None = None, made: upb.CreateTokenResponse | None = None,
          form: dict[str, str] | None = None, status: int = 200) -> ResponseReturnValue:
    user = me()
    listed = services().users.ListTokens(upb.ListTokensRequest(), metadata=user.metadata).tokens
    tokens = sorted(listed, key=lambda t: (t.revoked, -t.created_at.seconds))
    page = render_template("tokens.html", tokens=tokens, made=made, problems=problems or [],
                           form=form or {"name": "", "expires_in_days": ""}, current=user.token_id)
    return page, status, {"Cache-Control": "no-store"}


@blueprint.get("/tokens")
@login_required
def listing() -> ResponseReturnValue:
    return _page()


@blueprint.post("/tokens")
@login_required
def create() -> ResponseReturnValue:
    """Name (required) and expiry in days (empty: never)."""
    form = {"name": request.form.get("name", "").strip(), "expires_in_days": request.form.get("expires_in_days", "")}
    problems = []
    if not form["name"]:
        problems.append(("Name", "must not be empty"))
    days = 0
    if form["expires_in_days"].strip():
        try:
            days = int(form["expires_in_days"])
        except ValueError:
            days = -1
        if not 1 <= days <= MAX_EXPIRY_DAYS:
            problems.append(("Expires in days", f"must be a whole number from 1 to {MAX_EXPIRY_DAYS} "
                                                "(empty: never)"))
    if problems:
        return _page(problems, form=form, status=400)
    made = services().users.CreateToken(upb.CreateTokenRequest(name=form["name"], expires_in_seconds=days * 86400),
                                        metadata=me().metadata)
    return _page(made=made, status=201)


@blueprint.post("/tokens/<token_id>/revoke")
@login_required
def revoke(token_id: str) -> ResponseReturnValue:
    user = me()
    revoked = services().users.RevokeToken(upb.RevokeTokenRequest(id=token_id), metadata=user.metadata)
    if token_id == user.token_id:
        session.clear()
        flash("You revoked the token of this session, and are signed out.")
        return redirect(url_for("auth.login"), 303)
    flash(f"Revoked the token {revoked.name}.")
    return redirect(url_for("tokens.listing"), 303)
