"""dagger killed (SIGKILL) while a job prints, and started again on the same address: the
job's wrapper keeps its unacknowledged lines, reconnects, resends them and reports to the
new dagger, which adopts the running attempt. Every line arrives once, in order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut_common.etcd import Etcd
from donut_common.etcd_server import EtcdServer, free_port
from donut_common.rpc import channel
from tests.dagger.conftest import job_processes
from users_svc.store import UserStore

pytestmark = pytest.mark.slow
LINES = 3000


def start(data_dir: Path, home: Path, port: int, etcd: EtcdServer, prefix: str) -> subprocess.Popen[bytes]:
    config = home / "client.json"
    config.unlink(missing_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "donut_cli", "up", "--data-dir", str(data_dir), "--port", str(port),
         "--http-port", "-1", "--executor", "wrapper", "--etcd-endpoints", etcd.endpoint, "--etcd-prefix", prefix],
        env={**os.environ, "DONUT_HOME": str(home)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while not config.exists():
        assert process.poll() is None and time.time() < deadline, "donut up did not start"
        time.sleep(0.05)
    return process


def test_a_job_printing_through_a_dagger_restart_loses_and_doubles_nothing(
        tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str) -> None:
    data_dir, home, port = tmp_path / "data", tmp_path / "home", free_port()
    process = start(data_dir, home, port, etcd_server, etcd_prefix)
    token = json.loads((home / "client.json").read_text())["token"]
    stub = dagger_pb2_grpc.DaggerStub(channel(f"127.0.0.1:{port}", token=token))
    script = (f"i=1; while [ $i -le {LINES} ]; do echo line $i; i=$((i+1)); [ $((i % 300)) = 0 ] && sleep 0.2; done;"
              " true")
    definition = json.dumps({"jobs": [{"name": "printer", "image": "x", "cmd": "/bin/sh", "args": ["-c", script]}]})
    workflow_id = stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=definition.encode())).id
    follower = subprocess.Popen(  # `donut logs --follow` rides out the restart
        [sys.executable, "-m", "donut_cli", "logs", workflow_id, "printer", "--follow"],
        env={**os.environ, "DONUT_HOME": str(home), "DONUT_ENDPOINT": f"127.0.0.1:{port}", "DONUT_TOKEN": token},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def seen() -> int:
        return sum(len(m.lines) for m in stub.TailLogs(pb.TailLogsRequest(workflow_id=workflow_id, job="printer")))

    deadline = time.time() + 30
    while seen() < 300:
        assert time.time() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert job_processes(workflow_id), "the job and its wrapper go on without dagger"
    time.sleep(0.5)
    process = start(data_dir, home, port, etcd_server, etcd_prefix)
    try:
        token = json.loads((home / "client.json").read_text())["token"]
        stub = dagger_pb2_grpc.DaggerStub(channel(f"127.0.0.1:{port}", token=token))
        for w in stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id), timeout=60):
            if w.status not in (pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING):
                break
        job = stub.GetJob(pb.GetJobRequest(workflow_id=workflow_id, name="printer"))
        assert w.status == pb.WORKFLOW_STATUS_DONE, (job.message, [(a.status, a.message) for a in job.attempts])
        assert job.attempt == 1 and job.exit_code == 0  # adopted, not run again
        lines = [line.text for m in stub.TailLogs(pb.TailLogsRequest(workflow_id=workflow_id, job="printer"))
                 for line in m.lines if line.stream == pb.LOG_STREAM_STDOUT]
        assert lines == [b"line %d" % i for i in range(1, LINES + 1)]
        users = UserStore(Etcd.connect(etcd_server.endpoint), etcd_prefix)
        deadline = time.time() + 20  # revoked once the wrapper has exited, the adopted one's too
        while not all(t.revoked for t in users.tokens() if f"job:{workflow_id}/printer/1" in t.scopes):
            assert time.time() < deadline, "the job token outlived its attempt"
            time.sleep(0.1)
        followed, notes = follower.communicate(timeout=60)
        assert follower.returncode == 0, notes
        assert followed.splitlines() == lines
        assert b"lost the connection" in notes
    finally:
        follower.kill()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
