"""Fixtures shared by every test topic: a real etcd server for the session, a fresh key
prefix per test, and a whole stack on loopback ports."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from donut_common.etcd_server import EtcdServer


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    # plain http, so that a test names it by its endpoint alone; the embedded etcd of a
    # stack, and the tests that start their own, speak TLS (tests/auth/test_etcd_access.py)
    with EtcdServer(tmp_path_factory.mktemp("etcd"), fsync=False, tls=False) as server:
        yield server


@pytest.fixture
def etcd_prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def etcd_client(etcd_server: EtcdServer) -> Iterator[Any]:
    from donut_common.etcd import Etcd

    client = Etcd.connect(etcd_server.endpoint)
    yield client
    client.close()


@pytest.fixture
def store(etcd_client: Any, etcd_prefix: str) -> Iterator[Any]:
    from dagger_svc.keys import Keys
    from dagger_svc.store import Store

    yield Store(etcd_client, Keys(etcd_prefix))
    etcd_client.delete_prefix(etcd_prefix)


@pytest.fixture
def stack_config(tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str) -> object:
    from donut_cli.stack import StackConfig

    return StackConfig(data_dir=tmp_path / "stack", port=0, http_port=-1, etcd_endpoints=etcd_server.endpoint,
                       etcd_prefix=etcd_prefix, kill_grace=1.0, lease_ttl=3)


class MovableClock:
    """The real clocks plus an offset that a test moves forward instead of sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock()


@pytest.fixture
def stack(stack_config: object, clock: MovableClock) -> Iterator[object]:
    from donut_cli.stack import Stack
    from donut_common.clock import Clock

    with Stack(stack_config, clock=Clock(time=clock.time, monotonic=clock.monotonic)) as running:  # type: ignore[arg-type]
        running.admin_token = running.client_token()[0]
        yield running


@pytest.fixture
def donut_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DONUT_HOME", str(home))
    for name in ("DONUT_ENDPOINT", "DONUT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return home


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
