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
