"""The WrapperExecutor on its own, its wrappers talking to a real dagger gRPC server:
who reports an attempt's end, tokens, and what `lost` finds."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagger_svc.core.definition import JobSpec
from dagger_svc.core.records import Outcome
from dagger_svc.executors.base import Launch
from dagger_svc.executors.wrapper import WrapperExecutor
from tests.wrapper.conftest import LogServer, alive, closed_port


class ServerTokens:
    """Job tokens as JobTokens mints them, for the test server's own auth."""

    def __init__(self, server: LogServer) -> None:
        self.server = server
        self.minted: list[str] = []
        self.revoked: list[str] = []

    def mint(self, owner: str, workflow_id: str, job: str, attempt: int, upload_id: str = "",
             timeout: float | None = None) -> tuple[str, str]:
        self.minted.append(f"{workflow_id}/{job}")
        return f"id-{len(self.minted)}", self.server.grant(workflow_id, job, attempt)

    def revoke(self, token_id: str) -> None:
        self.revoked.append(token_id)


class Reports:
    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str, int], Outcome] = {}

    def __call__(self, workflow_id: str, job: str, attempt: int, outcome: Outcome) -> None:
        self.outcomes[(workflow_id, job, attempt)] = outcome


def until(condition, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def launch(tmp_path: Path, script: str) -> Launch:
    spec = JobSpec(name="job", image="python", cmd="/bin/sh", args=("-c", script))
    return Launch(workflow_id=str(uuid.uuid4()), job="job", attempt=1, spec=spec, workflow_dir=str(tmp_path),
                  owner="owner")


@pytest.fixture
def setup(log_server: LogServer) -> Iterator[tuple[WrapperExecutor, Reports, ServerTokens]]:
    reports, tokens = Reports(), ServerTokens(log_server)
    executor = WrapperExecutor(log_server.logs, log_server.endpoint, kill_grace=1.0,
                               tokens=tokens)  # type: ignore[arg-type]
    executor.start(reports)
    yield executor, reports, tokens
    executor.close()


def test_a_normal_end_is_reported_by_the_wrapper_not_the_executor(
        setup: tuple[WrapperExecutor, Reports, ServerTokens], log_server: LogServer, tmp_path: Path) -> None:
    executor, reports, tokens = setup
    attempt = launch(tmp_path, "echo hello; exit 6")
    executor.launch(attempt)
    executor.launch(attempt)  # twice: still one run
    key = (attempt.workflow_id, "job", 1)
    until(lambda: key in log_server.scheduler.outcomes and executor.running == 0)

    assert log_server.scheduler.outcomes[key].exit_code == 6
    assert log_server.texts(*key) == [b"hello", b"exited with code 6"]
    assert reports.outcomes == {}
    assert tokens.minted == [f"{attempt.workflow_id}/job"] and tokens.revoked == ["id-1"]


def test_an_end_the_wrapper_could_not_report_is_reported_by_the_executor(
        log_server: LogServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMED_JOB_REPORT_DEADLINE", "0.3")
    reports = Reports()
    executor = WrapperExecutor(log_server.logs, f"127.0.0.1:{closed_port()}", kill_grace=1.0)
    executor.start(reports)
    try:
        attempt = launch(tmp_path, "exit 5")
        executor.launch(attempt)
        key = (attempt.workflow_id, "job", 1)
        until(lambda: key in reports.outcomes)
    finally:
        executor.close()
    outcome = reports.outcomes[key]
    assert (outcome.exit_code, outcome.signal, outcome.message) == (5, "", "exited with code 5")
    assert outcome.started_at is not None and outcome.finished_at is not None


def test_lost_means_no_live_wrapper_and_kills_any_leftover(
        setup: tuple[WrapperExecutor, Reports, ServerTokens], log_server: LogServer, tmp_path: Path) -> None:
    executor, reports, _ = setup
    running = launch(tmp_path, "echo up; sleep 60")
    executor.launch(running)
    until(lambda: b"up" in log_server.texts(running.workflow_id, "job"))
    assert executor.lost(running.workflow_id, "job", 1) is False

    key = f"{uuid.uuid4()}/job/1"  # as left by an executor that is gone
    leftover = subprocess.Popen(["sleep", "60"], env={**os.environ, "DONUT_JOB_KEY": key}, start_new_session=True)
    environ = Path(f"/proc/{leftover.pid}/environ")
    until(lambda: f"DONUT_JOB_KEY={key}".encode() in environ.read_bytes())  # exec'd
    try:
        assert executor.lost(*key.split("/")[:2], 1) is True
        assert leftover.wait(timeout=5) == -9
    finally:
        leftover.kill()

    executor.kill(running.workflow_id, "job", 1)
    until(lambda: (running.workflow_id, "job", 1) in log_server.scheduler.outcomes)
    assert log_server.scheduler.outcomes[(running.workflow_id, "job", 1)].signal == "SIGTERM"
    assert reports.outcomes == {}


def test_close_stops_wrappers_and_their_commands(
        setup: tuple[WrapperExecutor, Reports, ServerTokens], log_server: LogServer, tmp_path: Path) -> None:
    executor, reports, _ = setup
    pid_file = tmp_path / "command.pid"
    attempt = launch(tmp_path, f"echo $$ > {pid_file}; echo up; sleep 60")
    executor.launch(attempt)
    until(lambda: b"up" in log_server.texts(attempt.workflow_id, "job"))
    executor.close()
    until(lambda: not alive(int(pid_file.read_text())), timeout=5)
    assert reports.outcomes == {}  # a restarted scheduler finds the attempt lost
