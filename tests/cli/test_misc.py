"""`donut version`, `donut completion` and `donut user list`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from donut_common.version import donut_version
from tests.cli.conftest import donut


def test_version_shows_the_client_and_the_server(cli: Any, tmp_path: Path) -> None:
    version = donut_version()
    result = cli("version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"client: {version}\nserver: {version}\n"
    assert cli("--version").stdout == f"donut {version} (client)\n"
    down = donut("version", home=tmp_path / "home", endpoint="127.0.0.1:1")
    assert down.returncode == 1 and down.stdout == f"client: {version}\n"
    assert down.stderr.startswith("error: cannot ask the server at 127.0.0.1:1") and down.stderr.count("\n") == 1
    assert donut("--version", home=tmp_path / "home", endpoint="127.0.0.1:1").returncode == 0


def test_completion_prints_clicks_script_for_each_shell(tmp_path: Path) -> None:
    for shell in ("bash", "zsh", "fish"):
        result = donut("completion", shell, home=tmp_path)
        assert result.returncode == 0 and "_DONUT_COMPLETE" in result.stdout, result.stderr
    assert donut("completion", "tcsh", home=tmp_path).returncode == 2


def test_user_list_is_for_admins(cli: Any) -> None:
    assert cli("user", "create", "bob", "--name", "Bob B").returncode == 0
    listed = cli("user", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    bob = next(u for u in json.loads(listed.stdout) if u["login"] == "bob")
    assert bob["display_name"] == "Bob B" and bob["admin"] is False
    assert "bob" in cli("user", "list").stdout
    assert {"admin", "bob"} <= set(cli("user", "list", "-o", "name").stdout.split())
    assert bob["id"] in cli("user", "list", "-o", "wide").stdout
    token = json.loads(cli("token", "create", "--user", "bob", "--json").stdout)["token"]
    refused = cli("user", "list", env={"DONUT_TOKEN": token})
    assert refused.returncode == 1 and "permission_denied" in refused.stderr
