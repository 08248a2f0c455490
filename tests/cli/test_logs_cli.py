"""`donut logs` of a whole workflow, of its last lines, with times, and of jobs that never ran."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any


def _job(name: str, script: str, after: str | None = None) -> dict[str, Any]:
    """A shell job, run after the job named `after`."""
    return {"name": name, "image": "x", "cmd": "/bin/sh", "args": ["-c", script], "after": after}


def _submit(cli: Any, tmp_path: Path, *jobs: dict[str, Any], wait: bool = False) -> dict[str, Any]:
    definition = tmp_path / "workflow.json"
    neighbors = {job["after"]: [job["name"]] for job in jobs if job["after"]}
    definition.write_text(json.dumps({"jobs": [{k: v for k, v in job.items() if k != "after"} for job in jobs],
                                      "neighbors": neighbors}))
    result = cli("submit", str(definition), "--json", *(["--wait"] if wait else []))
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def _three_fruit(cli: Any, tmp_path: Path) -> str:
    doc = _submit(cli, tmp_path,
                  _job("apple", "for i in 1 2 3; do echo apple $i; done; echo bruised >&2"),
                  _job("banana", "for i in 1 2 3; do echo banana $i; done", after="apple"),
                  _job("cherry", "for i in 1 2 3; do echo cherry $i; done", after="banana"), wait=True)
    assert doc["status"] == "done"
    return str(doc["id"])


def test_logs_of_a_finished_workflow_show_every_line_once_prefixed_by_its_job(cli: Any, tmp_path: Path) -> None:
    workflow_id = _three_fruit(cli, tmp_path)

    result = cli("logs", workflow_id)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"{job}: {job} {i}" for job in ("apple", "banana", "cherry")
                                          for i in (1, 2, 3)]  # job by job, in the order they started
    assert "apple: bruised" in result.stderr.splitlines()
    assert "\x1b" not in result.stdout + result.stderr  # piped: no colour codes


def test_on_a_terminal_each_job_name_has_a_colour_of_its_own(cli: Any, stack: Any, donut_home: Path,
                                                             tmp_path: Path) -> None:
    import pty

    workflow_id = _three_fruit(cli, tmp_path)
    terminal, side = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "donut_cli", "logs", workflow_id],
        env={**{k: v for k, v in os.environ.items() if k != "NO_COLOR"}, "DONUT_HOME": str(donut_home),
             "DONUT_ENDPOINT": stack.endpoint, "DONUT_TOKEN": stack.admin_token},
        stdout=side, stderr=subprocess.PIPE)
    os.close(side)
    shown = b""
    while True:
        try:
            data = os.read(terminal, 65536)
        except OSError:  # the other side closed
            break
        if not data:
            break
        shown += data
    os.close(terminal)
    assert process.wait(timeout=30) == 0
    lines = [re.fullmatch(r"(\x1b\[\d+m)(\w+):\x1b\[0m (\w+) \d", line) for line in shown.decode().splitlines()]
    assert len(lines) == 9 and all(lines), shown
    assert all(m[2] == m[3] for m in lines if m)  # the job's own lines
    assert len({(m[1], m[2]) for m in lines if m}) == 3  # one colour per job, the same on each of its lines


def test_tail_shows_the_last_lines_of_each_job(cli: Any, tmp_path: Path) -> None:
    workflow_id = _three_fruit(cli, tmp_path)

    one = cli("logs", workflow_id, "banana", "--tail", "2")
    every = cli("logs", workflow_id, "--tail", "1")

    assert one.returncode == 0 and one.stdout.splitlines() == ["banana 2", "banana 3"]
    assert every.returncode == 0 and every.stdout.splitlines() == ["banana: banana 3", "cherry: cherry 3"]
    assert every.stderr.splitlines() == ["apple: bruised"]  # apple's last line
    assert cli("logs", workflow_id, "banana", "--tail", "99999999999999999999").stdout.splitlines() == [
        "banana 1", "banana 2", "banana 3"]  # more than there are: all of them
    for bad in (("--tail", "-1"), ("--attempt", "1")):
        result = cli("logs", workflow_id, *bad)
        assert result.returncode == 2 and bad[0] in result.stderr and "Traceback" not in result.stderr


def test_timestamps_lead_each_line(cli: Any, tmp_path: Path) -> None:
    workflow_id = _three_fruit(cli, tmp_path)
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"

    one = cli("logs", workflow_id, "apple", "--timestamps")
    every = cli("logs", workflow_id, "--timestamps")

    assert one.returncode == 0 and len(one.stdout.splitlines()) == 3
    assert all(re.fullmatch(stamp + r" apple \d", line) for line in one.stdout.splitlines()), one.stdout
    assert len(every.stdout.splitlines()) == 9
    assert all(re.fullmatch(r"(apple|banana|cherry): " + stamp + r" \w+ \d", line)
               for line in every.stdout.splitlines()), every.stdout


def test_since_shows_only_recent_lines(cli: Any, tmp_path: Path) -> None:
    workflow_id = _three_fruit(cli, tmp_path)

    assert len(cli("logs", workflow_id, "--since", "1h").stdout.splitlines()) == 9
    assert cli("logs", workflow_id, "apple", "--since", "0s").stdout == ""
    assert len(cli("logs", workflow_id, "--since", "9" * 400 + "d").stdout.splitlines()) == 9
    bad = cli("logs", workflow_id, "--since", "soon")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "--since" in bad.stderr


def test_follow_of_a_workflow_picks_up_a_job_that_starts_later(cli: Any, stack: Any, donut_home: Path,
                                                               tmp_path: Path) -> None:
    doc = _submit(cli, tmp_path, _job("early", "echo ready; while [ ! -f go ]; do sleep 0.05; done; echo went"),
                  _job("late", "echo late one; echo late two", after="early"))
    follower = subprocess.Popen(
        [sys.executable, "-m", "donut_cli", "logs", doc["id"], "--follow"],
        env={**os.environ, "DONUT_HOME": str(donut_home), "DONUT_ENDPOINT": stack.endpoint,
             "DONUT_TOKEN": stack.admin_token},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert follower.stdout is not None
    assert follower.stdout.readline() == "early: ready\n"  # attached before `late` can start
    Path(doc["workdir"], "go").touch()

    out, err = follower.communicate(timeout=60)  # ends with the workflow

    assert follower.returncode == 0, err
    assert out.splitlines() == ["early: went", "late: late one", "late: late two"]


def test_logs_of_a_job_that_never_ran_say_why(cli: Any, tmp_path: Path) -> None:
    waiting = _submit(cli, tmp_path, _job("gate", "while [ ! -f go ]; do sleep 0.05; done"),
                      _job("after", "echo hi", after="gate"))
    result = cli("logs", waiting["id"], "after")
    assert result.returncode == 0 and result.stdout == ""
    assert result.stderr == "job 'after' is waiting: no output yet\n"
    Path(waiting["workdir"], "go").touch()

    (tmp_path / "second").mkdir()
    failed = _submit(cli, tmp_path / "second", _job("bad", "exit 3"), _job("never", "echo hi", after="bad"),
                     wait=True)
    assert failed["status"] == "failed"
    for follow in ((), ("--follow",)):
        result = cli("logs", failed["id"], "never", *follow)
        assert result.returncode == 0 and result.stdout == ""
        assert result.stderr == "job 'never' was skipped: it never ran\n"
