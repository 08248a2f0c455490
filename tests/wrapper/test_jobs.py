"""Jobs on a whole stack whose executor runs each attempt as a `streamed-job` process:
inputs, outputs, odd output, a lot of output, and attempts that end badly."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from donut.dagger.v1 import dagger_pb2 as pb
from donut_common.rpc import channel
from streamed_job.cellar import CellarClient
from tests.dagger.conftest import job_processes, status_name
from tests.wrapper.conftest import WrapperDriver, closed_port, dump, py, sh

STDOUT, STDERR, SYSTEM = 1, 2, 3
EXIT_INPUT_FAILED, EXIT_OUTPUT_FAILED = 90, 91


def failed_with(job: pb.Job, exit_code: int, *words: str) -> None:
    assert status_name(job.status) == "failed", dump(job)
    assert job.exit_code == exit_code, dump(job)
    for word in words:
        assert word in job.message, dump(job)


def wait_for_line(driver: WrapperDriver, workflow_id: str, text: bytes, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.jobs(workflow_id)["job"].attempt and text in driver.texts(workflow_id, "job"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in the log")


def wait_until_gone(workflow_id: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while job_processes(workflow_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job_processes(workflow_id) == []


# ---- inputs and outputs ----------------------------------------------------------------

def test_cache_and_origin_inputs_are_fetched_and_outputs_saved(wdriver: WrapperDriver, http_files: Any,
                                                                 tmp_path: Path) -> None:
    base_url, served = http_files
    (served / "fruit.txt").write_text("apple\n")
    upload = tmp_path / "data.csv"
    upload.write_text("a,b\n")
    upload_id = f"up-{uuid.uuid4().hex[:8]}"
    user_channel = channel(wdriver.stack.endpoint, token=wdriver.stack.admin_token)
    CellarClient(user_channel).put("cache", upload_id, "data.csv", upload)
    job = sh("mkdir -p out; cat data.csv fruit.txt > out/both.txt; echo made it", inputs=[
        {"cache": "data.csv", "local": "data.csv"}, {"origin": f"{base_url}/fruit.txt", "local": "fruit.txt"}],
        outputs=[{"local": "out/both.txt", "save": True}])
    workflow_id = wdriver.stub.CreateWorkflow(pb.CreateWorkflowRequest(
        definition=json.dumps({"jobs": [job]}).encode(), upload_id=upload_id)).id
    wdriver.wait(workflow_id)

    result = wdriver.jobs(workflow_id)["job"]
    assert status_name(result.status) == "succeeded", dump(result)
    notes = wdriver.texts(workflow_id, "job", SYSTEM)
    assert notes[0] == b"fetched cache data.csv -> data.csv"
    assert notes[1].startswith(b"fetched http://") and notes[1].endswith(b"-> fruit.txt (6 bytes)")
    assert notes[2] == b"saved out/both.txt (10 bytes)"
    assert wdriver.texts(workflow_id, "job", STDOUT) == [b"made it"]
    saved = tmp_path / "saved.txt"
    CellarClient(user_channel).get("result", workflow_id, "out/both.txt", saved, job="job")
    assert saved.read_text() == "a,b\napple\n"
    user_channel.close()


def test_an_unreachable_origin_fails_the_inputs(wdriver: WrapperDriver) -> None:
    url = f"http://127.0.0.1:{closed_port()}/data.zip"
    workflow_id, job = wdriver.run(sh("echo never", inputs=[{"origin": url, "local": "data.zip"}]))
    failed_with(job, EXIT_INPUT_FAILED, "inputs[0] (data.zip)", f"cannot download {url}")
    assert wdriver.texts(workflow_id, "job") == [job.message.encode()]  # the command never ran


def test_a_404_fails_the_inputs(wdriver: WrapperDriver, http_files: Any) -> None:
    base_url, _ = http_files
    _, job = wdriver.run(sh("echo never", inputs=[{"origin": f"{base_url}/gone.txt", "local": "gone.txt"}]))
    failed_with(job, EXIT_INPUT_FAILED, f"GET {base_url}/gone.txt answered 404")


@pytest.mark.parametrize("link, local, why", [
    ("ln -s /etc outside", "outside/hostname", "outside/hostname: leads outside the workflow"),
    ("ln -s loop loop", "loop/x", "loop/x: cannot be resolved"),
])
def test_an_input_through_a_bad_symlink_fails_the_inputs(wdriver: WrapperDriver, link: str, local: str,
                                                         why: str) -> None:
    workflow_id = wdriver.submit([sh(link, name="plant"), sh(f"cat {local}", name="job", inputs=[{"local": local}])],
                                 neighbors={"plant": ["job"]})
    wdriver.wait(workflow_id)
    failed_with(wdriver.jobs(workflow_id)["job"], EXIT_INPUT_FAILED, why)


def test_a_missing_local_input_fails_the_inputs(wdriver: WrapperDriver) -> None:
    _, job = wdriver.run(sh("echo never", inputs=[{"local": "nothing.txt"}]))
    failed_with(job, EXIT_INPUT_FAILED, "inputs[0] (nothing.txt): missing")


def test_a_missing_output_fails_the_outputs(wdriver: WrapperDriver) -> None:
    workflow_id, job = wdriver.run(sh("echo working", outputs=[{"local": "never.txt", "save": True}]))
    failed_with(job, EXIT_OUTPUT_FAILED, "outputs[0] (never.txt): missing after the command ended")
    assert wdriver.texts(workflow_id, "job") == [b"working", job.message.encode()]


def test_a_command_not_found_says_so(wdriver: WrapperDriver) -> None:
    workflow_id, job = wdriver.run({"name": "job", "image": "x", "cmd": "no-such-command-here", "args": ["a"]})
    failed_with(job, 127, "command not found: no-such-command-here")
    assert wdriver.texts(workflow_id, "job", SYSTEM) == [b"command not found: no-such-command-here"]


# ---- output --------------------------------------------------------------------------------

def test_binary_output_and_an_unfinished_last_line_arrive_as_printed(wdriver: WrapperDriver) -> None:
    workflow_id, job = wdriver.run(sh(r"printf '\377\376 not utf-8\n'; printf 'caf\351\n' >&2; printf 'no newline'"))
    assert status_name(job.status) == "succeeded", dump(job)
    # (each stream in order; how stdout and stderr interleave is up to the pipes)
    assert wdriver.texts(workflow_id, "job", STDOUT) == [b"\xff\xfe not utf-8", b"no newline"]
    assert wdriver.texts(workflow_id, "job", STDERR) == [b"caf\xe9"]


def test_one_mebibyte_lines_arrive_whole_and_longer_ones_in_pieces(wdriver: WrapperDriver) -> None:
    code = ("import sys; w = sys.stdout.buffer.write; w(b'a' * 1048576 + b'\\n'); "
            "w(b'b' * (3 * 1048576 + 5) + b'\\n'); w(b'end\\n')")
    workflow_id, job = wdriver.run(py(code))
    assert status_name(job.status) == "succeeded", dump(job)
    lines = wdriver.texts(workflow_id, "job")
    assert [len(line) for line in lines] == [1048576, 1048576, 1048576, 1048576, 5, 3]
    assert lines[0] == b"a" * 1048576 and set(b"".join(lines[1:5])) == {ord("b")} and lines[5] == b"end"


def test_200000_lines_printed_at_full_speed_all_arrive_in_order(wdriver: WrapperDriver) -> None:
    code = "import sys; sys.stdout.write(''.join('%d\\n' % i for i in range(200000)))"
    workflow_id, job = wdriver.run(py(code), timeout=90)
    assert status_name(job.status) == "succeeded", dump(job)
    lines = wdriver.texts(workflow_id, "job", STDOUT)
    assert len(lines) == 200_000
    assert lines == [b"%d" % i for i in range(200_000)]


# ---- attempts that end badly ---------------------------------------------------------------

def test_a_command_over_its_timeout_is_stopped(wdriver: WrapperDriver) -> None:
    workflow_id, job = wdriver.run(sh("echo start; sleep 30", timeout=0.5))
    failed_with(job, 124, "timed out after 0.5s")
    assert wdriver.texts(workflow_id, "job") == [b"start", b"timed out after 0.5s"]
    wait_until_gone(workflow_id)


def test_a_command_killed_by_sigkill_fails_with_the_signal_named(wdriver: WrapperDriver) -> None:
    workflow_id, job = wdriver.run(sh("echo before; kill -KILL $$; echo after"))
    assert status_name(job.status) == "failed", dump(job)
    assert job.attempts[-1].signal == "SIGKILL" and job.exit_code == 128 + 9
    assert job.message == "killed by SIGKILL"
    assert wdriver.texts(workflow_id, "job") == [b"before", b"killed by SIGKILL"]


def wrapper_pid(key: str) -> int:
    needle = f"DONUT_JOB_KEY={key}".encode()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    if b"streamed_job.main" not in f.read():
                        continue
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        return int(entry.name)
            except OSError:
                pass
    raise AssertionError(f"no wrapper process for {key}")


def test_a_wrapper_killed_by_sigkill_is_reported_by_the_executor(wdriver: WrapperDriver) -> None:
    workflow_id = wdriver.submit([sh("echo started; sleep 60")])
    wait_for_line(wdriver, workflow_id, b"started")
    os.kill(wrapper_pid(f"{workflow_id}/job/1"), signal.SIGKILL)
    wdriver.wait(workflow_id, timeout=30)

    job = wdriver.jobs(workflow_id)["job"]
    assert status_name(job.status) == "failed", dump(job)
    assert job.attempts[-1].signal == "SIGKILL"
    assert job.message == "the job wrapper was killed by SIGKILL"
    assert wdriver.texts(workflow_id, "job") == [b"started", b"the job wrapper was killed by SIGKILL"]
    wait_until_gone(workflow_id)  # the command it left behind is gone too


def test_a_command_that_ends_cleanly_on_sigterm_is_terminated_and_saves_nothing(wdriver: WrapperDriver) -> None:
    script = "trap 'echo partial > out.txt; exit 0' TERM; echo ready; while true; do sleep 0.1; done"
    workflow_id = wdriver.submit([sh(script, outputs=[{"local": "out.txt", "save": True}])])
    wait_for_line(wdriver, workflow_id, b"ready")
    wdriver.stub.CancelWorkflow(pb.CancelWorkflowRequest(id=workflow_id))
    wdriver.wait(workflow_id, timeout=30)

    job = wdriver.jobs(workflow_id)["job"]
    assert status_name(job.status) == "terminated", dump(job)
    assert job.exit_code == 0 and "SIGTERM" in job.message, dump(job)
    cellar = CellarClient(channel(wdriver.stack.endpoint, token=wdriver.stack.admin_token))
    assert cellar.list("result", workflow_id) == []


def test_cancel_forwards_sigterm_to_the_command(wdriver: WrapperDriver) -> None:
    script = "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.1; done"
    workflow_id = wdriver.submit([sh(script)])
    wait_for_line(wdriver, workflow_id, b"ready")
    wdriver.stub.CancelWorkflow(pb.CancelWorkflowRequest(id=workflow_id))
    workflow = wdriver.wait(workflow_id, timeout=30)

    job = wdriver.jobs(workflow_id)["job"]
    assert status_name(job.status) == "terminated", dump(job)
    assert workflow.status == pb.WORKFLOW_STATUS_TERMINATED
    assert job.exit_code == 7
    log = wdriver.texts(workflow_id, "job")
    assert log[:2] == [b"ready", b"SIGTERM received: stopping the command"]
    assert b"got TERM" in log[2:]
    wait_until_gone(workflow_id)


def test_a_planted_partial_download_link_is_not_followed(wdriver: WrapperDriver, http_files: Any,
                                                         tmp_path: Path) -> None:
    """A job plants symbolic links where a download's temporary file used to go; the next
    job's download writes only its own file."""
    base_url, served = http_files
    (served / "data.txt").write_text("fetched\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched\n")
    plant = sh(f"ln -s {outside} data.txt.part; ln -s {outside} .data.txt.part", name="plant")
    fetch = sh("cat data.txt", name="fetch", inputs=[{"origin": f"{base_url}/data.txt", "local": "data.txt"}])
    workflow_id = wdriver.submit([plant, fetch], {"plant": ["fetch"]})
    assert wdriver.wait(workflow_id).status == pb.WORKFLOW_STATUS_DONE
    assert outside.read_text() == "untouched\n"
    assert (wdriver.workdir(workflow_id) / "data.txt").read_text() == "fetched\n"


