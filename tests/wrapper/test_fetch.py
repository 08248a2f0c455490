"""Fetching `origin` inputs from servers that misbehave: a deadline for all of an
attempt's downloads (within the job's timeout), a cancel that interrupts a stalled read,
redirects only to http(s), a size limit, origins limited to public addresses on demand,
and no stalled origin of one workflow holding back another's jobs."""

from __future__ import annotations

import dataclasses
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from donut.dagger.v1 import dagger_pb2 as pb
from streamed_job.origin import public_address
from streamed_job.outcome import EXIT_INPUT_FAILED, EXIT_TIMED_OUT
from streamed_job.pump import ProcessPump
from streamed_job.spec import FetchSettings, InputFile
from tests.dagger.conftest import Driver, status_name
from tests.wrapper.test_attempt import Run, spec

SLACK = 15.0  # seconds a deadline may be overrun on a busy machine; the stalls below last 60


class Origin:
    """An HTTP server on 127.0.0.1 that answers by path: /ok, /trickle (a byte every
    0.2 s, for ever), /stall (headers, then nothing), /huge (announces 1 GB),
    /redirect?to=URL; it counts the requests it got per path."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                with origin._lock:
                    origin.requests[path] = origin.requests.get(path, 0) + 1
                if path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", query.removeprefix("to="))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path not in ("/ok", "/trickle", "/stall", "/huge"):
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", "5" if path == "/ok" else str(10**9))
                self.end_headers()
                if path == "/ok":
                    self.wfile.write(b"fine\n")
                elif path == "/trickle":
                    while not origin.ended.wait(0.2):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                elif path == "/stall":
                    self.wfile.flush()
                    origin.ended.wait(60)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests.get(path, 0)

    def wait_for(self, path: str, count: int = 1, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.count(path) < count:
            assert time.monotonic() < deadline, f"{path} was asked {self.count(path)} times, not {count}"
            time.sleep(0.02)

    def close(self) -> None:
        self.ended.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


@pytest.fixture
def pump() -> Iterator[ProcessPump]:
    running = ProcessPump(kill_grace=1.0)
    yield running
    running.close()


def fetching(pump: ProcessPump, tmp_path: Path, url: str, fetch: FetchSettings | None = None,
             **fields: Any) -> Run:
    return Run(pump, spec(tmp_path, "touch ran", inputs=(InputFile("data.bin", origin=url),), **fields),
               **({"fetch": fetch} if fetch else {}))


# ---- one attempt ------------------------------------------------------------------------

def test_the_job_s_timeout_covers_a_download_that_trickles_for_ever(
        pump: ProcessPump, tmp_path: Path, origin: Origin) -> None:
    run = fetching(pump, tmp_path, f"{origin.base}/trickle", timeout=2)
    began = time.monotonic()
    threading.Thread(target=run.attempt.run, daemon=True).start()
    assert run.done.wait(2 + SLACK), "the download went on past the job's timeout"
    ended = run.ended()
    assert time.monotonic() - began >= 2
    assert ended.exit_code == EXIT_TIMED_OUT
    assert ended.message == "inputs[0] (data.bin): timed out after 2s (the job's timeout covers its inputs)"
    assert not (tmp_path / "ran").exists() and list(tmp_path.iterdir()) == []  # no partial file left


def test_all_downloads_share_one_deadline_without_a_job_timeout(
        pump: ProcessPump, tmp_path: Path, origin: Origin) -> None:
    run = fetching(pump, tmp_path, f"{origin.base}/trickle", FetchSettings(deadline=1.5))
    threading.Thread(target=run.attempt.run, daemon=True).start()
    assert run.done.wait(1.5 + SLACK)
    ended = run.ended()
    assert ended.exit_code == EXIT_INPUT_FAILED
    assert ended.message == "inputs[0] (data.bin): not fetched within 1.5s (the time all inputs may take)"


def test_the_job_s_timeout_counts_from_the_start_of_its_inputs(pump: ProcessPump, tmp_path: Path,
                                                                origin: Origin) -> None:
    run = Run(pump, spec(tmp_path, "sleep 30", timeout=3, inputs=(InputFile("ok.txt", origin=f"{origin.base}/ok"),)))
    run.attempt.run()
    ended = run.ended()
    assert ended.exit_code == EXIT_TIMED_OUT and ended.message == "timed out after 3s"


def test_a_kill_interrupts_a_stalled_download(pump: ProcessPump, tmp_path: Path, origin: Origin) -> None:
    run = fetching(pump, tmp_path, f"{origin.base}/stall")
    threading.Thread(target=run.attempt.run, daemon=True).start()
    origin.wait_for("/stall")
    run.attempt.kill()
    assert run.done.wait(SLACK), "the kill did not interrupt the download"
    ended = run.ended()
    assert (ended.exit_code, ended.signal, ended.message) == (None, "SIGTERM", "terminated while fetching inputs")
    assert origin.count("/stall") == 1  # not tried again
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target", ["file:///etc/hostname", "ftp://127.0.0.1/x", "data:,hello"])
def test_a_redirect_goes_only_to_http_or_https(pump: ProcessPump, tmp_path: Path, origin: Origin,
                                               target: str) -> None:
    url = f"{origin.base}/redirect?to={target}"
    run = fetching(pump, tmp_path, url)
    run.attempt.run()
    ended = run.ended()
    assert ended.exit_code == EXIT_INPUT_FAILED
    assert ended.message == f"inputs[0] (data.bin): {url} redirects to {target}: only http(s) URLs are followed"


def test_a_redirect_to_http_is_followed(pump: ProcessPump, tmp_path: Path, origin: Origin) -> None:
    run = fetching(pump, tmp_path, f"{origin.base}/redirect?to=/ok")
    run.attempt.run()
    assert run.ended().exit_code == 0
    assert (tmp_path / "data.bin").read_bytes() == b"fine\n"


def test_a_download_announced_over_the_limit_is_refused_before_it_is_read(
        pump: ProcessPump, tmp_path: Path, origin: Origin) -> None:
    run = fetching(pump, tmp_path, f"{origin.base}/huge", FetchSettings(max_bytes=1000))
    run.attempt.run()
    ended = run.ended()
    assert ended.exit_code == EXIT_INPUT_FAILED
    assert ended.message == f"inputs[0] (data.bin): {origin.base}/huge is larger than 1000 bytes (the download limit)"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_private_origins_are_refused_when_asked(pump: ProcessPump, tmp_path: Path, origin: Origin,
                                               host: str) -> None:
    url = f"{origin.base}/ok".replace("127.0.0.1", host)
    run = fetching(pump, tmp_path, url, FetchSettings(deny_private=True))
    run.attempt.run()
    ended = run.ended()
    assert ended.exit_code == EXIT_INPUT_FAILED
    assert ended.message.startswith(f"inputs[0] (data.bin): cannot download {url}: {host} is at ")
    assert ended.message.endswith("not a public address (private origins are denied)")
    assert origin.count("/ok") == 0


def test_a_redirect_to_a_private_origin_is_refused_when_asked(pump: ProcessPump, tmp_path: Path,
                                                              origin: Origin) -> None:
    """Redirects are checked like the first URL (here the first one is private too: a
    public server can't be had offline, so the check is seen on the address connected to)."""
    run = fetching(pump, tmp_path, f"{origin.base}/redirect?to={origin.base}/ok", FetchSettings(deny_private=True))
    run.attempt.run()
    assert "not a public address" in run.ended().message
    assert origin.count("/redirect") == 0


@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("93.184.216.34", True),
    ("127.0.0.1", False), ("127.1.2.3", False), ("::1", False), ("0.0.0.0", False), ("::", False),
    ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.1.1", False), ("fd00:ec2::254", False),
    ("169.254.169.254", False), ("fe80::1", False), ("fe80::1%eth0", False), ("100.100.100.200", False),
    ("::ffff:127.0.0.1", False), ("::ffff:169.254.169.254", False), ("224.0.0.1", False), ("ff02::1", False),
])
def test_public_addresses(address: str, public: bool) -> None:
    assert public_address(address) is public


