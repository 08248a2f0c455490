"""The `donut` command as users run it: a real process against a real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from donut_common.etcd_server import free_port
from tests.cli.conftest import FRUIT, donut


def test_submit_wait_json_runs_the_fruit_example(cli: Any, tmp_path: Path) -> None:
    result = cli("submit", str(FRUIT), "--wait", "--json", "--parallelism", "2")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) >= {"id", "name", "status", "parallelism", "jobs"}
    assert doc["status"] == "done" and doc["parallelism"] == 2 and doc["name"] == "fruit_gather"
    assert [(j["name"], j["status"], j["exit_code"], j["attempt"]) for j in doc["jobs"]] == [
        ("apple", "succeeded", 0, 1), ("banana", "succeeded", 0, 1),
        ("cantaloupe", "succeeded", 0, 1), ("dragonfruit", "succeeded", 0, 1)]
    assert all(j["started_at"] and j["finished_at"] for j in doc["jobs"])
    assert "done: 4 succeeded" in result.stderr  # progress went to stderr

    logs = cli("logs", doc["id"], "dragonfruit")
    assert logs.returncode == 0 and logs.stdout.splitlines() == ["apple 3", "banana 5", "cantaloupe 2", "total 10"]

    results = cli("results", doc["id"], "--download", str(tmp_path / "out"))
    assert results.returncode == 0, results.stderr
    assert "dragonfruit/total.txt" in results.stdout
    assert (tmp_path / "out" / "dragonfruit" / "total.txt").read_text().splitlines()[-1] == "total 10"
    assert (tmp_path / "out" / "apple" / "output.txt").read_text() == "apple 3\n"

    status = cli("status", doc["id"], "--json")
    assert json.loads(status.stdout)["status"] == "done"
    listed = cli("list", "--status", "done", "--json")
    assert [w["id"] for w in json.loads(listed.stdout)] == [doc["id"]]


def test_bad_definition_exits_2_names_every_problem_and_stores_nothing(cli: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs:\n- name: Apple\n  image: x\n  cmd: y\n  args: [1]\n- {name: b, image: x, cmd: y}\n"
                   "neighbors:\n  b: [kiwi]\n")
    result = cli("submit", str(bad))
    assert result.returncode == 2
    assert "jobs[0].name: must match" in result.stderr
    assert "jobs[0].args[0]: must be a string, not 1" in result.stderr
    assert "jobs[1].args: required" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(cli("list", "--json").stdout) == []


def test_a_definition_that_is_not_utf8_is_refused_where_it_goes_wrong(cli: Any, tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("jobs:\n- {name: a, image: x, cmd: echo, args: [café]}\n".encode("latin-1"))
    result = cli("submit", str(latin1))
    assert result.returncode == 2, result.stderr
    assert "definition: not valid UTF-8 (bad byte at offset 49)" in result.stderr
    assert json.loads(cli("list", "--json").stdout) == []


def test_bad_flags_and_files_exit_2(cli: Any, stack: Any, tmp_path: Path) -> None:
    assert cli("submit", str(tmp_path / "missing.yaml")).returncode == 2
    for parallelism in ("5000", "99999999999", "-1"):
        result = cli("submit", str(FRUIT), "--parallelism", parallelism)
        assert result.returncode == 2 and "'--parallelism'" in result.stderr and "0<=x<=1000" in result.stderr
    assert cli("submit", str(FRUIT), "--upload", str(tmp_path / "nope")).returncode == 2
    assert cli("status", "not-an-id").returncode == 2
    assert json.loads(cli("list", "--json").stdout) == []
    for result in (cli("submit", str(FRUIT), "--parallelism", "99999999999"),
                   cli("token", "create", "--expires", "99999999999999999999"),
                   cli("results", "00000000-0000-4000-8000-000000000000", "--download", str(FRUIT))):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr


def test_a_refused_submission_uploads_nothing_and_names_every_problem(cli: Any, stack: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobs:\n- {name: a, image: x, cmd: y}\n")
    data = tmp_path / "data.csv"
    data.write_text("a,b\n")
    result = cli("submit", str(bad), "--name", "x" * 300, "--upload", str(data))
    assert result.returncode == 2
    assert "error: --name: must be at most 200 characters" in result.stderr
    assert "error: jobs[0].args: required" in result.stderr
    assert cli("submit", str(FRUIT), "--name", "two\nlines").returncode == 2
    assert not list((Path(stack.config.data_dir) / "cellar").rglob("*.csv"))  # nothing uploaded
    assert json.loads(cli("list", "--json").stdout) == []


def test_a_broken_client_config_is_one_clear_line(cli: Any, donut_home: Path) -> None:
    donut_home.mkdir(parents=True, exist_ok=True)
    for content in ("[]", "{not json", '{"endpoint": 5}'):
        (donut_home / "client.json").write_text(content)
        result = cli("list")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error:") and "client config" in result.stderr


def test_failed_workflow_exits_1_and_retry_after_a_fix(cli: Any, tmp_path: Path) -> None:
    definition = tmp_path / "flaky.json"
    definition.write_text(json.dumps({"jobs": [
        {"name": "check", "image": "x", "cmd": "/bin/sh", "args": ["-c", "test -f fixed"]}]}))
    result = cli("submit", str(definition), "--wait", "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["status"] == "failed" and doc["jobs"][0]["exit_code"] == 1
    Path(doc["workdir"], "fixed").touch()
    retried = cli("retry", doc["id"], "--wait", "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout)["jobs"][0]["attempt"] == 2
    again = cli("retry", doc["id"])
    assert again.returncode == 1 and "nothing to retry" in again.stderr


def test_cancel_and_follow_logs(cli: Any, stack: Any, donut_home: Path, tmp_path: Path) -> None:
    definition = tmp_path / "slow.json"
    definition.write_text(json.dumps({"jobs": [
        {"name": "ticker", "image": "x", "cmd": "/bin/sh",
         "args": ["-c", "for i in 1 2 3; do echo tick $i; sleep 0.2; done; echo oops >&2; sleep 60"]}]}))
    workflow_id = cli("submit", str(definition)).stdout.strip()
    follower = subprocess.Popen(
        [sys.executable, "-m", "donut_cli", "logs", workflow_id, "ticker", "--follow"],
        env={**os.environ, "DONUT_HOME": str(donut_home), "DONUT_ENDPOINT": stack.endpoint,
             "DONUT_TOKEN": stack.admin_token},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 20
    while "oops" not in cli("logs", workflow_id, "ticker").stderr:
        assert time.time() < deadline
        time.sleep(0.1)
    assert follower.poll() is None  # still following the running job
    assert cli("cancel", workflow_id).returncode == 0
    out, err = follower.communicate(timeout=30)  # ends by itself when the job ends
    assert follower.returncode == 0
    assert out.splitlines() == ["tick 1", "tick 2", "tick 3"]
    assert "oops" in err
    status = json.loads(cli("status", workflow_id, "--json").stdout)
    assert status["status"] == "terminated"
    assert cli("cancel", workflow_id).returncode == 1  # already ended


def test_follow_goes_through_a_retry_showing_each_line_once(cli: Any, stack: Any, donut_home: Path,
                                                            tmp_path: Path) -> None:
    definition = tmp_path / "retried.json"
    script = 'sleep 0.5; echo one-$DONUT_JOB_ATTEMPT; echo two-$DONUT_JOB_ATTEMPT; [ "$DONUT_JOB_ATTEMPT" = 2 ]'
    definition.write_text(json.dumps({"jobs": [
        {"name": "flaky", "image": "x", "cmd": "/bin/sh", "args": ["-c", script], "retries": 1}]}))
    workflow_id = cli("submit", str(definition)).stdout.strip()
    followed = cli("logs", workflow_id, "flaky", "--follow")  # attaches during attempt 1, waits out the backoff

    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines() == ["one-1", "two-1", "one-2", "two-2"]
    assert followed.stderr.splitlines() == ["[donut] exited with code 1", "[donut] attempt 2"]


def test_server_down_gives_one_clear_line(donut_home: Path) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    result = donut("list", home=donut_home, endpoint=endpoint)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: cannot reach donut at {endpoint}")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "nohost.invalid"])
def test_replicas_all_down_or_unknown_give_one_clear_line(donut_home: Path, host: str) -> None:
    endpoint = f"127.0.0.1:{free_port()},{host}:{free_port()}"
    result = donut("list", home=donut_home, endpoint=endpoint)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: cannot reach donut at {endpoint}")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_uploaded_files_reach_cache_inputs(cli: Any, stack: Any, tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    folder = tmp_path / "more"
    (folder / "deep").mkdir(parents=True)
    (folder / "deep" / "x.txt").write_text("x\n")
    definition = tmp_path / "use.yaml"
    definition.write_text(
        "jobs:\n- name: use\n  image: x\n  cmd: /bin/sh\n  args: ['-c', 'cat data.csv x.txt']\n"
        "  inputs:\n  - {cache: data.csv, local: data.csv}\n  - {cache: more/deep/x.txt, local: x.txt}\n")
    result = cli("submit", str(definition), "--upload", str(data), "--upload", str(folder), "--wait", "--json")
    assert result.returncode == 0, result.stderr
    workflow_id = json.loads(result.stdout)["id"]
    assert cli("logs", workflow_id, "use").stdout.splitlines() == ["a,b", "1,2", "x"]
    missing = tmp_path / "missing.yaml"
    missing.write_text("jobs:\n- name: use\n  image: x\n  cmd: 'true'\n  args: []\n"
                       "  inputs:\n  - {cache: nothing.csv, local: n.csv}\n")
    refused = cli("submit", str(missing), "--upload", str(data), "--wait", "--json")
    assert refused.returncode == 2
    assert "jobs[0].inputs[0].cache: 'nothing.csv' was not uploaded" in refused.stderr
    assert [w["id"] for w in json.loads(cli("list", "--json").stdout)] == [workflow_id]  # nothing stored
    uploads = Path(stack.config.data_dir) / "cellar" / "cache"
    assert len(list(uploads.iterdir())) == 1  # the refused submission's upload is gone


def test_a_directory_output_downloads_into_the_same_tree(cli: Any, tmp_path: Path) -> None:
    definition = tmp_path / "tree.yaml"
    definition.write_text(
        "jobs:\n- name: tree\n  image: x\n  cmd: /bin/sh\n  args: ['-c', 'mkdir -p out/sub/deeper && echo a > "
        "out/a.txt && echo c > out/sub/deeper/c.txt && ln -s /etc/hostname out/sub/link']\n"
        "  outputs:\n  - {local: out, save: true}\n")
    result = cli("submit", str(definition), "--wait", "--json")
    assert result.returncode == 0, result.stderr
    workflow_id = json.loads(result.stdout)["id"]
    listed = cli("results", workflow_id)
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["tree/out/a.txt", "tree/out/sub/deeper/c.txt"]
    assert "skipped sub/link: a symbolic link" in cli("logs", workflow_id, "tree").stderr  # the job's notes
    got = tmp_path / "got"
    assert cli("results", workflow_id, "--download", str(got)).returncode == 0
    assert sorted(str(p.relative_to(got)) for p in got.rglob("*") if not p.is_dir()) == [
        "tree/out/a.txt", "tree/out/sub/deeper/c.txt"]
    assert (got / "tree" / "out" / "sub" / "deeper" / "c.txt").read_text() == "c\n"


def test_a_second_stack_on_the_same_data_dir_is_refused_at_once(stack: Any, donut_home: Path) -> None:
    data_dir = str(stack.config.data_dir)
    started = time.monotonic()
    second = donut("up", "--data-dir", data_dir, "--port", "0", "--http-port", "-1", home=donut_home, timeout=30)
    assert second.returncode == 1
    assert second.stderr.strip() == (f"error: cannot start the stack: another stack is using {data_dir} "
                                     "(is `donut up` running already?)")
    assert time.monotonic() - started < 15
    assert stack.users.ensure_user("admin", admin=True)  # the first stack is unharmed


def test_list_follows_the_pages(cli: Any, stack: Any) -> None:
    from donut.dagger.v1 import dagger_pb2 as pb
    from donut.dagger.v1 import dagger_pb2_grpc
    from donut_common.rpc import channel

    stub = dagger_pb2_grpc.DaggerStub(channel(stack.endpoint, token=stack.admin_token))
    definition = json.dumps({"jobs": [{"name": "a", "image": "x", "cmd": "true", "args": []}]}).encode()
    ids = [stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=definition)).id for _ in range(5)]
    listed = cli("list", "--page-size", "2", "--json")
    assert [w["id"] for w in json.loads(listed.stdout)] == ids[::-1], listed.stderr
    limited = cli("list", "--page-size", "2", "--limit", "3", "--json")
    assert [w["id"] for w in json.loads(limited.stdout)] == ids[:-4:-1], limited.stderr
