"""The Prometheus metrics a stack serves, scraped over HTTP as Prometheus would: counters
move with what the stack does (they are process-wide, so every check is a difference
between two scrapes), the workflow gauge matches etcd, and a scrape answers without etcd."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dagger_svc.core.records import WorkflowStatus
from dagger_svc.workflow_counts import WorkflowCounts
from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc as pb_grpc
from donut_common import etcd as etcd_ops
from donut_common.metrics import serve
from donut_common.rpc import channel
from tests.conftest import MovableClock
from tests.dagger.conftest import Driver, rpc_code, sh

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
DAGGER = "/donut.dagger.v1.Dagger/"
MISSING = "00000000-0000-4000-8000-000000000000"


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=30) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def eventually(url: str, done: Callable[[Samples], bool], timeout: float = 30) -> Samples:
    """The first scrape for which `done` holds (what the scheduler counts after a commit may
    lag behind what a client already sees)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if done(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def grown(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_a_workflow_run_moves_the_job_log_and_request_counters(driver: Driver) -> None:
    url = driver.stack.metrics_url
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    before = scrape(url)
    workflow_id = driver.submit([sh("echo one; echo two; echo three", "good"), sh("echo bad >&2; exit 3", "bad"),
                                 sh("true", "after")], {"good": ["after"]})
    assert driver.wait(workflow_id).status == pb.WORKFLOW_STATUS_FAILED
    list(driver.stub.TailLogs(pb.TailLogsRequest(workflow_id=workflow_id, job="good")))
    assert rpc_code(lambda: driver.stub.GetWorkflow(pb.GetWorkflowRequest(id=MISSING))) == grpc.StatusCode.NOT_FOUND
    stranger = pb_grpc.DaggerStub(channel(driver.stack.endpoint, token="not-a-token"))
    assert rpc_code(lambda: stranger.ListWorkflows(pb.ListWorkflowsRequest())) == grpc.StatusCode.UNAUTHENTICATED

    after = eventually(url, lambda s: grown(before, s, "donut_jobs_finished_total", status="succeeded") >= 2
                       and grown(before, s, "donut_jobs_finished_total", status="failed") >= 1)
    assert grown(before, after, "donut_jobs_finished_total", status="succeeded") == 2
    assert grown(before, after, "donut_jobs_finished_total", status="failed") == 1
    assert grown(before, after, "donut_job_launch_delay_seconds_count") == 3
    assert grown(before, after, "donut_job_launch_delay_seconds_sum") >= 0
    assert grown(before, after, "donut_log_lines_total") >= 4  # good's three lines, bad's one
    assert grown(before, after, "donut_etcd_txn_seconds_count") > 0
    requests = "donut_grpc_requests_total"
    assert grown(before, after, requests, method=DAGGER + "CreateWorkflow", code="OK") == 1
    assert grown(before, after, requests, method=DAGGER + "TailLogs", code="OK") == 1  # a stream, to its end
    assert grown(before, after, requests, method=DAGGER + "GetWorkflow", code="NOT_FOUND") == 1
    assert grown(before, after, requests, method=DAGGER + "ListWorkflows", code="UNAUTHENTICATED") == 1
    assert grown(before, after, requests, method=DAGGER + "ListWorkflows", code="OK") == 0
    assert grown(before, after, "donut_takeovers_total") == 0  # fresh workflows are not taken over


def test_a_run_taken_back_after_a_restart_counts_as_a_take_over(stack_config: Any) -> None:
    """The attempt the stop ended is `dead` (counted once), and the restarted stack picks the
    run up mid-way: a take-over."""
    from donut_cli.stack import Stack

    with Stack(stack_config) as first:
        first.admin_token = first.client_token()[0]
        driver = Driver(first)
        try:
            workflow_id = driver.submit([sh("sleep 30", "slow")])
            driver.wait_until(workflow_id, lambda w: any(j.status == pb.JOB_STATUS_RUNNING for j in w.jobs))
        finally:
            driver.close()
        before = scrape(first.metrics_url)
    with Stack(stack_config) as second:
        second.admin_token = second.client_token()[0]
        driver = Driver(second)
        try:
            driver.wait_until(workflow_id, lambda w: any(j.status == pb.JOB_STATUS_RUNNING and j.attempt == 2
                                                         for j in w.jobs))
            after = eventually(second.metrics_url, lambda s: grown(before, s, "donut_takeovers_total") >= 1)
            driver.stub.CancelWorkflow(pb.CancelWorkflowRequest(id=workflow_id))
            driver.wait(workflow_id)
        finally:
            driver.close()
    assert grown(before, after, "donut_takeovers_total") == 1
    assert grown(before, after, "donut_jobs_finished_total", status="dead") == 1


def test_a_transaction_whose_compare_fails_counts_as_a_conflict(etcd_client: Any, etcd_prefix: str) -> None:
    url, stop = serve("127.0.0.1", 0)
    try:
        before = scrape(url)
        key = etcd_prefix + "contested"
        assert etcd_client.txn([etcd_ops.absent(key)], [etcd_ops.put(key, "first")]).succeeded
        assert not etcd_client.txn([etcd_ops.absent(key)], [etcd_ops.put(key, "second")]).succeeded
        after = scrape(url)
    finally:
        stop()
    assert grown(before, after, "donut_etcd_txn_conflicts_total") == 1
    assert grown(before, after, "donut_etcd_txn_seconds_count") == 2


def test_the_workflow_gauge_counts_the_stored_workflows_by_status(driver: Driver) -> None:
    done = driver.submit([sh("true", "a")])
    failed = driver.submit([sh("exit 1", "a")])
    running = driver.submit([sh("sleep 30", "a")])
    driver.wait(done)
    driver.wait(failed)
    driver.wait_until(running, lambda w: any(j.status == pb.JOB_STATUS_RUNNING for j in w.jobs))
    samples = scrape(driver.stack.metrics_url)
    stored = Counter(w.status.value for w in driver.stack.store.workflows())
    assert stored == {"done": 1, "failed": 1, "running": 1}
    assert {status.value: value(samples, "donut_workflows", status=status.value) for status in WorkflowStatus} \
        == {status.value: stored[status.value] for status in WorkflowStatus}


def test_workflow_counts_are_read_again_only_once_they_are_old(store: Any) -> None:
    from dagger_svc.core.definition import parse_definition
    from dagger_svc.core.records import JobRecord, WorkflowId, WorkflowRecord

    clock = MovableClock()
    counts = WorkflowCounts(store, every=5.0, clock=clock.monotonic)
    assert counts.counts() == {}
    definition = parse_definition(json.dumps({"jobs": [sh("true", "a")]}))
    store.create_workflow(WorkflowRecord(id=WorkflowId(MISSING), name="w"), definition, {"a": JobRecord("a")})
    assert counts.counts() == {}  # the count of a moment ago
    clock.advance(5.0)
    assert counts.counts() == {"queued": 1}


def test_a_scrape_answers_with_the_last_figures_while_etcd_is_away(tmp_path: Path, stack_config: Any,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from donut_cli.stack import Stack
    from donut_common.clock import Clock
    from donut_common.etcd_server import EtcdServer

    etcd = EtcdServer(tmp_path / "etcd", fsync=False).start()
    clock = MovableClock()
    config = dataclasses.replace(stack_config, etcd_endpoints=etcd.endpoint, etcd_access=etcd.access)
    try:
        with Stack(config, clock=Clock(time=clock.time, monotonic=clock.monotonic)) as stack:
            stack.admin_token = stack.client_token()[0]
            driver = Driver(stack)
            try:
                driver.wait(driver.submit([sh("true", "a")]))
            finally:
                driver.close()
            assert value(scrape(stack.metrics_url), "donut_workflows", status="done") == 1
            etcd.stop()
            clock.advance(60)  # the count is old: the scrape reads etcd again, and fails to
            samples = scrape(stack.metrics_url)
            assert "cannot count the workflows" in caplog.text
            assert value(samples, "donut_workflows", status="done") == 1
            assert ("donut_takeovers_total", ()) in samples
    finally:
        etcd.stop()


def test_log_lines_pushed_by_job_wrappers_are_counted_with_their_streams(stack_config: Any) -> None:
    """Under the wrapper executor each job pushes its lines over gRPC (a client stream), as
    in a cluster: those lines count, and so does the stream, by its code."""
    from donut_cli.stack import Stack

    with Stack(dataclasses.replace(stack_config, executor="wrapper")) as stack:
        stack.admin_token = stack.client_token()[0]
        driver = Driver(stack)
        try:
            before = scrape(stack.metrics_url)
            workflow_id = driver.submit([sh("echo one; echo two; echo three", "a")])
            assert driver.wait(workflow_id).status == pb.WORKFLOW_STATUS_DONE
            after = eventually(stack.metrics_url, lambda s: grown(before, s, "donut_log_lines_total") >= 3 and grown(
                before, s, "donut_grpc_requests_total", method=DAGGER + "PushLogs", code="OK") >= 1)
        finally:
            driver.close()
    assert grown(before, after, "donut_log_lines_total") >= 3
    assert grown(before, after, "donut_grpc_requests_total", method=DAGGER + "PushLogs", code="OK") >= 1
