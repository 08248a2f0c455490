"""`donut up --storage s3`: its options refused in one line when they don't go together, a
bucket that can't be used refused at start, and the fruit workflow with an uploaded `cache:`
input and saved results kept in the bucket, nothing under the data dir's cellar folder."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cellar_svc.s3 import S3Settings
from tests.cli.conftest import FRUIT, donut
from tests.cli.test_errors import _one_error_line

NO_CREDENTIALS = {name: "" for name in ("DONUT_S3_ACCESS_KEY", "DONUT_S3_SECRET_KEY", "AWS_ACCESS_KEY_ID",
                                        "AWS_SECRET_ACCESS_KEY")}
CREDENTIALS = NO_CREDENTIALS | {"AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER"}


@pytest.fixture
def stack_config(stack_config: Any, moto_s3: Callable[..., S3Settings]) -> Any:
    """The shared stack's config, with cellar in a fresh moto bucket."""
    return dataclasses.replace(stack_config, storage=moto_s3())


def _closed_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--s3-bucket", "b"], CREDENTIALS, "error: --s3-bucket: only with --storage s3"),
    (["--s3-endpoint", "http://h:1", "--s3-prefix", "p"], CREDENTIALS,
     "error: --s3-endpoint, --s3-prefix: only with --storage s3"),
    (["--storage", "s3", "--s3-bucket", "bucket"], CREDENTIALS, "error: --storage s3 needs --s3-endpoint"),
    (["--storage", "s3"], CREDENTIALS, "error: --storage s3 needs --s3-endpoint and --s3-bucket"),
    (["--storage", "s3", "--s3-endpoint", "http://127.0.0.1:1", "--s3-bucket", "bucket"], NO_CREDENTIALS,
     "error: s3 credentials: set DONUT_S3_ACCESS_KEY and DONUT_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID and "
     "AWS_SECRET_ACCESS_KEY) in the environment"),
    (["--storage", "s3", "--s3-endpoint", "ftp://127.0.0.1:1", "--s3-bucket", "bucket"], CREDENTIALS,
     "error: s3 endpoint: must be http(s)://host:port (got 'ftp://127.0.0.1:1')"),
    (["--storage", "s3", "--s3-endpoint", "http://127.0.0.1:1", "--s3-bucket", "No_Such"], CREDENTIALS,
     "error: s3 bucket: must be 3-63 lowercase letters, digits, '.' or '-' (got 'No_Such')"),
])
def test_storage_options_that_do_not_go_together(donut_home: Path, tmp_path: Path, args: list[str],
                                                  env: dict[str, str], message: str) -> None:
    result = donut("up", "--data-dir", str(tmp_path / "data"), "--port", "0", "--http-port", "-1", *args,
                   home=donut_home, env=env)
    _one_error_line(result, 2)
    assert result.stderr.strip() == message
    assert not (tmp_path / "data").exists()


def test_a_bucket_that_cannot_be_used_stops_the_start_in_one_line(
    donut_home: Path, tmp_path: Path, s3rver_endpoint: str
) -> None:
    for endpoint, env, why in ((_closed_endpoint(), CREDENTIALS, "cannot connect"),
                               (s3rver_endpoint, CREDENTIALS | {"AWS_ACCESS_KEY_ID": "WRONG"}, "InvalidAccessKeyId")):
        result = donut("up", "--data-dir", str(tmp_path / "data"), "--port", "0", "--http-port", "-1",
                       "--storage", "s3", "--s3-endpoint", endpoint, "--s3-bucket", "donut", home=donut_home,
                       env=env, timeout=60)
        _one_error_line(result, 1, f"error: cannot start the stack: storage unavailable: bucket donut at {endpoint}: ",
                        why)
        assert not (tmp_path / "data" / "cellar").exists()


def test_the_fruit_workflow_keeps_uploads_and_results_in_the_bucket(cli: Any, stack: Any, tmp_path: Path) -> None:
    basket = tmp_path / "basket.txt"
    basket.write_text("a basket of 3 apples\n")
    definition = yaml.safe_load(FRUIT.read_text())
    apple = definition["jobs"][0]
    apple["inputs"] = [{"cache": "basket.txt", "local": "basket.txt"}]
    apple["args"] = ["-c", "cat basket.txt; echo 'apple 3' > output.txt"]
    path = tmp_path / "fruit.yaml"
    path.write_text(yaml.safe_dump(definition))

    submitted = cli("submit", str(path), "--upload", str(basket), "--wait", "--json")

    assert submitted.returncode == 0, submitted.stderr
    workflow_id = json.loads(submitted.stdout)["id"]
    assert cli("logs", workflow_id, "apple").stdout.splitlines() == ["a basket of 3 apples"]
    got = tmp_path / "got"
    assert cli("results", workflow_id, "--download", str(got)).returncode == 0
    assert (got / "dragonfruit" / "total.txt").read_text().splitlines()[-1] == "total 10"
    storage = stack.cellar_storage
    keys = {o.object_name for o in storage.client.list_objects(storage.bucket, "files/", recursive=True)}
    assert {f"files/result/{workflow_id}/{job}/{name}" for job, name in (
        ("apple", "output.txt"), ("banana", "output.txt"), ("cantaloupe", "output.txt"),
        ("dragonfruit", "total.txt"))} <= keys
    assert [k for k in keys if k.startswith("files/cache/") and k.endswith("/basket.txt")]
    assert not (Path(stack.config.data_dir) / "cellar").exists()


