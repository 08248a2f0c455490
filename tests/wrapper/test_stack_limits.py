"""Limits and save deadline through a whole stack whose jobs run under `streamed-job`
processes: the settings reach the wrappers, and a job's results count for its workflow's
owner's quota."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from dagger_svc.executors.wrapper import WrapperExecutor
from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut.users.v1 import users_pb2 as upb
from donut.users.v1 import users_pb2_grpc
from donut_common.rpc import channel
from streamed_job.outcome import EXIT_OUTPUT_FAILED
from streamed_job.spec import SaveSettings
from tests.wrapper.conftest import WrapperDriver, dump, sh


@pytest.fixture
def limited_stack(stack_config: Any) -> Iterator[Any]:
    from donut_cli.stack import Stack

    config = dataclasses.replace(stack_config, executor="wrapper", quota_bytes=1000, save=SaveSettings(deadline=42))
    with Stack(config) as stack:
        stack.admin_token = stack.client_token()[0]
        yield stack


def as_user(stack: Any, login: str) -> WrapperDriver:
    users = users_pb2_grpc.UsersStub(channel(stack.endpoint, token=stack.admin_token))
    users.CreateUser(upb.CreateUserRequest(login=login))
    driver = WrapperDriver(stack)
    driver.channel = channel(stack.endpoint, token=users.CreateToken(
        upb.CreateTokenRequest(user_login=login, name=login)).secret)
    driver.stub = dagger_pb2_grpc.DaggerStub(driver.channel)
    return driver


def test_a_job_s_results_count_for_its_owner_s_quota(limited_stack: Any) -> None:
    assert isinstance(limited_stack.executor, WrapperExecutor) and limited_stack.executor.save.deadline == 42
    alice = as_user(limited_stack, "alice")
    small = sh("head -c 600 /dev/zero > out.bin", name="small", outputs=[{"local": "out.bin", "save": True}])
    _, job = alice.run(small)
    assert job.status == pb.JOB_STATUS_SUCCEEDED, dump(job)
    big = sh("head -c 600 /dev/zero > out.bin", name="big", outputs=[{"local": "out.bin", "save": True}])
    _, job = alice.run(big)  # 600 more would pass her 1000
    assert job.status == pb.JOB_STATUS_FAILED and job.exit_code == EXIT_OUTPUT_FAILED, dump(job)
    assert job.message == ("cannot save outputs: RESOURCE_EXHAUSTED: Put: over the per-user quota of 1000 bytes "
                           "(600 bytes in use)")
    admin = WrapperDriver(limited_stack)  # an admin's workflow is not limited
    _, job = admin.run(big)
    assert job.status == pb.JOB_STATUS_SUCCEEDED, dump(job)
    alice.close()
    admin.close()
