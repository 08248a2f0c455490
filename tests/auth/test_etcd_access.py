"""Only the stack reaches its etcd: another OS user is refused by the embedded one, and a
client without the stack's certificate or etcd credentials gets `etcd unavailable`."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from donut.dagger.v1 import dagger_pb2 as pb
from donut_cli.stack import Stack
from donut_common.errors import Unavailable
from donut_common.etcd import Etcd, EtcdAccess
from donut_common.etcd_certs import ensure_certs
from donut_common.etcd_server import EtcdServer, etcd_binary
from tests.cli.conftest import FRUIT, donut
from tests.dagger.conftest import Driver, sh

# Runs as another OS user, with the system's Python (the test's venv may be out of its
# reach) and the standard library only: what it could read, and from where.
INTRUDER = r"""
import base64, json, ssl, sys, urllib.request
files, client_port, peer_port = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
everything = json.dumps({"key": "AA==", "range_end": "AA=="}).encode()  # every key from "\0" on
unverified = ssl.create_default_context()
unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
found = {"files": [], "keys": [], "peer": []}
for path in files:
    try:
        open(path, "rb").read()
        found["files"].append(path)
    except OSError:
        pass
for scheme in ("http", "https"):
    try:
        request = urllib.request.Request(f"{scheme}://127.0.0.1:{client_port}/v3/kv/range", data=everything)
        with urllib.request.urlopen(request, timeout=5, context=unverified if scheme == "https" else None) as r:
            found["keys"] += [base64.b64decode(kv["key"]).decode() for kv in json.load(r).get("kvs", [])]
    except Exception:
        pass
    try:
        url = f"{scheme}://127.0.0.1:{peer_port}/members"
        with urllib.request.urlopen(url, timeout=5, context=unverified if scheme == "https" else None) as r:
            found["peer"].append(r.read().decode())
    except Exception:
        pass
print(json.dumps(found))
"""


def test_another_os_user_cannot_reach_the_embedded_etcd(stack_config: Any) -> None:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv (util-linux), to run the intruder as the OS user `nobody`")
    nobody = pwd.getpwnam("nobody")
    config = dataclasses.replace(stack_config, etcd_endpoints="", etcd_fsync=False)
    with Stack(config) as stack:
        stack.client_token()  # the first admin user and its token are in etcd now
        assert stack.etcd is not None and stack.store is not None
        secrets = sorted(str(p) for p in config.data_dir.rglob("*") if p.is_file())
        intruder = subprocess.run(  # setpriv: a fork that changes user itself may crash with gRPC threads about
            ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
             "/usr/bin/python3", "-I", "-c", INTRUDER, json.dumps(secrets), str(stack.etcd.client_port),
             str(stack.etcd.peer_port)],
            cwd="/", env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60, check=True)
        found = json.loads(intruder.stdout)
        assert found == {"files": [], "keys": [], "peer": []}
        assert any(p.endswith(".key") for p in secrets)  # the etcd client's key is in the data dir
        assert stack.users is not None and stack.users.ensure_user("admin", admin=True)  # the stack still can


def test_the_stack_runs_on_its_locked_etcd_across_a_restart(stack_config: Any, tmp_path: Path) -> None:
    config = dataclasses.replace(stack_config, etcd_endpoints="", etcd_fsync=False)
    with Stack(config) as stack:
        token = stack.client_token()[0]
    tls = sorted((config.data_dir / "etcd-tls").iterdir())
    assert tls and all(p.stat().st_mode & 0o077 == 0 for p in tls)
    assert (config.data_dir / "etcd-tls").stat().st_mode & 0o077 == 0
    before = {p.name: p.read_bytes() for p in tls}
    with Stack(config) as stack:  # the same certificates, the same data
        assert stack.client_token(token) == (token, False)
    assert {p.name: p.read_bytes() for p in sorted((config.data_dir / "etcd-tls").iterdir())} == before


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    with EtcdServer(tmp_path / "etcd", fsync=False) as server:
        yield server


def etcdctl(etcd: EtcdServer, *args: str) -> None:
    access = etcd.access
    subprocess.run([str(Path(etcd_binary()).with_name("etcdctl")), f"--endpoints=https://{etcd.endpoint}",
                    f"--cacert={access.ca}", f"--cert={access.cert}", f"--key={access.key}", *args],
                   check=True, capture_output=True, timeout=30)


def with_users(etcd: EtcdServer, password: str) -> EtcdAccess:
    """Turns etcd's own auth on; returns what the user `root` shows."""
    etcdctl(etcd, "user", "add", f"root:{password}")
    etcdctl(etcd, "user", "grant-role", "root", "root")
    etcdctl(etcd, "auth", "enable")
    return dataclasses.replace(etcd.access, user="root", password=password)


