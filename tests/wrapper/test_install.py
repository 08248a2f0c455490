"""`pip install ./streamed_job` into a fresh virtualenv gives a working `streamed-job`:
the package carries the generated stubs and its dependencies resolve."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from streamed_job.spec import SPEC_ENV
from tests.wrapper.conftest import ROOT, LogServer, wrapper_spec

STDOUT = 1


@pytest.mark.slow
def test_pip_install_gives_a_working_streamed_job_command(tmp_path: Path, log_server: LogServer) -> None:
    source = tmp_path / "streamed_job"
    # a copy (links resolved, as in an sdist), so that building leaves the work tree alone
    shutil.copytree(ROOT / "streamed_job", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    command = str(venv / "bin" / "streamed-job")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DONUT_", "STREAMED_JOB_", "PYTHON", "VIRTUAL_ENV"))}

    shown = subprocess.run([command, "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: streamed-job") and SPEC_ENV in shown.stdout

    spec = wrapper_spec(log_server, tmp_path / "workflow", "/bin/echo", ["installed"])
    ran = subprocess.run([command], env={**env, SPEC_ENV: spec.to_json()}, capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert log_server.lines(spec.workflow_id, "job") == [(STDOUT, b"installed")]
    assert log_server.scheduler.outcomes[(spec.workflow_id, "job", 1)].exit_code == 0
