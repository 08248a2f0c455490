"""What a dagger pod runs: `donut up --replica-id <pod name>` over an external etcd and a
data dir every pod shares. Such replicas start side by side on that data dir (each under
its own id, with the same keys), where two plain stacks cannot, and each writes its
admin's client config as a lone `donut up` does."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import donut


def test_replicas_share_a_data_dir_where_two_stacks_could_not(stack_config: Any, tmp_path: Path) -> None:
    from donut_cli.stack import Stack

    shared = tmp_path / "shared"
    replicas = [Stack(dataclasses.replace(stack_config, data_dir=shared, replica_id=name)) for name in ("a", "b")]
    try:
        for replica in replicas:
            replica.start()
        assert [r.scheduler.scheduler_id for r in replicas if r.scheduler] == ["a", "b"]
        assert replicas[0].store is not None
        assert {r.id for r in replicas[0].store.replicas()} == {"a", "b"}, "both announced, each under its own id"
        assert replicas[0].session_key == replicas[1].session_key
        assert replicas[0].url_signing_key == replicas[1].url_signing_key
    finally:
        for replica in replicas:
            replica.stop()
    alone = tmp_path / "alone"
    first = Stack(dataclasses.replace(stack_config, data_dir=alone)).start()
    try:
        with pytest.raises(RuntimeError, match=f"another stack is using {alone}"):
            Stack(dataclasses.replace(stack_config, data_dir=alone)).start()
    finally:
        first.stop()


@pytest.mark.parametrize("name", ["session-key", "url-signing-key"])
def test_replicas_starting_together_keep_the_key_written_first(name: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Pods of a new Deployment start at once on an empty data dir: whichever writes a key
    first, every replica must sign with that one (else a session or a link made by one is
    refused by the others)."""
    import secrets

    from donut_cli import stack

    kept = {"session-key": stack._session_key, "url-signing-key": stack._url_signing_key}[name]
    theirs = b"t" * 64
    made = {"session-key": "token_bytes", "url-signing-key": "token_hex"}[name]
    real = getattr(secrets, made)

    def another_replica_writes_first(*args: Any) -> Any:  # between this one's look and its write
        (tmp_path / name).write_bytes(theirs)
        return real(*args)

    monkeypatch.setattr(secrets, made, another_replica_writes_first)
    assert kept(tmp_path) == theirs
    assert (tmp_path / name).read_bytes() == theirs
    assert [p.name for p in tmp_path.iterdir()] == [name], "no temporary file left"


def _up(tmp_path: Path, home: Path, *args: str) -> subprocess.Popen[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DONUT_")}, "DONUT_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "donut_cli", "up", "--data-dir", str(tmp_path / "shared"),
                             "--port", "0", "--http-port", "-1", "--metrics-port", "-1", *args],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def _client_config(up: subprocess.Popen[str], home: Path) -> dict[str, str]:
    deadline = time.monotonic() + 90
    while not (home / "client.json").exists():
        assert up.poll() is None, up.stderr.read() if up.stderr else ""
        assert time.monotonic() < deadline, "no client config written"
        time.sleep(0.05)
    config: dict[str, str] = json.loads((home / "client.json").read_text())
    return config


def test_pods_run_as_replicas_and_each_writes_its_admins_client_config(tmp_path: Path, etcd_server: Any,
                                                                        etcd_prefix: str) -> None:
    etcd = ("--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", etcd_prefix, "--lease-ttl", "5")
    pods = {name: _up(tmp_path, tmp_path / name, "--replica-id", name, *etcd) for name in ("dagger-a", "dagger-b")}
    try:
        configs = {name: _client_config(up, tmp_path / name) for name, up in pods.items()}
        for name in configs:
            listed = donut("cluster", "--json", home=tmp_path / name)
            assert listed.returncode == 0, listed.stderr
            replicas = {r["id"]: r["endpoint"] for r in json.loads(listed.stdout)["replicas"]}
            assert replicas == {n: c["endpoint"] for n, c in configs.items()}, name
    finally:
        for up in pods.values():
            up.send_signal(signal.SIGTERM)
        stderr = {name: up.communicate(timeout=60)[1] for name, up in pods.items()}
    for name, up in pods.items():
        assert up.returncode == 0, stderr[name]
        assert f"donut is up: replica {name}, grpc {configs[name]['endpoint']}" in stderr[name]


def test_a_replica_needs_an_external_etcd(tmp_path: Path) -> None:
    up = _up(tmp_path, tmp_path / "home", "--replica-id", "dagger-a")
    _, stderr = up.communicate(timeout=60)
    assert up.returncode != 0
    assert stderr.startswith("error: replica dagger-a: cannot start: ") and stderr.count("\n") == 1, stderr
    assert "etcd" in stderr and not (tmp_path / "home" / "client.json").exists()
