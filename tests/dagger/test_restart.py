"""A dagger killed mid-run (SIGKILL, no clean-up) resumes its workflows from etcd when
started again: succeeded jobs are not re-run, the interrupted one runs again, and what the
dead process left running is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut_common.etcd_server import EtcdServer, free_port
from donut_common.rpc import channel
from tests.dagger.conftest import (
    assert_every_attempt_ran_once,
    job_processes,
    marks_so_far,
    sh,
    status_name,
    submit_marked_load,
)

pytestmark = pytest.mark.slow


def up_log(data_dir: Path) -> Path:
    """Where `donut up` over data_dir writes its stderr, every start appended: a file, never
    a pipe, which a chatty (-v) stack would fill and block on while the test waits for it."""
    return data_dir.parent / "up.log"


def start_up(data_dir: Path, home: Path, etcd: EtcdServer, prefix: str, port: int = 0,
             *extra: str) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    config = home / "client.json"
    config.unlink(missing_ok=True)
    log = up_log(data_dir)
    with log.open("ab") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "donut_cli", "up", "--data-dir", str(data_dir), "--port", str(port),
             "--http-port", "-1", "--etcd-endpoints", etcd.endpoint, "--etcd-prefix", prefix, "--kill-grace", "1",
             *extra],
            env={**os.environ, "DONUT_HOME": str(home), "PYTHONFAULTHANDLER": "1"}, stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.time() + 30
    while not config.exists():
        assert process.poll() is None, log.read_text()
        assert time.time() < deadline, "donut up did not start"
        time.sleep(0.05)
    return process, json.loads(config.read_text())


def stop_up(process: subprocess.Popen[bytes], data_dir: Path, stop: signal.Signals = signal.SIGTERM) -> None:
    """Stops `donut up` as Ctrl-C does and expects a clean exit within 30 s; one that hangs
    is made to dump every thread's stack (SIGABRT, with PYTHONFAULTHANDLER) into its log,
    which the failure shows."""
    process.send_signal(stop)
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        process.wait()
        raise AssertionError(f"donut up did not stop; its log:\n{up_log(data_dir).read_text()[-20000:]}") from None
    assert code == 0, up_log(data_dir).read_text()[-5000:]


def test_killed_scheduler_resumes_without_rerunning_succeeded_jobs(
        tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str) -> None:
    data_dir, home = tmp_path / "data", tmp_path / "home"
    process, config = start_up(data_dir, home, etcd_server, etcd_prefix)
    stub = dagger_pb2_grpc.DaggerStub(channel(config["endpoint"], token=config["token"]))
    jobs = [sh("echo run >> a.runs", "a"),
            sh('echo "b attempt $DONUT_JOB_ATTEMPT"; [ "$DONUT_JOB_ATTEMPT" = 1 ] && sleep 60; true', "b"),
            sh("true", "c")]
    definition = json.dumps({"jobs": jobs, "neighbors": {"a": ["b"], "b": ["c"]}})
    workflow_id = stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=definition.encode())).id
    deadline = time.time() + 30
    while stub.GetJob(pb.GetJobRequest(workflow_id=workflow_id, name="b")).status != pb.JOB_STATUS_RUNNING:
        assert time.time() < deadline
        time.sleep(0.05)
    while not job_processes(workflow_id):
        assert time.time() < deadline
        time.sleep(0.05)

    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 10
    while job_processes(workflow_id):  # no job outlives donut up, however it ends
        assert time.time() < deadline, "a job outlived donut up"
        time.sleep(0.05)

    process, config = start_up(data_dir, home, etcd_server, etcd_prefix)
    try:
        stub = dagger_pb2_grpc.DaggerStub(channel(config["endpoint"], token=config["token"]))
        for w in stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id), timeout=60):
            if w.status not in (pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING):
                break
        assert w.status == pb.WORKFLOW_STATUS_DONE
        found = {j.name: j for j in stub.ListJobs(pb.ListJobsRequest(workflow_id=workflow_id)).jobs}
        assert (found["a"].attempt, found["b"].attempt, found["c"].attempt) == (1, 2, 1)
        assert [status_name(a.status) for a in found["b"].attempts] == ["dead", "succeeded"]
        assert (data_dir / "workflows" / workflow_id / "a.runs").read_text() == "run\n"
        assert job_processes(workflow_id) == []
        first_log = b"".join(line.text for m in stub.TailLogs(pb.TailLogsRequest(
            workflow_id=workflow_id, job="b", attempt=1)) for line in m.lines)
        assert b"b attempt 1" in first_log
    finally:
        stop_up(process, data_dir)


def test_log_followers_ride_out_a_killed_stack(tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str) -> None:
    """`donut logs --follow` of a running job, of one still waiting and of the whole workflow,
    while `donut up` is killed and started again: the running attempt is lost and run again,
    and the followers go on through the new attempts to the end, every line once."""
    data_dir, home, port = tmp_path / "data", tmp_path / "home", free_port()
    process, config = start_up(data_dir, home, etcd_server, etcd_prefix, port)
    stub = dagger_pb2_grpc.DaggerStub(channel(config["endpoint"], token=config["token"]))
    jobs = [sh('echo "a $DONUT_JOB_ATTEMPT"; [ "$DONUT_JOB_ATTEMPT" = 1 ] && sleep 60; echo "a done"', "a"),
            sh('echo "b $DONUT_JOB_ATTEMPT"', "b")]
    definition = json.dumps({"jobs": jobs, "neighbors": {"a": ["b"]}})
    workflow_id = stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=definition.encode())).id
    deadline = time.time() + 30
    while not any(m.lines for m in stub.TailLogs(pb.TailLogsRequest(workflow_id=workflow_id, job="a"))):
        assert time.time() < deadline
        time.sleep(0.05)

    def follow(*job: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "donut_cli", "logs", workflow_id, *job, "--follow"],
            env={**os.environ, "DONUT_HOME": str(home), "DONUT_ENDPOINT": config["endpoint"],
                 "DONUT_TOKEN": config["token"]}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    followers = {"a": follow("a"), "b": follow("b"), "all": follow()}
    assert followers["a"].stdout.readline() == b"a 1\n"  # type: ignore[union-attr]
    assert followers["all"].stdout.readline() == b"a: a 1\n"  # type: ignore[union-attr]
    time.sleep(1)  # b's follower, started with a's, is waiting for b to start
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(1.5)  # the followers notice
    process, config = start_up(data_dir, home, etcd_server, etcd_prefix, port)
    try:
        a_out, a_notes = followers["a"].communicate(timeout=60)
        b_out, b_notes = followers["b"].communicate(timeout=60)
        assert followers["a"].returncode == 0, a_notes
        assert a_out.splitlines() == [b"a 2", b"a done"]
        assert b"attempt 2" in a_notes and b"lost the connection" in a_notes
        assert followers["b"].returncode == 0, b_notes
        assert b_out.splitlines() == [b"b 1"]
        all_out, all_notes = followers["all"].communicate(timeout=60)
        assert followers["all"].returncode == 0, all_notes
        assert all_out.splitlines() == [b"a: a 2", b"a: a done", b"b: b 1"]
        assert b"a: [donut] attempt 2" in all_notes and b"lost the connection" in all_notes
    finally:
        for follower in followers.values():
            follower.kill()
        stop_up(process, data_dir)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP])  # SIGHUP: its terminal closed
def test_sigterm_stops_the_stack_and_its_jobs(tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str,
                                              stop: signal.Signals) -> None:
    process, config = start_up(tmp_path / "data", tmp_path / "home", etcd_server, etcd_prefix)
    stub = dagger_pb2_grpc.DaggerStub(channel(config["endpoint"], token=config["token"]))
    definition = json.dumps({"jobs": [sh("sleep 60 & sleep 60", "long")]})
    workflow_id = stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=definition.encode())).id
    deadline = time.time() + 30
    while len(job_processes(workflow_id)) < 2:
        assert time.time() < deadline
        time.sleep(0.05)
    stop_up(process, tmp_path / "data", stop)
    assert job_processes(workflow_id) == []


def test_killed_under_load_no_attempt_runs_twice(tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str) -> None:
    """dagger is killed (SIGKILL) while workflows of short jobs run; started again, it
    finishes every one, and no (job, attempt) ran twice."""
    data_dir, home = tmp_path / "data", tmp_path / "home"
    process, config = start_up(data_dir, home, etcd_server, etcd_prefix)
    stub = dagger_pb2_grpc.DaggerStub(channel(config["endpoint"], token=config["token"]))
    workflows = submit_marked_load(stub)
    root = data_dir / "workflows"
    deadline = time.time() + 30
    while marks_so_far(root, workflows) < 30:  # well under way
        assert time.time() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()

    process, config = start_up(data_dir, home, etcd_server, etcd_prefix)
    try:
        stub = dagger_pb2_grpc.DaggerStub(channel(config["endpoint"], token=config["token"]))
        assert_every_attempt_ran_once(stub, root, workflows)
    finally:
        stop_up(process, data_dir)


@pytest.mark.parametrize("executor", ["local", "wrapper"])
def test_a_clean_stop_terminates_jobs_with_grace_and_the_next_start_runs_them_again(
        tmp_path: Path, stack_config: Any, executor: str) -> None:
    """A stopping stack sends its jobs SIGTERM and gives them the grace before SIGKILL; the
    attempt ends `dead`, "stopped with the stack", and the next start runs the job again."""
    import dataclasses

    from donut_cli.stack import Stack
    from tests.dagger.conftest import Driver

    config = dataclasses.replace(stack_config, executor=executor, kill_grace=5.0)
    script = ('if [ "$DONUT_JOB_ATTEMPT" = 1 ]; then trap "sleep 0.5; echo graceful > term; exit 1" TERM; '
              'touch started; sleep 30 & wait; fi; echo again')
    with Stack(config) as stack:
        stack.admin_token = stack.client_token()[0]
        driver = Driver(stack)
        workflow_id = driver.submit([sh(script, "job")])
        deadline = time.time() + 30
        while not (driver.workdir(workflow_id) / "started").exists():
            assert time.time() < deadline
            time.sleep(0.05)
        driver.close()
    assert (driver.workdir(workflow_id) / "term").read_text() == "graceful\n"  # it had its grace
    assert job_processes(workflow_id) == []
    with Stack(config) as stack:
        stack.admin_token = stack.client_token()[0]
        driver = Driver(stack)
        w = driver.wait(workflow_id, timeout=30)
        job = driver.jobs(workflow_id)["job"]
        assert w.status == pb.WORKFLOW_STATUS_DONE
        assert [(a.number, status_name(a.status), a.message) for a in job.attempts] == [
            (1, "dead", "stopped with the stack"), (2, "succeeded", "")]
        driver.close()


def test_followers_find_a_stack_started_again_on_another_port(tmp_path: Path, etcd_server: EtcdServer,
                                                              etcd_prefix: str) -> None:
    """`donut watch` and `donut logs -f`, reading the client config only, while `donut up
    --port 0` is killed and started again on another port: they take up the new endpoint
    from the client config and follow the workflow to its end."""
    data_dir, home = tmp_path / "data", tmp_path / "home"
    process, config = start_up(data_dir, home, etcd_server, etcd_prefix)
    stub = dagger_pb2_grpc.DaggerStub(channel(config["endpoint"], token=config["token"]))
    definition = json.dumps({"jobs": [sh('echo "a $DONUT_JOB_ATTEMPT"; [ "$DONUT_JOB_ATTEMPT" = 1 ] && sleep 60; '
                                         'echo "a done"', "a")]})
    workflow_id = stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=definition.encode())).id
    env = {k: v for k, v in os.environ.items() if not k.startswith("DONUT_")} | {"DONUT_HOME": str(home)}
    watch = subprocess.Popen([sys.executable, "-m", "donut_cli", "watch", workflow_id], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    logs = subprocess.Popen([sys.executable, "-m", "donut_cli", "logs", workflow_id, "-f"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert logs.stdout is not None and logs.stdout.readline() == b"a: a 1\n"  # both are following
        assert watch.stdout is not None and watch.stdout.readline()
        process.send_signal(signal.SIGKILL)
        process.wait()
        time.sleep(1.5)  # the followers notice
        process, moved = start_up(data_dir, home, etcd_server, etcd_prefix)
        assert moved["endpoint"] != config["endpoint"]
        _, watch_notes = watch.communicate(timeout=60)
        assert watch.returncode == 0, watch_notes
        assert moved["endpoint"].encode() in watch_notes
        followed, log_notes = logs.communicate(timeout=60)
        assert logs.returncode == 0, log_notes
        assert followed.splitlines()[-2:] == [b"a: a 2", b"a: a done"]
    finally:
        watch.kill()
        logs.kill()
        stop_up(process, data_dir)


def test_verbose_logs_the_scheduling_decisions(tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str) -> None:
    data_dir = tmp_path / "data"
    process, config = start_up(data_dir, tmp_path / "home", etcd_server, etcd_prefix, 0, "-v")
    stub = dagger_pb2_grpc.DaggerStub(channel(config["endpoint"], token=config["token"]))
    definition = json.dumps({"jobs": [sh("true", "a"), sh("exit 3", "b")], "neighbors": {"a": ["b"]}})
    workflow_id = stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=definition.encode())).id
    for w in stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id), timeout=60):
        if w.status not in (pb.WORKFLOW_STATUS_QUEUED, pb.WORKFLOW_STATUS_RUNNING):
            break
    stop_up(process, data_dir)
    logged = up_log(data_dir).read_text()
    for line in (f"took run {workflow_id} over (queued)", f"launching {workflow_id}/a attempt 1",
                 f"{workflow_id}/a attempt 1 ended: succeeded", f"{workflow_id}/b attempt 1 ended: exited with code 3",
                 f"workflow {workflow_id} failed"):
        assert line in logged, logged
