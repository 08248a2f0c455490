"""Submitting from stdin, dry runs, labels, clones and chosen retries, as users run them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.cli.conftest import FRUIT

CHAIN = json.dumps({"jobs": [{"name": n, "image": "x", "cmd": "/bin/sh", "args": ["-c", script]}
                             for n, script in (("a", "true"), ("b", "test -f go"), ("c", "true"), ("d", "true"))],
                    "neighbors": {"a": ["b"], "b": ["c"]}})
"""a -> b -> c, and a lone d; b fails until a file `go` is in the workflow directory."""


def _listed(cli: Any, *args: str) -> list[str]:
    result = cli("list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return [w["id"] for w in json.loads(result.stdout)]


def _attempts(cli: Any, workflow_id: str) -> dict[str, tuple[str, int]]:
    doc = json.loads(cli("status", workflow_id, "--json").stdout)
    return {j["name"]: (j["status"], j["attempt"]) for j in doc["jobs"]}


def test_submit_reads_the_definition_from_stdin(cli: Any) -> None:
    result = cli("submit", "-", "--wait", "--json", input=FRUIT.read_text())
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["name"] == "stdin" and doc["status"] == "done" and len(doc["jobs"]) == 4
    named = cli("submit", "-", "--name", "piped", input=CHAIN)
    assert named.returncode == 0, named.stderr
    assert json.loads(cli("status", named.stdout.strip(), "--json").stdout)["name"] == "piped"


def test_a_dry_run_checks_on_the_server_and_stores_nothing(cli: Any, tmp_path: Path) -> None:
    result = cli("submit", str(FRUIT), "--dry-run", "--label", "team=fruit")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "valid\n"
    bad = cli("submit", "-", "--dry-run", input='{"jobs": [{"name": "a", "image": "x", "cmd": "true", "args": 1}]}')
    assert bad.returncode == 2 and "jobs[0].args" in bad.stderr and "Traceback" not in bad.stderr
    cached = json.dumps({"jobs": [{"name": "a", "image": "x", "cmd": "cat", "args": ["in.txt"],
                                   "inputs": [{"cache": "in.txt", "local": "in.txt"}]}]})
    missing = cli("submit", "-", "--dry-run", input=cached)
    assert missing.returncode == 2 and "jobs[0].inputs[0].cache: 'in.txt' was not uploaded" in missing.stderr
    (tmp_path / "in.txt").write_text("hello\n")
    uploaded = cli("submit", "-", "--dry-run", "--upload", str(tmp_path / "in.txt"), input=cached)
    assert uploaded.returncode == 0 and uploaded.stdout == "valid\n", uploaded.stderr
    assert "uploaded" not in uploaded.stderr
    assert _listed(cli) == []


def test_labels_are_kept_shown_and_filtered_on(cli: Any) -> None:
    red = cli("submit", str(FRUIT), "--label", "team=fruit", "--label", "example.com/colour=red").stdout.strip()
    green = cli("submit", str(FRUIT), "--label", "team=fruit", "--label", "example.com/colour=green").stdout.strip()
    plain = cli("submit", str(FRUIT)).stdout.strip()
    assert json.loads(cli("status", red, "--json").stdout)["labels"] == {"team": "fruit",
                                                                        "example.com/colour": "red"}
    assert json.loads(cli("status", plain, "--json").stdout)["labels"] == {}
    assert _listed(cli, "--label", "team=fruit") == [green, red]
    assert _listed(cli, "--label", "team=fruit", "--label", "example.com/colour=red") == [red]
    assert _listed(cli, "--label", "team=veg") == []
    assert _listed(cli, "--label", "team=fruit", "--page-size", "1") == [green, red]  # over short pages
    assert set(_listed(cli)) == {red, green, plain}


def test_a_bad_label_is_refused_naming_it_and_nothing_is_stored(cli: Any) -> None:
    for label, named in (("bad key=v", "labels[bad key]"), ("team=-x", "labels[team]"), ("novalue", "KEY=VALUE")):
        result = cli("submit", str(FRUIT), "--label", label)
        assert result.returncode == 2, result.stderr
        assert named in result.stderr and "--label" in result.stderr and "Traceback" not in result.stderr
        assert cli("list", "--label", label).returncode == 2
    many = [arg for i in range(33) for arg in ("--label", f"k{i}=v")]
    result = cli("submit", str(FRUIT), *many)
    assert result.returncode == 2 and "at most 32 labels" in result.stderr
    assert _listed(cli) == []


def test_clone_wait_runs_a_copy_with_the_same_labels(cli: Any) -> None:
    first = cli("submit", str(FRUIT), "--label", "team=fruit", "--parallelism", "3", "--wait", "--json")
    original = json.loads(first.stdout)
    cloned = cli("clone", original["id"], "--wait", "--json")
    assert cloned.returncode == 0, cloned.stderr
    doc = json.loads(cloned.stdout)
    assert doc["id"] != original["id"] and doc["status"] == "done"
    assert (doc["name"], doc["parallelism"], doc["labels"]) == ("fruit_gather", 3, {"team": "fruit"})
    again = cli("resubmit", original["id"], "--name", "again", "--parallelism", "1")
    assert again.returncode == 0, again.stderr
    assert json.loads(cli("status", again.stdout.strip(), "--json").stdout)["name"] == "again"
    assert len(_listed(cli, "--label", "team=fruit")) == 3


def test_retry_chosen_jobs_and_restart_successful_ones(cli: Any) -> None:
    result = cli("submit", "-", "--wait", "--json", input=CHAIN)
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert _attempts(cli, doc["id"]) == {"a": ("succeeded", 1), "b": ("failed", 1), "c": ("skipped", 0),
                                         "d": ("succeeded", 1)}
    unknown = cli("retry", doc["id"], "--jobs", "b,zz")
    assert unknown.returncode == 2 and "jobs[1]" in unknown.stderr and "zz" in unknown.stderr
    assert _attempts(cli, doc["id"])["b"] == ("failed", 1)

    Path(doc["workdir"], "go").touch()
    retried = cli("retry", doc["id"], "--jobs", "b", "--wait")
    assert retried.returncode == 0, retried.stderr
    assert _attempts(cli, doc["id"]) == {"a": ("succeeded", 1), "b": ("succeeded", 2), "c": ("succeeded", 1),
                                         "d": ("succeeded", 1)}
    nothing = cli("retry", doc["id"], "--jobs", "c")
    assert nothing.returncode == 1 and "nothing to retry" in nothing.stderr

    restarted = cli("retry", doc["id"], "--jobs", "b", "--jobs", "d", "--restart-successful", "--wait")
    assert restarted.returncode == 0, restarted.stderr
    assert _attempts(cli, doc["id"]) == {"a": ("succeeded", 1), "b": ("succeeded", 3), "c": ("succeeded", 2),
                                         "d": ("succeeded", 2)}
    everything = cli("retry", doc["id"], "--restart-successful", "--wait")
    assert everything.returncode == 0, everything.stderr
    assert {name: attempt for name, (_, attempt) in _attempts(cli, doc["id"]).items()} == {
        "a": 2, "b": 4, "c": 3, "d": 3}
