"""What one caller can hold open: idle streams never starve the server (health, token
checks and unary calls still answer), each caller has a bounded number of open streams
(given back when they end), and a client stream that sends nothing is ended."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from donut.cellar.v1 import cellar_pb2 as cpb
from donut.cellar.v1 import cellar_pb2_grpc
from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut.users.v1 import users_pb2 as upb
from donut.users.v1 import users_pb2_grpc
from donut_cli.stack import Stack
from donut_common.config import ServerLimits
from donut_common.rpc import channel
from tests.dagger.conftest import Driver, sh

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def first_message(call: Any) -> grpc.StatusCode | None:
    """None once the stream has sent its first message, else the status it ended with."""
    try:
        next(call)
        return None
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]


def opened(calls: list[Any], timeout: float = 10) -> list[grpc.StatusCode | None]:
    """What each stream did first, each waited for in its own thread: None when it is open
    (it answered, or neither answered nor ended within the timeout: a follower of a quiet
    job sends nothing), else the status it ended with."""
    outcomes: list[grpc.StatusCode | None] = [None] * len(calls)

    def watch(i: int) -> None:
        outcomes[i] = first_message(calls[i])

    threads = [threading.Thread(target=watch, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return outcomes


def test_a_hundred_idle_streams_of_one_user_leave_health_and_unary_calls_answering(driver: Driver) -> None:
    workflow = driver.submit([sh("sleep 60", "quiet")])
    driver.wait_until(workflow, lambda w: w.jobs[0].status == pb.JOB_STATUS_RUNNING)
    streams = channel(driver.stack.endpoint, token=driver.stack.admin_token)
    stub = dagger_pb2_grpc.DaggerStub(streams)
    calls = [stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow)) for _ in range(50)]
    calls += [stub.TailLogs(pb.TailLogsRequest(workflow_id=workflow, job="quiet", follow=True)) for _ in range(50)]
    try:
        outcomes = opened(calls)
        probe = channel(driver.stack.endpoint, token=driver.stack.admin_token)
        health = health_pb2_grpc.HealthStub(probe)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        listed = dagger_pb2_grpc.DaggerStub(probe).ListWorkflows(pb.ListWorkflowsRequest(), timeout=5)
        assert workflow in [w.id for w in listed.workflows]
        users = users_pb2_grpc.UsersStub(probe)
        assert users.WhoAmI(upb.WhoAmIRequest(), timeout=5).user.admin
        assert set(outcomes) <= {None, EXHAUSTED}, outcomes
        assert outcomes.count(EXHAUSTED) > 0  # one user may not hold a hundred streams
        refused = next(c for c, o in zip(calls, outcomes, strict=True) if o is EXHAUSTED)
        assert "streams open at once" in refused.details()
        probe.close()
    finally:
        for call in calls:
            call.cancel()
        streams.close()
        driver.stub.CancelWorkflow(pb.CancelWorkflowRequest(id=workflow))


@pytest.fixture
def limited(stack_config: Any) -> Iterator[Stack]:
    limits = ServerLimits(streams_per_caller=3, first_message_timeout=1.0, idle_timeout=2.0)
    with Stack(dataclasses.replace(stack_config, limits=limits)) as running:
        running.admin_token = running.client_token()[0]  # type: ignore[attr-defined]
        yield running


def test_a_caller_s_open_streams_are_bounded_and_given_back_when_they_end(limited: Stack) -> None:
    driver = Driver(limited)
    workflow = driver.submit([sh("sleep 60", "quiet")])
    admin = users_pb2_grpc.UsersStub(driver.channel)
    admin.CreateUser(upb.CreateUserRequest(login="bob"))
    bob = channel(limited.endpoint, token=admin.CreateToken(upb.CreateTokenRequest(user_login="bob")).secret)
    request = pb.WatchWorkflowRequest(id=workflow)
    calls = [driver.stub.WatchWorkflow(request) for _ in range(3)]
    try:
        assert opened(calls) == [None] * 3
        extra = driver.stub.WatchWorkflow(request)
        assert first_message(extra) is EXHAUSTED
        assert "3 streams open at once" in extra.details()
        # another caller has streams of its own (bob may not see the workflow: to him it does
        # not exist, and that is his answer, not the limit)
        assert first_message(dagger_pb2_grpc.DaggerStub(bob).WatchWorkflow(request)) is \
            grpc.StatusCode.NOT_FOUND

        calls.pop().cancel()
        deadline = time.monotonic() + 10
        while True:  # the server notices the cancellation within about a second
            again = driver.stub.WatchWorkflow(request)
            outcome = first_message(again)
            calls.append(again)
            if outcome is None or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert outcome is None
    finally:
        for call in calls:
            call.cancel()
        driver.stub.CancelWorkflow(pb.CancelWorkflowRequest(id=workflow))
        bob.close()
        driver.close()


def test_a_client_stream_that_sends_nothing_is_ended_and_gives_its_place_back(limited: Stack) -> None:
    driver = Driver(limited)
    workflow = driver.submit([sh("sleep 60", "quiet")])
    driver.wait_until(workflow, lambda w: w.jobs[0].status == pb.JOB_STATUS_RUNNING)
    stop = threading.Event()

    def nothing() -> Iterator[Any]:
        stop.wait()
        yield from ()

    def one_then_nothing() -> Iterator[pb.LogBatch]:
        yield pb.LogBatch(workflow_id=workflow, job="quiet", attempt=1, sequence=1,
                          lines=[pb.LogLine(stream=pb.LOG_STREAM_STDOUT, text=b"hello")])
        stop.wait()

    cellar = cellar_pb2_grpc.CellarStub(driver.channel)
    try:
        for name, call in [
            ("PushLogs", lambda: list(driver.stub.PushLogs(nothing(), timeout=60))),
            ("Put", lambda: cellar.Put(nothing(), timeout=60)),
        ]:
            try:
                call()
                raise AssertionError(f"{name} with no message ended well")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (name, e)
                assert "no message in 1 s" in e.details(), (name, e.details())

        acks = []
        try:
            for ack in driver.stub.PushLogs(one_then_nothing(), timeout=60):
                acks.append(ack.sequence)
            raise AssertionError("an idle PushLogs went on")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e
            assert "no message for 2 s" in e.details(), e.details()
        assert acks == [1]
        deadline = time.monotonic() + 10  # the threads that read the ended streams end with them
        while any(t.name == "rpc-requests" for t in threading.enumerate()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(t.name == "rpc-requests" for t in threading.enumerate())

        info = cellar.Put(iter([cpb.PutRequest(header=cpb.FileRef(kind=cpb.KIND_CACHE, scope="up1", path="a"),
                                               size=1), cpb.PutRequest(data=b"x")]), timeout=10)
        assert info.size == 1  # a stream that keeps sending is not cut
        # the ended streams hold no place: the caller may open its three
        calls = [driver.stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow)) for _ in range(3)]
        assert opened(calls) == [None] * 3
        for c in calls:
            c.cancel()
    finally:
        stop.set()
        driver.stub.CancelWorkflow(pb.CancelWorkflowRequest(id=workflow))
        driver.close()
