"""Fixtures for the job wrapper: a real dagger gRPC server holding logs in a real LogStore
(for the shipper and for wrapper processes run by hand), a whole stack whose jobs run
through `streamed-job` processes, and a local HTTP server for `origin` inputs."""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from dagger_svc.core.records import Outcome
from dagger_svc.logs import LogStore
from dagger_svc.service import DaggerConfig, DaggerService
from dagger_svc.servicer import registration
from donut.dagger.v1 import dagger_pb2 as pb
from donut_common.auth import AuthInterceptor, Principal
from donut_common.config import ServerLimits
from donut_common.errors import Unauthenticated
from donut_common.rpc import DEFAULT_LIMITS, create_server
from streamed_job.spec import SPEC_ENV, RunSpec
from tests.dagger.conftest import Driver

ROOT = Path(__file__).resolve().parents[2]


class RecordingScheduler:
    """Stands in for the scheduler behind DaggerService.report: it runs every workflow
    and keeps each outcome reported to it."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str, int], Outcome] = {}

    def report(self, workflow_id: str, job: str, attempt: int, outcome: Outcome) -> None:
        self.outcomes[(workflow_id, job, attempt)] = outcome


class HoldableService(DaggerService):
    """DaggerService whose log ingest can be held, so batches pile up in flight."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.storing = threading.Event()
        self.storing.set()

    def push_logs(self, *args: Any) -> int:
        self.storing.wait(timeout=30)
        return super().push_logs(*args)


class LogServer:
    """dagger's gRPC surface for jobs (PushLogs, ReportJobStatus) behind the real auth
    interceptor, over a real LogStore; it can stop and start again on the same port."""

    def __init__(self, root: Path, limits: ServerLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.logs = LogStore(root / "logs")
        self.scheduler = RecordingScheduler()
        self.service = HoldableService(None, self.logs, self.scheduler, DaggerConfig(root / "workflows"))
        self._tokens: dict[str, Principal] = {}
        self._server: grpc.Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def grant(self, workflow_id: str, job: str, attempt: int = 1) -> str:
        """A job token for one attempt of a job, as users_svc would mint it."""
        token = f"dd_test_{uuid.uuid4().hex}"
        self._tokens[token] = Principal(user_id="owner", login="owner",
                                        scopes=(f"job:{workflow_id}/{job}/{attempt}",))
        return token

    def _verify(self, token: str) -> Principal:
        if token not in self._tokens:
            raise Unauthenticated("unknown token")
        return self._tokens[token]

    def start(self) -> LogServer:
        self._server, self.port = create_server(f"127.0.0.1:{self.port}", [registration(self.service)],
                                                limits=self.limits, interceptors=[AuthInterceptor(self._verify)])
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0).wait()
            self._server = None

    def lines(self, workflow_id: str, job: str, attempt: int = 1) -> list[tuple[int, bytes]]:
        return [line for _, batch in self.logs.read(workflow_id, job, attempt) for line in batch]

    def texts(self, workflow_id: str, job: str, attempt: int = 1, stream: int | None = None) -> list[bytes]:
        return [t for s, t in self.lines(workflow_id, job, attempt) if stream is None or s == stream]


@pytest.fixture
def log_server(tmp_path: Path) -> Iterator[LogServer]:
    server = LogServer(tmp_path).start()
    yield server
    server.stop()
    server.logs.close()


def wrapper_spec(server: LogServer, workflow_dir: Path, cmd: str, args: list[str], **fields: Any) -> RunSpec:
    """A spec for a wrapper run by hand against `server`, with its job token."""
    workflow_id = str(uuid.uuid4())
    return RunSpec(workflow_id=workflow_id, job="job", attempt=1, cmd=cmd, args=tuple(args),
                   workflow_dir=str(workflow_dir), dagger_endpoint=server.endpoint,
                   token=server.grant(workflow_id, "job"), **fields)


def run_wrapper(spec: RunSpec, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs `python -m streamed_job.main` on the spec, to its end."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("DONUT_", "STREAMED_JOB_"))}
    environ.update({SPEC_ENV: spec.to_json(), **env})
    return subprocess.run([sys.executable, "-m", "streamed_job.main"], env=environ, capture_output=True,
                          text=True, timeout=timeout)


# ---- a whole stack whose jobs run through the wrapper ------------------------------------

class WrapperDriver(Driver):
    def log(self, workflow_id: str, job: str, attempt: int = 0) -> list[tuple[int, bytes]]:
        request = pb.TailLogsRequest(workflow_id=workflow_id, job=job, attempt=attempt)
        return [(line.stream, line.text) for chunk in self.stub.TailLogs(request, timeout=60) for line in chunk.lines]

    def texts(self, workflow_id: str, job: str, stream: int | None = None) -> list[bytes]:
        return [t for s, t in self.log(workflow_id, job) if stream is None or s == stream]

    def run(self, job: dict[str, Any], timeout: float = 60) -> tuple[str, pb.Job]:
        """Submits a one-job workflow and waits for its end: (workflow id, the job)."""
        workflow_id = self.submit([job])
        self.wait(workflow_id, timeout=timeout)
        return workflow_id, self.jobs(workflow_id)[job["name"]]


@pytest.fixture
def wrapper_stack(stack_config: Any) -> Iterator[Any]:
    from donut_cli.stack import Stack

    stack = Stack(dataclasses.replace(stack_config, executor="wrapper")).start()
    try:
        stack.admin_token = stack.client_token()[0]
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def wdriver(wrapper_stack: Any) -> Iterator[WrapperDriver]:
    d = WrapperDriver(wrapper_stack)
    yield d
    d.close()


# ---- files served over HTTP -------------------------------------------------------------

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_files(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, directory it serves) of an HTTP server on 127.0.0.1."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Quiet(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ")[-1][:1] != b"Z"
    except FileNotFoundError:
        return False


def sh(script: str, name: str = "job", **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "python", "cmd": "/bin/sh", "args": ["-c", script], **extra}


def py(code: str, name: str = "job", **extra: Any) -> dict[str, Any]:
    """A job running Python code (the test's interpreter)."""
    return {"name": name, "image": "python", "cmd": sys.executable, "args": ["-c", code], **extra}


def dump(job: pb.Job) -> str:
    return json.dumps({"status": job.status, "exit_code": job.exit_code, "message": job.message,
                       "signal": [a.signal for a in job.attempts]})
