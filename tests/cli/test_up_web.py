"""`donut up`'s web GUI settings: GitHub sign-in, the public address, and the session key
the gateway gets, kept in the data dir."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import donut

NO_SECRET = {"DONUT_GITHUB_CLIENT_SECRET": ""}


@pytest.mark.parametrize(("flags", "env", "named"), [
    (["--github-client-id", "Iv1.abc"], NO_SECRET, "DONUT_GITHUB_CLIENT_SECRET"),
    (["--public-url", "ftp://donut.example"], {}, "--public-url"),
    (["--public-url", "https://donut.example:99999"], {}, "--public-url"),
    (["--public-url", "https://donut.example/?next=x"], {}, "--public-url"),
    (["--public-url", "donut.example"], {}, "--public-url"),
    (["--github-url", "github.example"], {}, "--github-url"),
    (["--github-users", "alice,-bob"], {}, "--github-users"),
    (["--github-users", "alice,b ob"], {}, "--github-users"),
    (["--github-users", "a" * 40], {}, "--github-users"),
    (["--github-orgs", "acme--corp_"], {}, "--github-orgs"),
])
def test_bad_web_settings_stop_up_with_one_line(tmp_path: Path, flags: list[str], env: dict[str, str],
                                                named: str) -> None:
    data = tmp_path / "data"
    result = donut("up", "--data-dir", str(data), "--port", "0", "--http-port", "0", *flags,
                   home=tmp_path / "home", env={"DONUT_GITHUB_CLIENT_SECRET": "s3cret", **env})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1 and named in result.stderr
    assert not data.exists()  # nothing started


def test_the_gateway_gets_the_web_settings_and_a_session_key_kept_0600(stack_config: Any) -> None:
    from donut_cli.stack import GithubSignIn, Stack

    github = GithubSignIn(client_id="Iv1.abc", client_secret="s3cret", url="https://ghe.example",
                          users=("alice", "bob"), orgs=("acme",))
    config = replace(stack_config, http_port=0, public_url="https://donut.example/gui", github=github)
    with Stack(config) as first:
        assert first.http is not None
        settings = first.http.app.config  # type: ignore[attr-defined]
        key = first.session_key
    path = Path(config.data_dir) / "session-key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == key and len(key) == 32
    assert settings["SECRET_KEY"] == key
    assert {k: settings[k] for k in ("DONUT_PUBLIC_URL", "DONUT_GITHUB_CLIENT_ID", "DONUT_GITHUB_CLIENT_SECRET",
                                     "DONUT_GITHUB_URL", "DONUT_GITHUB_USERS", "DONUT_GITHUB_ORGS")} == {
        "DONUT_PUBLIC_URL": "https://donut.example/gui", "DONUT_GITHUB_CLIENT_ID": "Iv1.abc",
        "DONUT_GITHUB_CLIENT_SECRET": "s3cret", "DONUT_GITHUB_URL": "https://ghe.example",
        "DONUT_GITHUB_USERS": ("alice", "bob"), "DONUT_GITHUB_ORGS": ("acme",)}
    assert "s3cret" not in repr(config)
    with Stack(replace(stack_config, http_port=0)) as again:
        assert again.session_key == key  # sessions outlive a restart
        assert again.http is not None
        plain = again.http.app.config  # type: ignore[attr-defined]
        assert (plain["DONUT_PUBLIC_URL"], plain["DONUT_GITHUB_CLIENT_ID"], plain["DONUT_GITHUB_USERS"]) == ("", "", ())
    path.write_bytes(b"")
    with Stack(stack_config) as emptied:
        assert len(emptied.session_key) == 32 and emptied.session_key != key
        assert path.read_bytes() == emptied.session_key


def test_up_s_public_url_makes_donut_ui_s_links(tmp_path: Path, etcd_server: Any, etcd_prefix: str) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    home = tmp_path / "home"
    env = {**{k: v for k, v in os.environ.items() if k not in ("DONUT_TOKEN", "DONUT_ENDPOINT")},
           "DONUT_HOME": str(home), "DONUT_GITHUB_CLIENT_SECRET": "s3cret"}
    up = subprocess.Popen([sys.executable, "-m", "donut_cli", "up", "--data-dir", str(tmp_path / "d"), "--port", "0",
                           "--http-port", "0", "--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", etcd_prefix,
                           "--public-url", "https://donut.example/gui/", "--github-client-id", "Iv1.abc",
                           "--github-users", "alice,bob-b", "--github-orgs", "acme"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (home / "client.json").exists():
            assert time.monotonic() < deadline and up.poll() is None, up.stderr.read() if up.stderr else ""
            time.sleep(0.05)
        result = donut("ui", "--print-url", home=home)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("https://donut.example/gui/login/code?code=")
        assert "s3cret" not in " ".join(str(a) for a in up.args)  # never on the command line
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(30)


def test_up_keeps_quiet_about_web_requests_and_never_logs_a_sign_in_link(tmp_path: Path, etcd_server: Any,
                                                                         etcd_prefix: str) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    home = tmp_path / "home"
    env = {**{k: v for k, v in os.environ.items() if k not in ("DONUT_TOKEN", "DONUT_ENDPOINT")},
           "DONUT_HOME": str(home)}
    up = subprocess.Popen([sys.executable, "-m", "donut_cli", "up", "--data-dir", str(tmp_path / "d"), "--port", "0",
                           "--http-port", "0", "--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", etcd_prefix],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (home / "client.json").exists():
            assert time.monotonic() < deadline and up.poll() is None
            time.sleep(0.05)
        link = donut("ui", "--print-url", home=home).stdout.strip()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())  # keeps the session cookie
        with browser.open(link, timeout=10) as page:
            assert page.url.endswith("/workflows") and "admin" in page.read().decode()
    finally:
        up.send_signal(signal.SIGTERM)
        _, stderr = up.communicate(timeout=30)
    code = link.split("code=")[1]
    assert code not in stderr and "GET /" not in stderr, stderr