def test_the_stack_sweeps_leftovers_at_start_and_then_periodically(stack_config: Any) -> None:
    import time

    from cellar_svc.backends import SweepSettings
    from cellar_svc.s3 import S3Storage
    from donut_cli.stack import Stack

    storage = S3Storage.connect(stack_config.storage)

    def uploads() -> list[str]:  # (all of a day or more old on moto, which dates them all 2010)
        return [u.object_name for u in storage.client._list_multipart_uploads(storage.bucket).uploads]

    def wait_until_swept() -> None:
        deadline = time.monotonic() + 30
        while uploads() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert uploads() == []

    storage.client._create_multipart_upload(storage.bucket, "files/cache/up1/cut-off-before-start", {})
    with Stack(dataclasses.replace(stack_config, sweep=SweepSettings(interval=0.2))) as running:
        wait_until_swept()
        storage.client._create_multipart_upload(storage.bucket, "files/cache/up1/cut-off-while-running", {})
        wait_until_swept()
        assert running._sweeper is not None and running._sweeper.is_alive()
    assert running._sweeper is None  # stopped with the stack


def _all_output(done: Any) -> str:
    return str(done.stdout + done.stderr)


def _objects(stack: Any, prefix: str = "") -> set[str]:
    storage = stack.cellar_storage
    return {o.object_name for o in storage.client.list_objects(storage.bucket, prefix, recursive=True)}


def _etcd_keys(stack: Any) -> set[str]:
    return {kv.key for kv in stack.store._etcd.get_prefix(stack.config.etcd_prefix)}


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_on_s3_logs_archives_and_deletions_go_through_the_bucket(cli: Any, stack: Any, tmp_path: Path) -> None:
    import shutil
    import tarfile

    submitted = [cli("submit", str(FRUIT), "--wait", "--json") for _ in range(2)]
    assert all(s.returncode == 0 for s in submitted), [s.stderr for s in submitted]
    deleted, kept = (json.loads(s.stdout)["id"] for s in submitted)
    data_dir = Path(stack.config.data_dir)
    assert stack.log_copier.wait_idle(30)
    assert {f"files/log/{deleted}/{job}/1.log" for job in ("apple", "banana", "cantaloupe", "dragonfruit")} \
        <= _objects(stack)

    # an ended attempt's log is served from the bucket once the local file is gone
    before = cli("logs", deleted, "dragonfruit", "--timestamps").stdout
    shutil.rmtree(data_dir / "logs" / deleted)
    assert cli("logs", deleted, "dragonfruit", "--timestamps").stdout == before != ""

    # the archive is stored in the bucket and holds the work dir
    archive = tmp_path / "archive.tar.gz"
    assert cli("archive", deleted, "-o", str(archive)).returncode == 0
    assert f"files/archive/{deleted}/workflow.tar.gz" in _objects(stack)
    with tarfile.open(archive) as tar:
        total = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("total.txt")))
        assert total is not None and total.read().decode().splitlines()[-1] == "total 10"

    # a deletion leaves no object, key or file of the workflow, and all of the other's
    kept_objects = {o for o in _objects(stack) if kept in o}
    kept_keys = {k for k in _etcd_keys(stack) if kept in k}
    assert cli("delete", deleted).returncode == 0
    assert not [o for o in _objects(stack) if deleted in o]
    assert not [k for k in _etcd_keys(stack) if deleted in k]
    assert not [f for f in _files(data_dir) if deleted in f]
    assert {o for o in _objects(stack) if kept in o} == kept_objects != set()
    assert {k for k in _etcd_keys(stack) if kept in k} == kept_keys
    assert not (data_dir / "cellar").exists()


@pytest.fixture
def saving_config(stack_config: Any) -> Any:
    from streamed_job.spec import SaveSettings

    return dataclasses.replace(stack_config, save=SaveSettings(deadline=120, first_retry=0.2, max_retry=1))


def test_storage_stopped_and_restarted_mid_run(saving_config: Any, moto_server: Any, donut_home: Path,
                                               tmp_path: Path) -> None:
    import time

    from donut_cli.stack import Stack

    gate = tmp_path / "gate"
    definition = {"jobs": [{"name": "saver", "image": "busybox", "cmd": "sh", "args": [
        "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; echo kept > out.txt"],
        "outputs": [{"local": "out.txt", "save": True}]}]}
    path = tmp_path / "saver.json"
    path.write_text(json.dumps(definition))

    with Stack(saving_config) as stack:
        def cli(*args: str) -> Any:
            return donut(*args, home=donut_home, endpoint=stack.endpoint, env={"DONUT_TOKEN": stack.client_token()[0]})

        def wait_for(check: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 60
            while not check():
                assert time.monotonic() < deadline, what
                time.sleep(0.1)

        workflow_id = cli("submit", str(path)).stdout.strip()
        wait_for(lambda: "running" in cli("status", workflow_id).stdout, "the job runs")
        moto_server.stop()
        try:
            gate.touch()
            wait_for(lambda: "storage unavailable" in _all_output(cli("logs", workflow_id, "saver")),
                     "the job notes that its save waits for storage")
            listing = cli("results", workflow_id)
            assert listing.returncode != 0 and "storage unavailable" in listing.stderr
        finally:
            moto_server.start()
        waited = cli("watch", workflow_id)
        assert waited.returncode == 0, waited.stdout + waited.stderr
        got = tmp_path / "got"
        assert cli("results", workflow_id, "--download", str(got)).returncode == 0
        assert (got / "saver" / "out.txt").read_text() == "kept\n"


def test_dagger_hears_storage_away_in_one_plain_line(stack: Any, moto_server: Any) -> None:
    from donut_common.errors import Unavailable

    moto_server.stop()
    try:
        with pytest.raises(Unavailable) as away:
            stack.archiver.storage.stat("00000000-0000-4000-8000-000000000001")
    finally:
        moto_server.start()
    message = str(away.value)
    assert message.startswith("storage unavailable: ") and message.count("storage unavailable") == 1, message
