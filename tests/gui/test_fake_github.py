"""The fake GitHub of the browser tests answers as GitHub does, and flask-dance signs in
through it in a real Chromium: what the gateway's sign-in tests rely on."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask, redirect, url_for
from flask_dance.consumer import oauth_error
from flask_dance.contrib.github import github, make_github_blueprint
from markupsafe import escape
from playwright.sync_api import Page, expect

from tests.gui.conftest import screenshot
from tests.gui.fake_github import FakeGithub
from tests.gui.serving import serving

REDIRECT_URI = "http://127.0.0.1:1/login/github/authorized"


def authorize(fake_github: FakeGithub, **params: str) -> requests.Response:
    query = {"client_id": fake_github.client_id, "redirect_uri": REDIRECT_URI, "state": "s1", **params}
    return requests.get(f"{fake_github.url}/login/oauth/authorize", params=query, allow_redirects=False, timeout=10)


def redirected_to(response: requests.Response) -> dict[str, str]:
    """The query the fake sent the browser back to the app with (after checking where to)."""
    assert response.status_code == 302, response.text
    location = urllib.parse.urlsplit(response.headers["Location"])
    assert urllib.parse.urlunsplit(location._replace(query="")) == REDIRECT_URI
    return dict(urllib.parse.parse_qsl(location.query))


def exchange(fake_github: FakeGithub, code: str, secret: str | None = None) -> requests.Response:
    return requests.post(f"{fake_github.url}/login/oauth/access_token",
                         data={"code": code, "redirect_uri": REDIRECT_URI},
                         auth=(fake_github.client_id, secret or fake_github.client_secret),
                         headers={"Accept": "application/json"}, timeout=10)


def api(fake_github: FakeGithub, path: str, token: str) -> requests.Response:
    return requests.get(f"{fake_github.url}/api/v3/{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def signed_in_token(fake_github: FakeGithub) -> str:
    code = redirected_to(authorize(fake_github))["code"]
    token: str = exchange(fake_github, code).json()["access_token"]
    return token


def test_the_whole_dance_gives_a_token_for_the_chosen_user(fake_github: FakeGithub) -> None:
    fake_github.sign_in_as(login="octocat", id=1, name="Mona", orgs=["acme", "umbrella"])
    back = redirected_to(authorize(fake_github, scope="read:org"))
    assert back["state"] == "s1"
    answer = exchange(fake_github, back["code"])
    assert answer.status_code == 200
    assert answer.json() == {"access_token": answer.json()["access_token"], "token_type": "bearer", "scope": "read:org"}
    token = answer.json()["access_token"]
    assert api(fake_github, "user", token).json() == {"id": 1, "login": "octocat", "name": "Mona"}
    assert api(fake_github, "user/orgs", token).json() == [{"login": "acme"}, {"login": "umbrella"}]
    assert api(fake_github, "user/memberships/orgs/acme", token).json()["state"] == "active"
    assert api(fake_github, "user/memberships/orgs/initech", token).status_code == 404
    assert [(seen.method, seen.path) for seen in fake_github.requests] == [
        ("GET", "/login/oauth/authorize"), ("POST", "/login/oauth/access_token"), ("GET", "/api/v3/user"),
        ("GET", "/api/v3/user/orgs"), ("GET", "/api/v3/user/memberships/orgs/acme"),
        ("GET", "/api/v3/user/memberships/orgs/initech")]
    assert fake_github.requests[0].args["state"] == "s1"


def test_the_next_sign_in_may_be_someone_else(fake_github: FakeGithub) -> None:
    fake_github.sign_in_as(login="first", id=1)
    first = signed_in_token(fake_github)
    fake_github.sign_in_as(login="second", id=2, name="Second")
    second = signed_in_token(fake_github)
    assert api(fake_github, "user", first).json()["login"] == "first"
    assert api(fake_github, "user", second).json() == {"id": 2, "login": "second", "name": "Second"}
    assert api(fake_github, "user/orgs", second).json() == []


def test_a_refusal_goes_back_with_access_denied_and_the_state(fake_github: FakeGithub) -> None:
    fake_github.deny_next()
    back = redirected_to(authorize(fake_github))
    assert (back["error"], back["state"]) == ("access_denied", "s1")
    assert "code" not in back
    assert "code" in redirected_to(authorize(fake_github))  # only the next one


def test_an_unknown_client_is_not_redirected(fake_github: FakeGithub) -> None:
    response = authorize(fake_github, client_id="someone-else")
    assert response.status_code == 404
    assert "Location" not in response.headers


def test_a_wrong_secret_or_code_gets_no_token(fake_github: FakeGithub) -> None:
    code = redirected_to(authorize(fake_github))["code"]
    assert exchange(fake_github, code, secret="wrong").json() == {"error": "incorrect_client_credentials"}
    assert exchange(fake_github, "not-a-code").json()["error"] == "bad_verification_code"
    assert "access_token" in exchange(fake_github, code).json()
    assert exchange(fake_github, code).json()["error"] == "bad_verification_code"  # a code works once


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic b2N0b2NhdDp4"])
def test_the_api_wants_a_token_it_gave(fake_github: FakeGithub, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for path in ("user", "user/orgs", "user/memberships/orgs/acme"):
        response = requests.get(f"{fake_github.url}/api/v3/{path}", headers=headers, timeout=10)
        assert (response.status_code, response.json()) == (401, {"message": "Bad credentials"})


@pytest.fixture
def oauth_app(fake_github: FakeGithub, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway app signing in with flask-dance's GitHub blueprint pointed at the fake,
    showing who signed in (or why not) on its front page."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    app = Flask(__name__)
    app.secret_key = "not a secret"
    blueprint = make_github_blueprint(client_id=fake_github.client_id, client_secret=fake_github.client_secret,
                                      scope="read:org", redirect_to="index")
    blueprint.authorization_url = f"{fake_github.url}/login/oauth/authorize"
    blueprint.token_url = f"{fake_github.url}/login/oauth/access_token"
    blueprint.base_url = f"{fake_github.url}/api/v3/"
    app.register_blueprint(blueprint, url_prefix="/login")
    errors: list[str] = []

    def remember_error(_blueprint: Any, error: str, **_details: Any) -> None:
        errors.append(error)

    @app.route("/")
    def index() -> Any:
        if errors:
            return f'<p id="refused">{escape(errors[-1])}</p>'
        if not github.authorized:
            return redirect(url_for("github.login"))
        user = github.get("user").json()
        orgs = ", ".join(org["login"] for org in github.get("user/orgs").json())
        return f'<p id="who">{escape(user["login"])} ({escape(user["name"])}) of {escape(orgs)}</p>'

    oauth_error.connect(remember_error, blueprint)
    try:
        with serving(app) as url:
            yield url
    finally:
        oauth_error.disconnect(remember_error, blueprint)


def test_flask_dance_signs_in_through_the_fake_in_chromium(fake_github: FakeGithub, oauth_app: str,
                                                           page: Page) -> None:
    fake_github.sign_in_as(login="octocat", id=1, name="Mona", orgs=["acme"])
    page.goto(oauth_app)
    expect(page.locator("#who")).to_have_text("octocat (Mona) of acme")
    authorize_request = next(seen for seen in fake_github.requests if seen.path == "/login/oauth/authorize")
    assert authorize_request.args["state"]
    assert authorize_request.args["redirect_uri"] == f"{oauth_app}/login/github/authorized"
    token_request = next(seen for seen in fake_github.requests if seen.path == "/login/oauth/access_token")
    assert token_request.authorization == ("basic", fake_github.client_id)


def test_a_denied_sign_in_reaches_flask_dance_as_an_error(fake_github: FakeGithub, oauth_app: str,
                                                          page: Page) -> None:
    fake_github.deny_next()
    page.goto(oauth_app)
    expect(page.locator("#refused")).to_have_text("access_denied")
    assert not any(seen.path == "/login/oauth/access_token" for seen in fake_github.requests)


def test_screenshot_writes_a_png(page: Page, tmp_path: Any) -> None:
    page.set_content("<h1>donut</h1>")
    path = screenshot(page, "heading", directory=tmp_path)
    assert path == tmp_path / "heading.png"
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
