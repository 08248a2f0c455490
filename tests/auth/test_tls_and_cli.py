"""Tokens from the command line, and the whole stack over TLS on loopback."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from donut.dagger.v1 import dagger_pb2 as dpb
from donut.dagger.v1 import dagger_pb2_grpc
from donut_common.rpc import channel
from tests.cli.conftest import FRUIT, donut
from tests.conftest import MovableClock


def test_token_commands(stack: Any, donut_home: Path, clock: MovableClock) -> None:
    def run(*args: str, token: str = stack.admin_token) -> subprocess.CompletedProcess[str]:
        return donut(*args, home=donut_home, endpoint=stack.endpoint, env={"DONUT_TOKEN": token})

    assert json.loads(run("whoami", "--json").stdout)["admin"] is True
    assert run("user", "create", "carol").returncode == 0
    created = json.loads(run("token", "create", "--user", "carol", "--name", "ci", "--expires", "30d",
                             "--json").stdout)
    assert set(created) == {"id", "token"}
    carol = created["token"]
    assert json.loads(run("whoami", "--json", token=carol).stdout)["login"] == "carol"
    mine = json.loads(run("token", "create", "--json", token=carol).stdout)
    listed = json.loads(run("token", "list", "--json", token=carol).stdout)
    assert {t["id"] for t in listed} == {created["id"], mine["id"]}
    assert all("token" not in t for t in listed)  # secrets are never listed
    denied = run("user", "create", "dave", token=carol)
    assert denied.returncode == 1 and "admins only" in denied.stderr
    assert run("token", "revoke", mine["id"], token=carol).returncode == 0
    clock.advance(stack.config.token_cache_seconds + 0.5)  # the verification cache has forgotten it
    refused = run("whoami", token=mine["token"])
    assert refused.returncode == 1 and "revoked" in refused.stderr
    assert run("token", "create", "--expires", "soon", token=carol).returncode == 2


def test_up_writes_a_private_client_config_that_the_cli_uses(tmp_path: Path, etcd_server: Any,
                                                            etcd_prefix: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "client.json.tmp").write_text("left over")
    (home / "client.json.tmp").chmod(0o644)  # its mode must not carry over
    env = {**os.environ, "DONUT_HOME": str(home)}
    env.pop("DONUT_TOKEN", None)
    up = subprocess.Popen([sys.executable, "-m", "donut_cli", "up", "--data-dir", str(tmp_path / "d"), "--port", "0",
                           "--http-port", "-1", "--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", etcd_prefix],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        config = home / "client.json"
        deadline = time.time() + 30
        while not config.exists():
            assert time.time() < deadline and up.poll() is None
            time.sleep(0.05)
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "d" / "service-token").stat().st_mode) == 0o600
        assert json.loads(config.read_text())["token"].startswith("dd_")
        result = donut("submit", str(FRUIT), "--wait", home=home)
        assert result.returncode == 0, result.stderr
        assert json.loads(donut("whoami", "--json", home=home).stdout)["login"] == "admin"
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(30)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.parametrize("executor", ["local", "wrapper"])
def test_the_stack_over_tls(stack_config: Any, certificate: tuple[Path, Path], donut_home: Path,
                            executor: str) -> None:
    from donut_cli.stack import Stack

    cert, key = certificate
    with Stack(replace(stack_config, tls_cert=cert, tls_key=key, executor=executor)) as stack:
        token = stack.client_token()[0]
        secure = channel(stack.endpoint, token=token, tls_ca=cert.read_bytes())
        assert list(dagger_pb2_grpc.DaggerStub(secure).ListWorkflows(dpb.ListWorkflowsRequest()).workflows) == []
        plain = dagger_pb2_grpc.DaggerStub(channel(stack.endpoint, token=token))
        with pytest.raises(grpc.RpcError) as refused:
            plain.ListWorkflows(dpb.ListWorkflowsRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        result = donut("submit", str(FRUIT), "--wait", "--json", home=donut_home, endpoint=stack.endpoint,
                       env={"DONUT_TOKEN": token, "DONUT_TLS_CA": str(cert)})
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["status"] == "done"  # results were saved over TLS too
        files = donut("results", json.loads(result.stdout)["id"], "--json", home=donut_home,
                      endpoint=stack.endpoint, env={"DONUT_TOKEN": token, "DONUT_TLS_CA": str(cert)})
        assert len(json.loads(files.stdout)) == 4


def test_a_standalone_cellar_over_tls(stack_config: Any, certificate: tuple[Path, Path], tmp_path: Path) -> None:
    """As in a cluster: the cellar serves TLS and reaches the users service over TLS."""
    from donut.cellar.v1 import cellar_pb2 as cpb
    from donut.cellar.v1 import cellar_pb2_grpc
    from donut_cli.stack import Stack
    from donut_common.etcd_server import free_port

    cert, key = certificate
    with Stack(replace(stack_config, tls_cert=cert, tls_key=key)) as stack:
        token_file = tmp_path / "service-token"
        token_file.write_text(stack.service_token)
        port = free_port()
        cellar = subprocess.Popen(
            [sys.executable, "-m", "cellar_svc.server", "--listen", f"127.0.0.1:{port}", "--root", str(tmp_path / "r"),
             "--users-endpoint", stack.endpoint, "--service-token-file", str(token_file),
             "--tls-cert", str(cert), "--tls-key", str(key), "--tls-ca", str(cert)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            secure = channel(f"127.0.0.1:{port}", token=stack.client_token()[0], tls_ca=cert.read_bytes())
            grpc.channel_ready_future(secure).result(timeout=20)
            ref = cpb.FileRef(kind=cpb.KIND_CACHE, scope="up1", path="f")
            stored = cellar_pb2_grpc.CellarStub(secure).Put(
                iter([cpb.PutRequest(header=ref, size=2), cpb.PutRequest(data=b"hi")]), timeout=20)
            assert stored.size == 2  # the caller was verified by the users service, over TLS
            plain = cellar_pb2_grpc.CellarStub(channel(f"127.0.0.1:{port}", token=stack.client_token()[0]))
            with pytest.raises(grpc.RpcError) as refused:
                plain.Stat(ref, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            cellar.terminate()
            cellar.wait(timeout=20)
