"""A fake GitHub for the sign-in tests: the OAuth web flow and the few API calls a sign-in
makes, at GitHub Enterprise Server's URLs (web at `<url>/login/oauth/...`, API at
`<url>/api/v3`), so that `donut up --github-url <url>` reaches it like a real one.

It answers the way GitHub does, errors included (a wrong secret or code is a 200 with an
`error` field; a bad token is a 401 "Bad credentials"), lets a test choose who signs in
next or that the next sign-in is refused, and records every request it got.
"""

from __future__ import annotations

import secrets
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, jsonify, redirect, request

from tests.gui.serving import serving


@dataclass(frozen=True)
class GithubAccount:
    """Who the fake says signed in."""

    login: str
    id: int
    name: str = ""
    orgs: tuple[str, ...] = ()
    """The organisations the account is an active member of."""


@dataclass(frozen=True)
class SeenRequest:
    """One request the fake got, enough for a test to check what the app sent."""

    method: str
    path: str
    args: dict[str, str]
    """The query string."""
    form: dict[str, str]
    authorization: tuple[str, str] | None
    """The scheme (lower case) and the user name of Basic, or the token of Bearer/token."""


@dataclass
class FakeGithub:
    """The fake's state; `serve()` runs it, the `fake_github` fixture hands it out running."""

    client_id: str = field(default_factory=lambda: "client-" + secrets.token_hex(4))
    client_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    url: str = ""
    """Its base URL, set while it is served (what `--github-url` takes)."""
    requests: list[SeenRequest] = field(default_factory=list)
    _next: GithubAccount = GithubAccount(login="octocat", id=1, name="The Octocat")
    _deny_next: bool = False
    _codes: dict[str, tuple[GithubAccount, str]] = field(default_factory=dict)
    _tokens: dict[str, GithubAccount] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sign_in_as(self, login: str, id: int, name: str = "", orgs: Sequence[str] = ()) -> None:
        """From now on, whoever goes through the authorize page signs in as this account."""
        with self._lock:
            self._next = GithubAccount(login=login, id=id, name=name, orgs=tuple(orgs))

    def deny_next(self) -> None:
        """The next authorize request is refused as if the user clicked Cancel (`error=access_denied`)."""
        with self._lock:
            self._deny_next = True

    @contextmanager
    def serve(self) -> Iterator[FakeGithub]:
        with serving(self._app()) as url:
            self.url = url
            try:
                yield self
            finally:
                self.url = ""

    def _app(self) -> Flask:
        app = Flask(__name__)
        app.before_request(self._record)
        app.get("/login/oauth/authorize")(self._authorize)
        app.post("/login/oauth/access_token")(self._access_token)
        app.get("/api/v3/user")(self._user)
        app.get("/api/v3/user/orgs")(self._orgs)
        app.get("/api/v3/user/memberships/orgs/<org>")(self._membership)
        return app

    def _record(self) -> None:
        authorization: tuple[str, str] | None = None
        if request.authorization is not None:
            credential = request.authorization.username or request.authorization.token or ""
            authorization = (request.authorization.type, credential)
        seen = SeenRequest(method=request.method, path=request.path, args=dict(request.args),
                           form=dict(request.form), authorization=authorization)
        with self._lock:
            self.requests.append(seen)

    def _authorize(self) -> Any:
        if request.args.get("client_id") != self.client_id:
            return "Not Found", 404  # GitHub's page for an unknown application
        redirect_uri = request.args["redirect_uri"]
        with self._lock:
            if self._deny_next:
                self._deny_next = False
                answer = {"error": "access_denied",
                          "error_description": "The user has denied your application access."}
            else:
                code = secrets.token_hex(10)
                self._codes[code] = (self._next, request.args.get("scope", ""))
                answer = {"code": code}
        if "state" in request.args:
            answer["state"] = request.args["state"]
        separator = "&" if "?" in redirect_uri else "?"
        return redirect(redirect_uri + separator + urllib.parse.urlencode(answer))

    def _access_token(self) -> Any:
        auth = request.authorization
        client = (auth.username, auth.password) if auth and auth.type == "basic" else (
            request.form.get("client_id"), request.form.get("client_secret"))
        if client != (self.client_id, self.client_secret):
            return jsonify(error="incorrect_client_credentials")
        with self._lock:
            granted = self._codes.pop(request.form.get("code", ""), None)
            if granted is None:
                return jsonify(error="bad_verification_code")
            account, scope = granted
            token = "gho_" + secrets.token_hex(16)
            self._tokens[token] = account
        return jsonify(access_token=token, token_type="bearer", scope=scope)

    def _account(self) -> GithubAccount | None:
        auth = request.authorization
        if auth is None or auth.type not in ("bearer", "token") or not auth.token:
            return None
        with self._lock:
            return self._tokens.get(auth.token)

    def _user(self) -> Any:
        account = self._account()
        if account is None:
            return _bad_credentials()
        return jsonify(id=account.id, login=account.login, name=account.name)

    def _orgs(self) -> Any:
        account = self._account()
        if account is None:
            return _bad_credentials()
        return jsonify([{"login": org} for org in account.orgs])

    def _membership(self, org: str) -> Any:
        account = self._account()
        if account is None:
            return _bad_credentials()
        if org not in account.orgs:
            return jsonify(message="Not Found"), 404
        return jsonify(state="active", role="member", organization={"login": org}, user={"login": account.login})


def _bad_credentials() -> Any:
    return jsonify(message="Bad credentials"), 401
