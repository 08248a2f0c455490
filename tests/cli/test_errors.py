"""Errors that read as one line: `error: ...`, the right exit code, no traceback, no gRPC
C-core lines."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tests.cli.conftest import FRUIT, donut

NOWHERE = "127.0.0.1:1"  # nothing listens: what is refused here is refused before any call
SOME_ID = "00000000-0000-4000-8000-000000000000"


def _one_error_line(result: Any, code: int, *parts: str) -> None:
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for part in parts:
        assert part in result.stderr, result.stderr


def test_huge_numbers_are_bad_input(donut_home: Path) -> None:
    huge = "99999999999999999999"
    for args, option in ((["logs", SOME_ID, "a", "--attempt", huge], "--attempt"),
                         (["list", "--limit", huge], "--limit"),
                         (["submit", str(FRUIT), "--parallelism", huge], "--parallelism"),
                         (["up", "--rpc-threads", huge], "--rpc-threads"),
                         (["up", "--max-download-bytes", huge + "0"], "--max-download-bytes"),
                         (["up", "--kill-grace", "nan"], "--kill-grace"),
                         (["up", "--stream-idle-timeout", "1e400"], "--stream-idle-timeout"),
                         (["up", "--quota-bytes", "-1"], "--quota-bytes"),
                         (["up", "--save-deadline", "nan"], "--save-deadline")):
        _one_error_line(donut("--token", "t", *args, home=donut_home, endpoint=NOWHERE), 2, f"'{option}'")


def test_a_token_or_id_that_cannot_be_sent_is_refused_before_sending(donut_home: Path) -> None:
    for token in ("é", "two\nlines", "a" * 20000, "with space"):
        by_flag = donut("--token", token, "list", home=donut_home, endpoint=NOWHERE)
        _one_error_line(by_flag, 2, "--token/DONUT_TOKEN")
        by_env = donut("list", home=donut_home, endpoint=NOWHERE, env={"DONUT_TOKEN": token})
        _one_error_line(by_env, 2, "--token/DONUT_TOKEN")
    long_id = donut("--token", "t", "status", SOME_ID + "0" * 20000, home=donut_home, endpoint=NOWHERE)
    _one_error_line(long_id, 2, "WORKFLOW_ID: not a workflow id")


def test_a_ca_that_is_no_certificate_is_one_line(cli: Any, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    _one_error_line(cli("--tls-ca", str(ca), "list"), 2, f"--tls-ca: {ca} holds no PEM certificate")
    ca.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    _one_error_line(cli("--tls-ca", str(ca), "list"), 1, "cannot reach donut")


def test_without_a_client_config_or_token_it_says_where_the_config_should_be(stack: Any, donut_home: Path) -> None:
    result = donut("list", home=donut_home, endpoint=stack.endpoint)
    _one_error_line(result, 1, f"{donut_home / 'client.json'} is missing (`donut up` writes it)", "DONUT_TOKEN")


def test_token_list_shows_expired_tokens_as_expired(cli: Any, clock: Any) -> None:
    clock.advance(-3600)  # made an hour ago, for a minute
    made = cli("token", "create", "--name", "old", "--expires", "60", "--json")
    clock.advance(3600)
    assert made.returncode == 0, made.stderr
    listed = cli("token", "list")
    row = next(line for line in listed.stdout.splitlines() if json.loads(made.stdout)["id"] in line)
    assert row.endswith("expired")
    assert next(line for line in listed.stdout.splitlines() if "donut up" in line).endswith("active")


def test_results_download_refuses_to_write_over_files_and_makes_nothing_for_no_results(
        cli: Any, tmp_path: Path) -> None:
    quiet = tmp_path / "quiet.json"
    quiet.write_text(json.dumps({"jobs": [{"name": "a", "image": "x", "cmd": "true", "args": []}]}))
    empty = json.loads(cli("submit", str(quiet), "--wait", "--json").stdout)["id"]
    none = cli("results", empty, "--download", str(tmp_path / "none"))
    assert none.returncode == 0 and "no results saved" in none.stderr and "nothing to download" in none.stderr
    assert not (tmp_path / "none").exists()

    fruit = json.loads(cli("submit", str(FRUIT), "--wait", "--json").stdout)["id"]
    out = tmp_path / "out"
    (out / "apple").mkdir(parents=True)
    (out / "apple" / "output.txt").write_text("mine\n")
    refused = cli("results", fruit, "--download", str(out))
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1] == (f"error: --download: {out / 'apple' / 'output.txt'} exists already "
                                               "(--overwrite replaces it)")
    assert (out / "apple" / "output.txt").read_text() == "mine\n" and not (out / "banana").exists()
    replaced = cli("results", fruit, "--download", str(out), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert (out / "apple" / "output.txt").read_text() == "apple 3\n"


def test_up_on_a_port_in_use_is_one_line(donut_home: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for args, option in ((["--port", port, "--http-port", "-1"], "--port"),
                             (["--port", "0", "--http-port", port], "--http-port")):
            result = donut("up", "--data-dir", str(tmp_path / "data"), *args, home=donut_home)
            _one_error_line(result, 1, f"{option}: cannot listen on 127.0.0.1:{port}: the port is in use")


def test_help_names_every_env_var_and_the_real_data_dir(donut_home: Path) -> None:
    up = donut("up", "--help", home=donut_home)
    assert f"default:{donut_home / 'data'}]" in "".join(up.stdout.split())  # (wrapped at any hyphen)
    for command, variables in ((["up"], ["DONUT_UP_DATA_DIR", "DONUT_UP_PORT", "DONUT_UP_VERBOSE"]),
                               ([], ["DONUT_ENDPOINT", "DONUT_TOKEN", "DONUT_TLS_CA"]),
                               (["logs"], ["DONUT_LOGS_ATTEMPT", "DONUT_LOGS_FOLLOW"]),
                               (["token", "create"], ["DONUT_TOKEN_CREATE_EXPIRES"])):
        shown = "".join(donut(*command, "--help", home=donut_home).stdout.split())
        for variable in variables:
            assert f"envvar:{variable}" in shown, (command, variable)