def test_a_client_without_the_stacks_certificate_gets_etcd_unavailable(tls_etcd: EtcdServer, tmp_path: Path) -> None:
    access = tls_etcd.access
    other = ensure_certs(tmp_path / "other", "127.0.0.1")  # a CA of the same make, not etcd's
    refused = {
        "plain http": EtcdAccess(),
        "no client certificate": EtcdAccess(ca=access.ca),
        "a certificate from another CA": EtcdAccess(access.ca, other.client_cert, other.client_key),
        "another CA trusted": EtcdAccess(other.ca, access.cert, access.key),
    }
    for name, wrong in refused.items():
        with pytest.raises(Unavailable, match=r"cannot reach etcd at .*: etcd unavailable \(connecting: "):
            Etcd.connect(tls_etcd.endpoint, timeout=2, access=wrong)
            raise AssertionError(f"{name}: let in")
    with pytest.raises(ValueError, match="etcd client key: cannot read"):
        Etcd.connect(tls_etcd.endpoint, access=dataclasses.replace(access, key=tmp_path / "missing.key"))
    client = Etcd.connect(f"https://{tls_etcd.endpoint}", access=access)
    client.put("/k", "v")
    assert client.get("/k") is not None
    client.close()


def test_an_etcd_user_gets_in_and_logs_in_again_after_etcd_restarts(tls_etcd: EtcdServer) -> None:
    access = with_users(tls_etcd, "s3cret")
    with pytest.raises(Unavailable, match="invalid user ID or password"):
        Etcd.connect(tls_etcd.endpoint, timeout=2, access=dataclasses.replace(access, password="wrong"))
    anonymous = Etcd.connect(tls_etcd.endpoint, timeout=2, access=tls_etcd.access)
    with pytest.raises(Unavailable, match="etcd unavailable .*permission denied"):
        anonymous.get("/k")
    anonymous.close()
    client = Etcd.connect(tls_etcd.endpoint, timeout=2, access=access)
    seen: list[str] = []
    client.watch_prefix("/w/", lambda key, value: seen.append(key))
    client.put("/w/1", "v")
    tls_etcd.stop()  # etcd forgets the tokens it gave out
    tls_etcd.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            client.put("/w/2", "v")
            break
        except Unavailable:
            assert time.monotonic() < deadline, "the client never got back in"
            time.sleep(0.2)
    while seen != ["/w/1", "/w/2"]:
        assert time.monotonic() < deadline, f"the watch saw {seen}"
        time.sleep(0.1)
    client.close()


def test_a_stack_on_an_external_etcd_with_tls_and_a_user(tls_etcd: EtcdServer, stack_config: Any) -> None:
    config = dataclasses.replace(stack_config, etcd_endpoints=tls_etcd.endpoint,
                                 etcd_access=with_users(tls_etcd, "s3cret"))
    with Stack(config) as stack:
        stack.admin_token = stack.client_token()[0]
        driver = Driver(stack)
        assert driver.wait(driver.submit([sh("true", "a")])).status == pb.WORKFLOW_STATUS_DONE
        driver.close()
    with pytest.raises(Unavailable):
        Stack(dataclasses.replace(config, etcd_access=tls_etcd.access)).start()  # no user: no way in


def test_up_takes_the_external_etcds_tls_files_and_user(tls_etcd: EtcdServer, tmp_path: Path,
                                                        etcd_prefix: str) -> None:
    access = with_users(tls_etcd, "s3cret")
    home = tmp_path / "home"
    external = ["--etcd-endpoints", tls_etcd.endpoint, "--etcd-prefix", etcd_prefix]
    for args, problem in (
            (["--etcd-ca", str(access.ca)], "are for an external etcd"),
            ([*external, "--etcd-cert", str(access.cert)], "--etcd-cert and --etcd-key go together"),
            ([*external, "--etcd-user", "root"], "--etcd-user and DONUT_ETCD_PASSWORD"),
    ):
        refused = donut("up", "--data-dir", str(tmp_path / "d"), "--port", "0", "--http-port", "-1", *args,
                        home=home, env={"DONUT_ETCD_PASSWORD": ""})
        assert refused.returncode == 2 and problem in refused.stderr, refused.stderr
    env = {**os.environ, "DONUT_HOME": str(home), "DONUT_ETCD_PASSWORD": "s3cret", "DONUT_UP_ETCD_USER": "root"}
    env.pop("DONUT_TOKEN", None)
    up = subprocess.Popen([sys.executable, "-m", "donut_cli", "up", "--data-dir", str(tmp_path / "d"), "--port", "0",
                           "--http-port", "-1", *external, "--etcd-ca", str(access.ca),
                           "--etcd-cert", str(access.cert), "--etcd-key", str(access.key)],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not (home / "client.json").exists():
            assert time.time() < deadline and up.poll() is None, up.stderr.read() if up.stderr else ""
            time.sleep(0.05)
        result = donut("submit", str(FRUIT), "--wait", home=home)
        assert result.returncode == 0, result.stderr
        assert "s3cret" not in " ".join(up.args)  # never on the command line
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(30)
