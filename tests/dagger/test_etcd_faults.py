"""etcd stalled (SIGSTOP for longer than the scheduler's lease, then SIGCONT) or killed
(the embedded one, which `donut up` starts again) while workflows of short jobs run: the
stack needs no restart, every workflow ends done, and no (job, attempt) ran twice."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any

import grpc
import pytest

from donut.dagger.v1 import dagger_pb2 as pb
from donut_cli.stack import Stack
from tests.dagger.conftest import Driver, assert_every_attempt_ran_once, marks_so_far, submit_marked_load

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fault", ["stall", "kill"])
def test_an_etcd_fault_under_load_loses_nothing_and_runs_nothing_twice(stack_config: Any, fault: str) -> None:
    config = dataclasses.replace(stack_config, etcd_endpoints="", etcd_fsync=False, lease_ttl=2)
    with Stack(config) as stack:
        stack.admin_token = stack.client_token()[0]
        driver = Driver(stack)
        workflows = submit_marked_load(driver.stub)
        root = driver.workdir(workflows[0]).parent
        deadline = time.monotonic() + 30
        while marks_so_far(root, workflows) < 20:  # well under way
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert stack.etcd is not None and stack.etcd.process is not None
        if fault == "stall":
            os.kill(stack.etcd.process.pid, signal.SIGSTOP)
            time.sleep(6)  # longer than the lease's life and than an etcd call may take
            os.kill(stack.etcd.process.pid, signal.SIGCONT)
        else:
            stack.etcd.process.kill()
        deadline = time.monotonic() + 20
        while True:  # calls fail, saying why, until etcd answers again: then by themselves
            try:
                driver.stub.GetWorkflow(pb.GetWorkflowRequest(id=workflows[0]), timeout=10)
                break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE and "etcd unavailable" in e.details(), e.details()
                assert time.monotonic() < deadline, "the stack did not recover"
                time.sleep(0.2)
        assert_every_attempt_ran_once(driver.stub, root, workflows)
        driver.close()