# ---- on a stack -------------------------------------------------------------------------

def origin_job(name: str, url: str) -> dict[str, Any]:
    return {"name": name, "image": "x", "cmd": "/bin/sh", "args": ["-c", "cat data.bin"],
            "inputs": [{"origin": url, "local": "data.bin"}]}


def test_a_stalled_origin_does_not_hold_back_another_workflow(stack: Any, origin: Origin) -> None:
    driver = Driver(stack)
    try:
        stalled = driver.submit([origin_job(f"s{i}", f"{origin.base}/stall") for i in range(12)], parallelism=12)
        origin.wait_for("/stall", 12)
        other = driver.submit([origin_job("ok", f"{origin.base}/ok")])
        workflow = driver.wait(other, timeout=30)
        assert workflow.status == pb.WORKFLOW_STATUS_DONE, [status_name(j.status) for j in workflow.jobs]
        driver.stub.CancelWorkflow(pb.CancelWorkflowRequest(id=stalled))  # cancel interrupts the downloads
        ended = driver.wait(stalled, timeout=SLACK)
        assert ended.status == pb.WORKFLOW_STATUS_TERMINATED
        assert {j.message for j in ended.jobs} == {"terminated while fetching inputs"}
    finally:
        driver.close()


@pytest.mark.parametrize("executor", ["local", "wrapper"])
@pytest.mark.parametrize("fetch, path, message", [
    (FetchSettings(deny_private=True), "/ok", "not a public address (private origins are denied)"),
    (FetchSettings(max_bytes=3), "/ok", "is larger than 3 bytes (the download limit)"),
])
def test_the_stack_s_download_settings_reach_its_jobs(stack_config: Any, origin: Origin, executor: str,
                                                      fetch: FetchSettings, path: str, message: str) -> None:
    from donut_cli.stack import Stack

    with Stack(dataclasses.replace(stack_config, executor=executor, fetch=fetch)) as running:
        running.admin_token = running.client_token()[0]
        driver = Driver(running)
        try:
            workflow_id = driver.submit([origin_job("job", f"{origin.base}{path}")])
            job = driver.wait(workflow_id).jobs[0]
            assert job.exit_code == EXIT_INPUT_FAILED and job.message.endswith(message), job.message
            assert list(driver.workdir(workflow_id).iterdir()) == []  # nothing left behind
        finally:
            driver.close()
