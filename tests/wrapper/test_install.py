"""`pip install ./streamed_job` into a fresh virtualenv gives a working `streamed-job`:
the package carries the generated stubs and its dependencies resolve, on the stack's
Python and on the oldest one a job image may have (3.9)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from streamed_job.spec import SPEC_ENV
from tests.wrapper.conftest import ROOT, LogServer, wrapper_spec

STDOUT = 1


def python_3_9() -> str | None:
    """A working Python 3.9: on PATH, or one that pyenv installed."""
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which("python3.9"), *sorted(glob.glob(f"{pyenv_root}/versions/3.9*/bin/python3.9"))]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "import sys, venv; assert sys.version_info[:2] == (3, 9)"],
                          capture_output=True).returncode == 0:
            return candidate
    return None


@pytest.mark.slow
@pytest.mark.parametrize("python", ["python3", "python3.9"])
def test_pip_install_gives_a_working_streamed_job_command(tmp_path: Path, log_server: LogServer, python: str) -> None:
    interpreter = python_3_9() if python == "python3.9" else python
    if interpreter is None:
        pytest.skip("no Python 3.9 on this machine")
    source = tmp_path / "streamed_job"
    # a copy (links resolved, as in an sdist), so that building leaves the work tree alone
    shutil.copytree(ROOT / "streamed_job", source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([interpreter, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    command = str(venv / "bin" / "streamed-job")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DONUT_", "STREAMED_JOB_", "PYTHON", "VIRTUAL_ENV", "PYENV"))}

    shown = subprocess.run([command, "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: streamed-job") and SPEC_ENV in shown.stdout

    spec = wrapper_spec(log_server, tmp_path / "workflow", "/bin/echo", ["installed"])
    ran = subprocess.run([command], env={**env, SPEC_ENV: spec.to_json()}, capture_output=True, text=True,
                         timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert log_server.lines(spec.workflow_id, "job") == [(STDOUT, b"installed")]
    assert log_server.scheduler.outcomes[(spec.workflow_id, "job", 1)].exit_code == 0
    version = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout
    assert version.strip() == ("(3, 9)" if python == "python3.9" else version.strip())
