"""The `streamed-job` process run by hand against a real dagger gRPC server: exit codes,
what it reports, paths that dagger itself would refuse, and a dagger that is not there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamed_job.spec import SPEC_ENV
from tests.wrapper.conftest import LogServer, alive, run_wrapper, wrapper_spec

STDOUT, STDERR, SYSTEM = 1, 2, 3


def test_the_wrapper_exits_with_the_command_s_code_and_reports_it(log_server: LogServer, tmp_path: Path) -> None:
    spec = wrapper_spec(log_server, tmp_path, "/bin/sh", ["-c", "echo out; echo err >&2; exit 3"])
    started = time.time()
    done = run_wrapper(spec)

    assert done.returncode == 3, done.stderr
    lines = log_server.lines(spec.workflow_id, "job")
    assert sorted(lines[:2]) == [(STDOUT, b"out"), (STDERR, b"err")]  # the streams may interleave either way
    assert lines[2:] == [(SYSTEM, b"exited with code 3")]
    outcome = log_server.scheduler.outcomes[(spec.workflow_id, "job", 1)]
    assert (outcome.exit_code, outcome.signal, outcome.message) == (3, "", "exited with code 3")
    assert outcome.started_at is not None and outcome.finished_at is not None
    assert started <= outcome.started_at <= outcome.finished_at <= time.time()


@pytest.mark.parametrize("local, why", [
    ("../escape.txt", "../escape.txt: leads outside the workflow directory"),
    ("/etc/hostname", "/etc/hostname: must be a relative path"),
])
def test_inputs_outside_the_workflow_dir_are_refused(log_server: LogServer, tmp_path: Path,
                                                     local: str, why: str) -> None:
    """dagger refuses such definitions; the wrapper checks again, whoever wrote its spec."""
    (tmp_path / "escape.txt").write_text("secret")
    workflow_dir = tmp_path / "workflow"
    spec = wrapper_spec(log_server, workflow_dir, "/bin/cat", [local], inputs=({"local": local},))
    done = run_wrapper(spec)

    assert done.returncode == 90, done.stderr
    message = f"inputs[0] ({local}): {why}"
    assert log_server.scheduler.outcomes[(spec.workflow_id, "job", 1)].message == message
    assert log_server.texts(spec.workflow_id, "job") == [message.encode()]


def test_without_a_spec_it_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DONUT_")}
    done = subprocess.run([sys.executable, "-m", "streamed_job.main"], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert "cannot read the job spec" in done.stderr and SPEC_ENV in done.stderr


def test_with_dagger_unreachable_the_outcome_goes_to_the_termination_log(log_server: LogServer,
                                                                           tmp_path: Path) -> None:
    spec = wrapper_spec(log_server, tmp_path, "/bin/sh", ["-c", "echo lost; exit 4"])
    log_server.stop()
    termination = tmp_path / "termination.json"
    done = run_wrapper(spec, STREAMED_JOB_REPORT_DEADLINE="0.5",
                       STREAMED_JOB_TERMINATION_LOG=str(termination))

    assert done.returncode == 4
    assert "some log lines could not be delivered" in done.stderr
    record = json.loads(termination.read_text())
    assert record["reported"] is False
    assert (record["exit_code"], record["message"]) == (4, "exited with code 4")


def test_sigterm_to_the_wrapper_stops_the_command_s_whole_group(log_server: LogServer, tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = f"sleep 60 & echo $! > {pid_file}; echo ready; wait"
    spec = wrapper_spec(log_server, tmp_path, "/bin/sh", ["-c", script])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DONUT_", "STREAMED_JOB_"))}
    wrapper = subprocess.Popen([sys.executable, "-m", "streamed_job.main"], env={**env, SPEC_ENV: spec.to_json()},
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while b"ready" not in log_server.texts(spec.workflow_id, "job") and time.monotonic() < deadline:
        time.sleep(0.05)
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=20) == 128 + signal.SIGTERM

    outcome = log_server.scheduler.outcomes[(spec.workflow_id, "job", 1)]
    assert outcome.signal == "SIGTERM" and outcome.message == "terminated (SIGTERM)"
    assert not alive(int(pid_file.read_text()))
