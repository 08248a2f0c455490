"""`donut lint`: definitions checked offline (and, with --server, by the server too)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.cli.conftest import FRUIT, donut


def test_lint_names_every_problem_by_file_and_place_offline(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs:\n- name: Apple\n  image: x\n  cmd: y\n  args: [1]\n")
    missing = tmp_path / "missing.yaml"
    # no stack, no client config: the endpoint leads nowhere
    result = donut("lint", str(FRUIT), str(bad), str(missing), home=tmp_path / "home", endpoint="127.0.0.1:1")
    assert result.returncode == 2, result.stderr
    assert result.stdout == f"{FRUIT}: ok\n"
    assert f"error: {bad}: jobs[0].name: must match" in result.stderr
    assert f"error: {bad}: jobs[0].args[0]: must be a string, not 1" in result.stderr
    assert f"error: {missing}: cannot read: No such file or directory" in result.stderr
    assert all(line.startswith("error: ") for line in result.stderr.splitlines())
    good = donut("lint", str(FRUIT), home=tmp_path / "home", endpoint="127.0.0.1:1")
    assert (good.returncode, good.stdout, good.stderr) == (0, f"{FRUIT}: ok\n", "")


def test_lint_reads_standard_input(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "donut_cli", "lint", "-"], input="jobs: 5\n",
                            capture_output=True, text=True, env={"DONUT_HOME": str(tmp_path), "PATH": "/usr/bin"})
    assert result.returncode == 2
    assert result.stderr.startswith("error: <stdin>: jobs: ")


def test_lint_server_asks_the_server_too(cli: Any, tmp_path: Path) -> None:
    result = cli("lint", "--server", str(FRUIT))
    assert (result.returncode, result.stdout) == (0, f"{FRUIT}: ok\n"), result.stderr
    down = donut("lint", "--server", str(FRUIT), home=tmp_path / "home", endpoint="127.0.0.1:1")
    assert down.returncode == 1 and down.stderr.startswith("error: cannot reach donut at 127.0.0.1:1")


def test_lint_server_checks_cache_inputs_against_what_would_be_uploaded(cli: Any, tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text("jobs:\n- name: a\n  image: x\n  cmd: cat\n  args: [data.csv]\n"
                    "  inputs:\n  - {cache: data.csv, local: data.csv}\n")
    missing = cli("lint", "--server", str(flow))
    assert missing.returncode == 2 and "data.csv" in missing.stderr, missing.stderr
    (tmp_path / "data.csv").write_text("1,2\n")
    found = cli("lint", "--server", "--upload", str(tmp_path / "data.csv"), str(flow))
    assert (found.returncode, found.stdout) == (0, f"{flow}: ok\n"), found.stderr
    alone = cli("lint", "--upload", str(tmp_path / "data.csv"), str(flow))
    assert alone.returncode == 2 and alone.stderr.startswith("error: --upload: goes with --server")
