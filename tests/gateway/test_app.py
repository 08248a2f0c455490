"""The gateway as `donut up` serves it, seen over plain HTTP: who is sent to sign in, the
health check, and the headers every answer carries."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest


@pytest.fixture
def web(stack_config: Any) -> Iterator[str]:
    from donut_cli.stack import Stack

    with Stack(replace(stack_config, http_port=0)) as stack:
        yield stack.http_endpoint


def test_a_visitor_who_is_not_signed_in_is_sent_to_sign_in_which_explains_donut_ui(web: str) -> None:
    for path in ("/", "/workflows", "/workflows/admin/new", "/tokens"):
        with urllib.request.urlopen(web + path, timeout=10) as page:
            assert page.url.startswith(web + "/login"), path
            text = page.read().decode()
    assert "donut ui" in text and "Sign in with GitHub" not in text  # no GitHub app configured


def test_json_and_event_endpoints_answer_401_rather_than_a_page(web: str) -> None:
    request = urllib.request.Request(web + "/workflows/0d2d1e3c-7a0e-4bde-8a5d-4a3f0e1b2c3d/events",
                                     headers={"Accept": "text/event-stream"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


def test_health_and_the_headers_of_every_answer(web: str) -> None:
    with urllib.request.urlopen(web + "/healthz", timeout=10) as health:
        assert json.loads(health.read()) == {"status": "ok"}
        policy = health.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
    with urllib.request.urlopen(web + "/login", timeout=10) as login:
        assert login.headers["X-Content-Type-Options"] == "nosniff"
        assert login.headers["Content-Security-Policy"] == policy


def test_behind_a_proxy_the_public_url_makes_the_callbacks_and_the_cookie_secure() -> None:
    from gateway.app import close, create_app

    app = create_app({"DONUT_PUBLIC_URL": "https://donut.example/gui", "DONUT_GITHUB_CLIENT_ID": "id",
                      "DONUT_GITHUB_CLIENT_SECRET": "secret", "DONUT_GITHUB_URL": "https://ghe.example",
                      "SECRET_KEY": b"k" * 32})
    try:
        client = app.test_client()
        started = client.get("/login/github")
        assert started.status_code == 302
        assert started.location.startswith("https://ghe.example/login/oauth/authorize?")
        assert "redirect_uri=https%3A%2F%2Fdonut.example%2Fgui%2Flogin%2Fgithub%2Fauthorized" in started.location
        cookie = started.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        login = client.get("/login").get_data(as_text=True)
        assert 'href="/gui/login/github"' in login and "Sign in with GitHub" in login
    finally:
        close(app)
