"""`donut archive` as users run it: the download and its checks, refusals in one line, the
progress bar only on a terminal, and `donut up`'s archive flags."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import donut

MAKE = "mkdir -p a/b && printf 'deep' > a/b/deep.txt && : > empty.txt && ln -s a/b/deep.txt link"


def _submit(cli: Any, tmp_path: Path, script: str) -> str:
    definition = tmp_path / "wf.json"
    definition.write_text(json.dumps({"jobs": [{"name": "j", "image": "x", "cmd": "/bin/sh",
                                                 "args": ["-c", script]}]}))
    submitted = cli("submit", str(definition), "--wait", "--json")
    assert submitted.returncode == 0, submitted.stderr
    return str(json.loads(submitted.stdout)["id"])


def test_archive_downloads_the_checked_archive_quietly_when_not_on_a_terminal(
        cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workflow_id = _submit(cli, tmp_path, MAKE)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)

    archived = cli("archive", workflow_id[:8])  # an id prefix names it too
    assert archived.returncode == 0, archived.stderr
    assert archived.stderr == ""
    target = here / f"{workflow_id}.tar.gz"
    data = target.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    assert archived.stdout == f"{workflow_id}.tar.gz  {len(data)} bytes  sha256:{sha256}\n"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["a", "a/b", "a/b/deep.txt", "empty.txt", "link"]
        assert tar.getmember("link").issym() and tar.getmember("link").linkname == "a/b/deep.txt"
    status = cli("status", workflow_id)
    assert "archived " in status.stdout and f"(sha256:{sha256})" in status.stdout
    assert json.loads(cli("status", workflow_id, "--json").stdout)["archive_sha256"] == sha256


def test_an_existing_file_is_kept_unless_overwrite(cli: Any, tmp_path: Path) -> None:
    workflow_id = _submit(cli, tmp_path, "echo hi > hi.txt")
    target = tmp_path / "mine.tar.gz"
    target.write_text("precious")

    refused = cli("archive", workflow_id, "-o", str(target))
    assert refused.returncode == 1
    assert refused.stderr == f"error: -o: {target} exists already (--overwrite replaces it)\n"
    assert target.read_text() == "precious"

    replaced = cli("archive", workflow_id, "-o", str(target), "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    with tarfile.open(target, mode="r:gz") as tar:
        member = tar.extractfile("hi.txt")
        assert member is not None and member.read() == b"hi\n"
    directory = cli("archive", workflow_id, "-o", str(tmp_path))
    assert (directory.returncode, directory.stderr) == (2, f"error: -o: {tmp_path} is a directory\n")


def test_a_running_workflow_is_refused_in_one_line(cli: Any, stack: Any, tmp_path: Path) -> None:
    definition = tmp_path / "wait.json"
    definition.write_text(json.dumps({"jobs": [{"name": "j", "image": "x", "cmd": "/bin/sh",
                                                 "args": ["-c", "while [ ! -e go ]; do sleep 0.02; done"]}]}))
    workflow_id = json.loads(cli("submit", str(definition), "--json").stdout)["id"]
    target = tmp_path / "out.tar.gz"

    refused = cli("archive", workflow_id, "-o", str(target))
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: workflow {workflow_id} is still ")
    assert refused.stderr.endswith("archive it once it ends (failed_precondition)\n")
    assert len(refused.stderr.splitlines()) == 1 and not target.exists()
    (Path(stack.config.data_dir) / "workflows" / workflow_id / "go").touch()


def test_the_progress_bar_shows_on_a_terminal(cli: Any, stack: Any, donut_home: Path, tmp_path: Path) -> None:
    workflow_id = _submit(cli, tmp_path, "head -c 300000 /dev/urandom > noise.bin")
    primary, secondary = pty.openpty()
    environment = {**os.environ, "DONUT_HOME": str(donut_home), "DONUT_ENDPOINT": stack.endpoint,
                   "DONUT_TOKEN": stack.admin_token}
    target = tmp_path / "tty.tar.gz"
    done = subprocess.run([sys.executable, "-m", "donut_cli", "archive", workflow_id, "-o", str(target)],
                          env=environment, stdout=subprocess.PIPE, stderr=secondary, timeout=60, check=False)
    os.close(secondary)
    shown = b""
    try:
        while chunk := os.read(primary, 4096):
            shown += chunk
    except OSError:  # the terminal's other end is closed: everything was read
        pass
    os.close(primary)
    assert done.returncode == 0
    assert b"downloading" in shown and b"100%" in shown
    assert done.stdout.decode().startswith(f"{target}  ")


def test_delete_archived_workdirs_needs_archive_finished(donut_home: Path, tmp_path: Path) -> None:
    refused = donut("up", "--data-dir", str(tmp_path / "data"), "--port", "0", "--http-port", "-1",
                    "--delete-archived-workdirs", home=donut_home)
    assert refused.returncode == 2
    assert refused.stderr == ("error: --delete-archived-workdirs goes only with --archive-finished "
                              "(a directory is removed only once its archive is stored)\n")
    assert not (tmp_path / "data").exists()