def test_a_planted_partial_cache_download_link_is_not_followed(wdriver: WrapperDriver, tmp_path: Path) -> None:
    upload = tmp_path / "data.csv"
    upload.write_text("a,b\n")
    upload_id = f"up-{uuid.uuid4().hex[:8]}"
    CellarClient(wdriver.channel).put("cache", upload_id, "data.csv", upload)
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched\n")
    plant = sh(f"ln -s {outside} data.csv.part", name="plant")
    fetch = sh("cat data.csv", name="fetch", inputs=[{"cache": "data.csv", "local": "data.csv"}])
    definition = json.dumps({"jobs": [plant, fetch], "neighbors": {"plant": ["fetch"]}}).encode()
    workflow_id = wdriver.stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=definition, upload_id=upload_id)).id
    assert wdriver.wait(workflow_id).status == pb.WORKFLOW_STATUS_DONE
    assert outside.read_text() == "untouched\n"
    assert (wdriver.workdir(workflow_id) / "data.csv").read_text() == "a,b\n"


def test_a_hard_link_is_never_saved_as_a_result(wdriver: WrapperDriver, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the stack's own file\n")
    workflow_id, job = wdriver.run(sh(f"ln {secret} out.txt", outputs=[{"local": "out.txt", "save": True}]))
    failed_with(job, 91, "outputs[0] (out.txt): a hard link")
    assert CellarClient(wdriver.channel).list("result", workflow_id) == []
