"""Signing in and out. A session is a cookie holding a session token that users_svc made
for the user at sign-in (so every page calls the services as that user, and signing out
or revoking the token ends it); people sign in with GitHub (OAuth through flask-dance,
restricted to the configured users and organisations) or with a one-time link that
`donut ui` asks the services for."""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar, cast

import grpc
from flask import Blueprint, Flask, current_app, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_dance.consumer import OAuth2ConsumerBlueprint, oauth_authorized, oauth_error
from flask_dance.contrib.github import make_github_blueprint
from oauthlib.oauth2.rfc6749.errors import OAuth2Error
from werkzeug.wrappers import Response

from donut.users.v1 import users_pb2 as upb
from gateway.services import services, signed_in

SESSION_SECONDS = 7 * 24 * 3600
"""How long a session (and its token) lasts."""

blueprint = Blueprint("auth", __name__)
View = TypeVar("View", bound=Callable[..., ResponseReturnValue])


def login_required(view: View) -> View:
    """Sends whoever is not signed in to the sign-in page (API calls get a 401)."""
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> ResponseReturnValue:
        if signed_in() is None:
            return not_signed_in()
        return view(*args, **kwargs)
    return cast(View, wrapper)


def not_signed_in() -> ResponseReturnValue:
    if wants_json():
        return {"error": "not signed in"}, 401
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best == "application/json" \
        or request.accept_mimetypes.best == "text/event-stream"


@blueprint.get("/login")
def login() -> ResponseReturnValue:
    if (next_page := local_path(request.args.get("next", ""))) is not None:
        session["next"] = next_page
    return render_template("login.html", github="github" in current_app.blueprints)


@blueprint.get("/login/code")
def login_with_code() -> ResponseReturnValue:
    """Where `donut ui`'s one-time links lead."""
    try:
        user = services().users.RedeemSignInCode(upb.RedeemSignInCodeRequest(code=request.args.get("code", "")),
                                                 metadata=services().as_gateway)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        flash("This sign-in link is unknown, used or expired: run `donut ui` for a new one.")
        return render_template("login.html", github="github" in current_app.blueprints), 403
    return start_session(user)


@blueprint.route("/logout", methods=["GET", "POST"])
def logout() -> ResponseReturnValue:
    """GET asks (a link must not sign anybody out), POST signs out."""
    if request.method == "GET":
        return render_template("logout.html")
    me = signed_in()
    if me is not None:
        try:
            services().users.RevokeToken(upb.RevokeTokenRequest(id=me.token_id), metadata=me.metadata)
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
                raise
    session.clear()
    flash("Signed out.")
    return redirect(url_for("auth.login"))


def start_session(user: upb.User) -> Response:
    """Opens a session for the user: a fresh token, a fresh cookie (nothing of the session
    before it survives), and on to the page they came for."""
    made = services().users.CreateToken(
        upb.CreateTokenRequest(user_id=user.id, name="web session", scopes=["user", "admin"] if user.admin else
                               ["user"], expires_in_seconds=SESSION_SECONDS),
        metadata=services().as_gateway)
    next_page = session.get("next") or url_for("workflows.listing")
    session.clear()
    session.permanent = True
    session.update(token=made.secret, token_id=made.token.id, login=user.login, admin=user.admin)
    return redirect(next_page)


def local_path(url: str) -> str | None:
    """url when it is a path on this site (never another host: no open redirect)."""
    parts = urllib.parse.urlsplit(url)
    if not url.startswith("/") or url.startswith("//") or parts.scheme or parts.netloc or "\\" in url:
        return None
    return url


def init_github(app: Flask) -> None:
    """GitHub sign-in at /login/github, when a GitHub app is configured."""
    client_id = app.config.get("DONUT_GITHUB_CLIENT_ID")
    if not client_id:
        return
    web = app.config.get("DONUT_GITHUB_URL", "https://github.com").rstrip("/")
    api = "https://api.github.com/" if web == "https://github.com" else f"{web}/api/v3/"
    orgs = tuple(app.config.get("DONUT_GITHUB_ORGS", ()))
    github = make_github_blueprint(client_id=client_id, client_secret=app.config["DONUT_GITHUB_CLIENT_SECRET"],
                                   scope="read:org" if orgs else "", redirect_to="auth.login")
    github.authorization_url = f"{web}/login/oauth/authorize"
    github.token_url = f"{web}/login/oauth/access_token"
    github.base_url = api
    app.register_blueprint(github, url_prefix="/login")
    oauth_authorized.connect(_github_signed_in, sender=github, weak=False)
    oauth_error.connect(_github_refused, sender=github, weak=False)


def _github_signed_in(github: OAuth2ConsumerBlueprint, token: dict[str, Any]) -> Response:
    answer = github.session.get("user")
    if not answer.ok:
        return _refused(f"GitHub did not say who you are (HTTP {answer.status_code})")
    me = answer.json()
    login = str(me.get("login", ""))
    if not _may_sign_in(github, login):
        return _refused(f"the GitHub user {login} may not sign in here: ask an admin to add you "
                        "(donut up --github-users / --github-orgs)")
    user = services().users.UpsertGithubUser(
        upb.UpsertGithubUserRequest(github_id=int(me["id"]), login=login, display_name=str(me.get("name") or "")),
        metadata=services().as_gateway)
    return start_session(user)


def _may_sign_in(github: OAuth2ConsumerBlueprint, login: str) -> bool:
    users = {u.lower() for u in current_app.config.get("DONUT_GITHUB_USERS", ())}
    orgs = tuple(current_app.config.get("DONUT_GITHUB_ORGS", ()))
    if not users and not orgs:
        return True
    if login.lower() in users:
        return True
    for org in orgs:
        answer = github.session.get(f"user/memberships/orgs/{urllib.parse.quote(org)}")
        if answer.ok and answer.json().get("state") == "active":
            return True
    return False


def _github_refused(github: OAuth2ConsumerBlueprint, error: Any, error_description: str | None = None,
                    error_uri: str | None = None) -> Response:
    return _refused(f"GitHub refused: {error_description or error}")


def _refused(why: str) -> Response:
    flash(f"Sign-in refused: {why}.")
    return redirect(url_for("auth.login"))


@blueprint.app_errorhandler(OAuth2Error)
def oauth_failed(e: OAuth2Error) -> ResponseReturnValue:
    """A callback with a state that is not this browser's, or a code GitHub no longer takes."""
    return _refused(f"the GitHub answer could not be used ({e.description or e.error}); start again")
