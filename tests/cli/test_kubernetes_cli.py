"""`donut lint` and `donut status` with a definition's `kubernetes:` pod settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.cli.conftest import donut

SETTINGS = """\
kubernetes:
  resources: {requests: {cpu: 500m}}
jobs:
- {name: a, image: busybox, cmd: /bin/true, args: []}
- {name: b, image: busybox, cmd: /bin/true, args: [], kubernetes: {labels: {team: fruit}}}
neighbors: {a: [b]}
"""
PLAIN = "jobs:\n- {name: a, image: busybox, cmd: /bin/true, args: []}\n"
NOTE = "note: 2 jobs have kubernetes: settings, which only the Kubernetes executor uses"


def test_lint_accepts_settings_and_names_those_refused(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(SETTINGS)
    bad.write_text(SETTINGS.replace("cpu: 500m", "cpu: lots").replace("team: fruit", "donut/job: b"))
    result = donut("lint", str(good), str(bad), home=tmp_path / "home", endpoint="127.0.0.1:1")
    assert result.returncode == 2
    assert result.stdout == f"{good}: ok\n"
    assert result.stderr.splitlines() == [
        f"error: {bad}: kubernetes.resources.requests[cpu]: must be a Kubernetes quantity such as 500m, 2, 1.5 "
        "or 4Gi, not 'lots'",
        f"error: {bad}: jobs[1].kubernetes.labels[donut/job]: keys under donut/ are donut's own",
    ]


def test_status_notes_once_that_only_kubernetes_uses_the_settings(cli: Any, tmp_path: Path) -> None:
    definition = tmp_path / "settings.yaml"
    definition.write_text(SETTINGS)
    submitted = cli("submit", str(definition), "--wait", "--json")
    assert submitted.returncode == 0, submitted.stderr
    workflow_id = json.loads(submitted.stdout)["id"]
    for extra in ((), ("--json",), ("--tree",)):
        status = cli("status", workflow_id, *extra)
        assert status.returncode == 0, status.stderr
        assert status.stderr.splitlines() == [NOTE]
    assert json.loads(cli("status", workflow_id, "--json").stdout)["status"] == "done"

    plain = tmp_path / "plain.yaml"
    plain.write_text(PLAIN)
    other = json.loads(cli("submit", str(plain), "--wait", "--json").stdout)["id"]
    assert cli("status", other).stderr == ""
