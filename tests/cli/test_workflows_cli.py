"""The workflow verbs as users read them: output formats, watch, status views, list filters."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.cli.conftest import FRUIT


def _definition(tmp_path: Path, *jobs: dict[str, Any], name: str = "wf") -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"jobs": [{"image": "x", "cmd": "/bin/sh", **j} for j in jobs]}))
    return str(path)


def _stub(stack: Any) -> Any:
    from donut.dagger.v1 import dagger_pb2_grpc
    from donut_common.rpc import channel

    return dagger_pb2_grpc.DaggerStub(channel(stack.endpoint, token=stack.admin_token))


def _create(stack: Any, name: str = "", script: str = "true") -> str:
    from donut.dagger.v1 import dagger_pb2 as pb

    definition = json.dumps({"jobs": [{"name": "a", "image": "x", "cmd": "/bin/sh", "args": ["-c", script]}]})
    return str(_stub(stack).CreateWorkflow(pb.CreateWorkflowRequest(definition=definition.encode(), name=name)).id)


def _started(stack: Any, workflow_id: str) -> None:
    from donut.dagger.v1 import dagger_pb2 as pb

    for w in _stub(stack).WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id)):
        if w.status == pb.WORKFLOW_STATUS_RUNNING:
            return


def _ended(stack: Any, workflow_id: str) -> None:
    from donut.dagger.v1 import dagger_pb2 as pb

    for _ in _stub(stack).WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id)):
        pass


def test_submit_status_and_list_print_each_format(cli: Any) -> None:
    submitted = cli("submit", str(FRUIT), "--wait", "-o", "yaml")
    assert submitted.returncode == 0, submitted.stderr
    doc = yaml.safe_load(submitted.stdout)
    assert doc["status"] == "done" and doc["owner"] == json.loads(cli("whoami", "--json").stdout)["id"]
    assert doc["fail_fast"] is False
    assert [j["name"] for j in doc["jobs"]] == ["apple", "banana", "cantaloupe", "dragonfruit"]
    workflow_id = doc["id"]

    assert cli("status", workflow_id, "-o", "json").stdout == cli("status", workflow_id, "--json").stdout
    assert yaml.safe_load(cli("status", workflow_id, "-o", "yaml").stdout) == json.loads(
        cli("status", workflow_id, "-o", "json").stdout)
    assert cli("status", workflow_id, "-o", "name").stdout == f"{workflow_id}\n"
    wide = cli("status", workflow_id, "-o", "wide").stdout.splitlines()
    assert "STARTED" in wide[2] and "AFTER" in wide[2]
    assert "owner admin, fail-fast off" in cli("status", workflow_id).stdout

    assert cli("list", "-o", "name").stdout == f"{workflow_id}\n"
    assert [w["id"] for w in yaml.safe_load(cli("list", "-o", "yaml").stdout)] == [workflow_id]
    table = cli("list").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "OWNER", "STATUS", "AGE", "DURATION", "JOBS"]  # the caller is admin
    assert table[1].split()[:4] == [workflow_id, "fruit_gather", "admin", "done"]
    assert cli("list", "-o", "wide").stdout.splitlines()[0].split() == [
        "ID", "NAME", "OWNER", "STATUS", "AGE", "DURATION", "STARTED", "JOBS", "MESSAGE"]

    by_name = cli("submit", str(FRUIT), "-o", "name")
    assert by_name.returncode == 0 and len(by_name.stdout.split()) == 1
    assert json.loads(cli("submit", str(FRUIT), "-o", "json").stdout)["name"] == "fruit_gather"
    both = cli("status", workflow_id, "--json", "-o", "yaml")
    assert both.returncode == 2 and both.stderr.startswith("error: --json") and "Traceback" not in both.stderr
    assert cli("status", workflow_id, "-o", "xml").returncode == 2


def test_results_and_tokens_take_the_formats(cli: Any) -> None:
    workflow_id = json.loads(cli("submit", str(FRUIT), "--wait", "--json").stdout)["id"]
    names = cli("results", workflow_id, "-o", "name").stdout.splitlines()
    assert "dragonfruit/total.txt" in names
    assert {d["job"] for d in yaml.safe_load(cli("results", workflow_id, "-o", "yaml").stdout)} >= {"dragonfruit"}
    tokens = json.loads(cli("token", "list", "--json").stdout)
    assert cli("token", "list", "-o", "name").stdout.split() == [t["id"] for t in tokens]


def test_watch_piped_prints_each_change_and_exits_like_wait(cli: Any, stack: Any, tmp_path: Path) -> None:
    done = cli("submit", _definition(tmp_path, {"name": "first", "args": ["-c", "true"]},
                                     {"name": "second", "args": ["-c", "true"]}, name="ok")).stdout.strip()
    watched = cli("watch", done)
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert lines[-1] == "workflow: done (2 succeeded)"
    assert "first: succeeded, attempt 1, exit 0" in lines and "second: succeeded, attempt 1, exit 0" in lines
    assert len(lines) == len(set(lines))  # a line per change, none repeated
    assert "\x1b[" not in watched.stdout  # no cursor movement when piped

    failed = cli("submit", _definition(tmp_path, {"name": "bad", "args": ["-c", "exit 3"]}, name="bad")).stdout.strip()
    watched = cli("watch", failed)
    assert watched.returncode == 1
    assert "bad: failed, attempt 1, exit 3" in watched.stdout
    assert watched.stdout.endswith("workflow: failed (1 failed)\n")
    assert cli("watch", "00000000-0000-4000-8000-000000000000").returncode == 1


def test_ctrl_c_while_following_says_the_workflow_keeps_running(cli: Any, stack: Any, donut_home: Path,
                                                                tmp_path: Path) -> None:
    slow = _definition(tmp_path, {"name": "slow", "args": ["-c", "sleep 60"]})
    env = {**os.environ, "DONUT_HOME": str(donut_home), "DONUT_ENDPOINT": stack.endpoint,
           "DONUT_TOKEN": stack.admin_token}
    workflow_id = cli("submit", slow).stdout.strip()
    for args in (["watch", workflow_id], ["submit", slow, "--wait"]):
        # as from a terminal: a test run in the background (`cmd &`) ignores SIGINT, and so would its children
        follower = subprocess.Popen([sys.executable, "-m", "donut_cli", *args], env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            assert follower.stdout is not None and follower.stderr is not None
            followed = follower.stdout.readline().strip()  # watch: the job's first change; submit: the new id
            if args[0] == "watch":
                assert follower.stdout.readline().startswith("workflow: ")  # following
            else:
                assert follower.stderr.readline().startswith("[")  # following: "[HH:MM:SS] queued: 1 waiting"...
            follower.send_signal(signal.SIGINT)
            out, err = follower.communicate(timeout=30)
        finally:
            follower.kill()  # (a failed check leaves no follower behind)
        assert follower.returncode == 130, err
        keeps = followed if args[0] == "submit" else workflow_id
        assert f"the workflow keeps running; follow it again with: donut watch {keeps}" in err
        assert "Traceback" not in err
        cli("cancel", keeps)


def test_status_shows_every_attempt_and_the_tree(cli: Any, tmp_path: Path) -> None:
    flaky = _definition(tmp_path, {"name": "a", "retries": 1, "args": ["-c", '[ "$DONUT_JOB_ATTEMPT" = 2 ] || exit 4']},
                        {"name": "b", "args": ["-c", "true"]})
    workflow_id = cli("submit", flaky, "--wait", "--fail-fast").stdout.splitlines()[0]
    attempts = cli("status", workflow_id, "--attempts")
    assert attempts.returncode == 0, attempts.stderr
    rows = [line.split()[:4] for line in attempts.stdout.splitlines()[2:]]
    assert rows == [["JOB", "ATTEMPT", "STATUS", "EXIT"], ["a", "1", "failed", "4"], ["a", "2", "succeeded", "0"],
                    ["b", "1", "succeeded", "0"]]
    assert "fail-fast on" in attempts.stdout

    table = cli("status", workflow_id).stdout.splitlines()
    header, first = table[2], table[3]
    assert header.startswith("  JOB  STATUS")  # short names: the column is as wide as its header
    assert first.index("succeeded") == header.index("STATUS") and first.split()[:4] == ["a", "succeeded", "2", "0"]

    tree = cli("status", str(json.loads(cli("submit", str(FRUIT), "--json").stdout)["id"]), "--tree").stdout
    assert [re.sub(r"  [a-z]+(  \(see above\))?$", "", line) for line in tree.splitlines()[2:]] == [
        "  apple", "  ├─ banana", "  │  └─ dragonfruit", "  └─ cantaloupe", "     └─ dragonfruit"], tree
    assert "(see above)" in tree.splitlines()[-1]  # drawn in full once


def test_status_says_when_a_job_retries(cli: Any, tmp_path: Path) -> None:
    failing = _definition(tmp_path, {"name": "again", "retries": 3, "args": ["-c", "exit 1"]})
    workflow_id = cli("submit", failing).stdout.strip()
    while True:  # the backoffs last 1, 2 and 4 s: some look lands in one
        shown = cli("status", workflow_id)
        assert "workflow" in shown.stdout and ": failed" not in shown.stdout.splitlines()[0], shown.stdout
        row = shown.stdout.splitlines()[3]
        if "retry" in row:
            break
    assert re.search(r"queued +[123] +1 .*  retry [123]/3 in \ds$", row), row


def test_list_filters_by_age_and_state_and_says_when_there_is_more(cli: Any, stack: Any) -> None:
    old = _create(stack, "old")
    _ended(stack, old)
    time.sleep(2.1)  # `old` is older than 2 s from here on
    assert [w["id"] for w in json.loads(cli("list", "--since", "1h", "--json").stdout)] == [old]
    recent = cli("list", "--since", "2", "--json")
    assert recent.returncode == 0 and json.loads(recent.stdout) == [], recent.stderr
    bad = cli("list", "--since", "soon")
    assert bad.returncode == 2 and "--since" in bad.stderr and "Traceback" not in bad.stderr

    running = _create(stack, "sleeper", "sleep 60")
    _started(stack, running)
    assert cli("list", "--running", "-o", "name").stdout.split() == [running]
    assert cli("list", "--completed", "-o", "name").stdout.split() == [old]

    more = [_create(stack, f"n{i}") for i in range(3)]
    limited = cli("list", "--limit", "2", "-o", "name")
    assert limited.stdout.split() == more[:-3:-1] and "… and more: --limit 0 for all" in limited.stderr
    everything = cli("list", "--limit", "0", "-o", "name")
    assert len(everything.stdout.split()) == 5 and "more" not in everything.stderr
    cli("cancel", running)


def test_list_cuts_long_names_and_aligns_wide_characters(cli: Any, stack: Any) -> None:
    long_name = "a-very-long-workflow-name-that-goes-on-and-on"
    ids = [_create(stack, name) for name in (long_name, "果物の収穫", "short")]
    lines = cli("list").stdout.splitlines()
    header = lines[0]
    assert any(("a-very-long-workflow-name-tha…" in line and long_name not in line) for line in lines)
    status_column = header.index("OWNER")
    for line, workflow_id in zip(lines[1:], ids[::-1], strict=True):
        before, _, _ = line.partition("admin")
        assert line.startswith(workflow_id)
        from donut_cli.output import width

        assert width(before) == status_column, line  # the same column on screen, whatever the name
