"""`donut ui`: a one-time link into the web GUI for the CLI's own user, printed or opened."""

from __future__ import annotations

import urllib.parse
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from donut.users.v1 import users_pb2 as upb
from donut.users.v1 import users_pb2_grpc
from donut_common.rpc import channel

PUBLIC_URL = "https://donut.example/gui"
NO_BROWSER = {"BROWSER": "false", "DISPLAY": "", "WAYLAND_DISPLAY": "", "TERM": ""}  # webbrowser finds none


@pytest.fixture
def stack_config(stack_config: Any, request: pytest.FixtureRequest) -> Any:
    """The stack behind a proxy at PUBLIC_URL (a test's parameter may name another, or "")."""
    return replace(stack_config, public_url=getattr(request, "param", PUBLIC_URL))


def redeemed_login(stack: Any, url: str, base: str) -> str:
    """The login the link's code signs in, spent as the gateway spends it."""
    assert url.startswith(f"{base}/login/code?code="), url
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["code"][0]
    services = users_pb2_grpc.UsersStub(channel(stack.endpoint, token=stack.service_token))
    return services.RedeemSignInCode(upb.RedeemSignInCodeRequest(code=code)).login


@pytest.fixture
def alice(stack: Any) -> str:
    admin = users_pb2_grpc.UsersStub(channel(stack.endpoint, token=stack.admin_token))
    admin.CreateUser(upb.CreateUserRequest(login="alice"))
    return admin.CreateToken(upb.CreateTokenRequest(user_login="alice", name="cli")).secret


def test_print_url_gives_a_link_that_signs_the_cli_s_user_in(cli: Any, stack: Any, alice: str) -> None:
    result = cli("ui", "--print-url", env={"DONUT_TOKEN": alice})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    url = result.stdout.strip()
    assert result.stdout == url + "\n"
    assert redeemed_login(stack, url, PUBLIC_URL) == "alice"


def test_url_names_the_gui_s_address_and_wins(cli: Any, stack: Any) -> None:
    result = cli("ui", "--print-url", "--url", "http://127.0.0.1:8123/donut/")
    assert result.returncode == 0, result.stderr
    assert redeemed_login(stack, result.stdout.strip(), "http://127.0.0.1:8123/donut") == "admin"
    bad = cli("ui", "--print-url", "--url", "ftp://example.org")
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1 and "--url" in bad.stderr


@pytest.mark.parametrize("stack_config", [""], indirect=True)
def test_without_any_gui_address_it_says_to_pass_url(cli: Any) -> None:
    result = cli("ui", "--print-url")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "error: the server does not know the web GUI's address: pass --url\n"


def test_the_link_opens_in_the_browser(cli: Any, stack: Any, tmp_path: Path) -> None:
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\nprintf %s "$1" > {opened}\n')
    browser.chmod(0o755)
    result = cli("ui", env={**NO_BROWSER, "BROWSER": str(browser)})
    assert result.returncode == 0 and result.stdout == "", result.stderr
    url = opened.read_text()
    assert result.stderr == f"Opened {url} (valid 60 s, once)\n"
    assert redeemed_login(stack, url, PUBLIC_URL) == "admin"


def test_without_a_browser_the_link_is_printed(cli: Any, stack: Any) -> None:
    result = cli("ui", env=NO_BROWSER)
    assert result.returncode == 0, result.stderr
    assert redeemed_login(stack, result.stdout.strip(), PUBLIC_URL) == "admin"


def test_a_job_s_token_gets_no_link(cli: Any, stack: Any) -> None:
    from donut_common.auth import JobTokens

    admin_id = users_pb2_grpc.UsersStub(channel(stack.endpoint, token=stack.admin_token)).WhoAmI(
        upb.WhoAmIRequest()).user.id
    job_token = JobTokens(channel(stack.endpoint, token=stack.service_token)).mint(
        admin_id, "11111111-2222-4333-8444-555555555555", "j", 1)[1]
    result = cli("ui", "--print-url", env={"DONUT_TOKEN": job_token})
    assert result.returncode == 1 and result.stdout == "" and result.stderr.count("\n") == 1
    assert "permission_denied" in result.stderr
