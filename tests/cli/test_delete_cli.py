"""`donut delete` as a user runs it: one line per workflow deleted, one per refusal, the
other ids still handled, exit 1 when any failed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def submit(cli: Any, tmp_path: Path) -> Any:
    def run(script: str, wait: bool = True) -> str:
        definition = tmp_path / "one.yaml"
        definition.write_text(f"jobs:\n- name: one\n  image: x\n  cmd: /bin/sh\n  args: ['-c', '{script}']\n")
        result = cli("submit", str(definition), "--json", *(["--wait"] if wait else []))
        assert result.returncode == 0, result.stderr
        return str(json.loads(result.stdout)["id"])

    return run


def listed(cli: Any) -> list[str]:
    return [w["id"] for w in json.loads(cli("list", "--json").stdout)]


def test_delete_prints_a_line_per_workflow_and_leaves_the_others(cli: Any, submit: Any, stack: Any) -> None:
    first, second, third = submit("true"), submit("true"), submit("true")
    result = cli("delete", first, second[:8])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"deleted {first}", f"deleted {second}"]
    assert listed(cli) == [third]
    assert sorted(p.name for p in (Path(stack.config.data_dir) / "workflows").iterdir()) == [third]


def test_delete_with_output_json_and_name(cli: Any, submit: Any) -> None:
    first, second = submit("true"), submit("true")
    result = cli("delete", first, "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"id": first}]
    named = cli("delete", "@latest", "-o", "name")
    assert (named.returncode, named.stdout) == (0, f"{second}\n")
    assert listed(cli) == []


def test_a_running_workflow_is_refused_the_others_deleted_and_force_cancels_it(cli: Any, submit: Any) -> None:
    ended = submit("true")
    running = submit("sleep 600", wait=False)
    result = cli("delete", running, ended)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: workflow {running} is still queued or running: --force cancels it first, then deletes it"]
    assert result.stdout.splitlines() == [f"deleted {ended}"]
    assert listed(cli) == [running]

    forced = cli("delete", "--force", running)
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.splitlines() == [f"deleted {running}"]
    assert listed(cli) == []


def test_unknown_ids_fail_in_one_line_each(cli: Any, submit: Any) -> None:
    kept = submit("true")
    unknown = "12345678-1234-4234-8234-123456789abc"
    result = cli("delete", unknown, "abcdef12", "not/an/id")
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        f"error: no workflow {unknown} (not_found)",
        "error: no workflow abcdef12... (not_found)",
        "error: WORKFLOW_ID: not a workflow id, the start of one, or @latest: 'not/an/id'",
    ]
    assert result.stdout == ""
    assert listed(cli) == [kept]


def test_delete_needs_an_id(cli: Any) -> None:
    result = cli("delete")
    assert result.returncode == 2
    assert "Missing argument" in result.stderr
