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


# -- S3-speaking servers ------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
S3RVER = REPO / ".node" / "node_modules" / ".bin" / "s3rver"


class MotoServer:
    """moto's S3 on 127.0.0.1 in a thread; `stop` and `start` again keep its port (and data)."""

    def __init__(self) -> None:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # its request log
        self.port = 0
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]

    def stop(self) -> None:
        self.server.stop()
        assert self.server._server is not None
        self.server._server.server_close()  # stop() leaves the socket listening: connections would hang

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _fresh_buckets(endpoint: str, access_key: str, secret_key: str) -> Any:
    """A factory of settings, each naming a bucket no test has used (made by S3Storage.connect)."""
    from cellar_svc.s3 import S3Settings

    def make(**changes: Any) -> S3Settings:
        fields = {"endpoint": endpoint, "bucket": f"test-{uuid.uuid4().hex[:16]}", "access_key": access_key,
                  "secret_key": secret_key}
        return S3Settings(**(fields | changes))

    return make


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def moto_s3(moto_server: MotoServer) -> Any:
    """Settings (keyword arguments change them) of a fresh bucket on the session's moto server."""
    return _fresh_buckets(moto_server.endpoint, "testing", "testing")


@pytest.fixture(scope="session")
def s3rver_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import socket
    import subprocess

    if not S3RVER.exists():
        pytest.fail(f"s3rver is not installed ({S3RVER} is missing): run `make test` (it installs it)", pytrace=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    directory = tmp_path_factory.mktemp("s3rver")
    with open(directory / "s3rver.log", "wb") as log:
        process = subprocess.Popen([str(S3RVER), "-d", str(directory / "data"), "-a", "127.0.0.1", "-p", str(port),
                                    "--silent"], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"s3rver did not start: {(directory / 's3rver.log').read_text()}")
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def s3rver(s3rver_endpoint: str) -> Any:
    """Settings (keyword arguments change them) of a fresh bucket on the session's s3rver,
    which, unlike moto, checks credentials and presigned URLs' expiry."""
    return _fresh_buckets(s3rver_endpoint, "S3RVER", "S3RVER")
