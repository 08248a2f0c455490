"""What gRPC clients see: health, reflection, and the status codes of bad requests."""

from __future__ import annotations

import json
from typing import Any, cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc as pb_grpc
from tests.dagger.conftest import Driver, rpc_code, sh


def test_health_and_reflection_list_every_service(driver: Driver) -> None:
    health = health_pb2_grpc.HealthStub(driver.channel)
    for service in ("", "donut.dagger.v1.Dagger", "donut.cellar.v1.Cellar"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(driver.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"donut.dagger.v1.Dagger", "donut.cellar.v1.Cellar", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_bad_requests_get_the_right_status_and_change_nothing(driver: Driver) -> None:
    stub = driver.stub
    bad = json.dumps({"jobs": [{"name": "a", "image": "x", "cmd": "true", "args": "oops"}],
                      "neighbors": {"a": ["zz"]}})
    try:
        stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=bad.encode()))
        raise AssertionError("accepted a bad definition")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "jobs[0].args" in e.details() and "neighbors.a" in e.details()
    assert list(stub.ListWorkflows(pb.ListWorkflowsRequest()).workflows) == []

    missing = "00000000-0000-4000-8000-000000000000"
    assert rpc_code(lambda: stub.GetWorkflow(pb.GetWorkflowRequest(id="nope"))) == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_code(lambda: stub.GetWorkflow(pb.GetWorkflowRequest(id=missing))) == grpc.StatusCode.NOT_FOUND
    assert rpc_code(lambda: stub.CancelWorkflow(pb.CancelWorkflowRequest(id=missing))) == grpc.StatusCode.NOT_FOUND
    good = json.dumps({"jobs": [sh("true", "a")]}).encode()
    assert rpc_code(lambda: stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=good, parallelism=-1))) \
        == grpc.StatusCode.INVALID_ARGUMENT

    running = driver.submit([sh("echo started; sleep 30", "slow")])
    driver.wait_until(running, lambda w: any(j.status == pb.JOB_STATUS_RUNNING for j in w.jobs))
    follow = driver.stub.TailLogs(pb.TailLogsRequest(workflow_id=running, job="slow", follow=True), timeout=30)
    assert next(iter(follow)).lines[0].text == b"started"  # running: the cancel below stops it, not its launch
    follow.cancel()
    assert rpc_code(lambda: stub.RetryWorkflow(pb.RetryWorkflowRequest(id=running))) == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_code(lambda: stub.GetJob(pb.GetJobRequest(workflow_id=running, name="other"))) == \
        grpc.StatusCode.NOT_FOUND
    stub.CancelWorkflow(pb.CancelWorkflowRequest(id=running))
    assert driver.wait(running).status == pb.WORKFLOW_STATUS_TERMINATED
    assert rpc_code(lambda: stub.CancelWorkflow(pb.CancelWorkflowRequest(id=running))) == \
        grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_code(lambda: list(stub.TailLogs(pb.TailLogsRequest(workflow_id=running, job="slow", attempt=7)))) == \
        grpc.StatusCode.NOT_FOUND
    unknown_stream = pb.LogBatch(workflow_id=running, job="slow", attempt=1, sequence=9,
                                 lines=[pb.LogLine(stream=pb.LOG_STREAM_STDOUT, text=b"ok"),
                                        pb.LogLine(stream=cast(Any, 99), text=b"?")])
    assert rpc_code(lambda: list(stub.PushLogs(iter([unknown_stream])))) == grpc.StatusCode.INVALID_ARGUMENT
    assert [line.text for m in stub.TailLogs(pb.TailLogsRequest(workflow_id=running, job="slow"))
            for line in m.lines] == [b"started", b"terminated (SIGTERM)"]  # nothing of the refused batch


def test_clone_submits_the_same_definition_again(driver: Driver) -> None:
    first = driver.submit([sh("echo one > out", "a"), sh("true", "b")], {"a": ["b"]}, parallelism=2)
    driver.wait(first)
    clone = driver.stub.CloneWorkflow(pb.CloneWorkflowRequest(id=first, name="again"))
    assert clone.id != first and clone.name == "again" and clone.parallelism == 2
    done = driver.wait(clone.id)
    assert done.status == pb.WORKFLOW_STATUS_DONE
    assert [(j.name, list(j.depends_on)) for j in done.jobs] == [("a", []), ("b", ["a"])]


def test_with_etcd_gone_calls_are_unavailable_saying_why(tmp_path: Any, stack_config: Any) -> None:
    """Whether the caller's token is still in the verification cache or not, a call that
    needs etcd while it is gone gets UNAVAILABLE naming etcd (not INTERNAL, not a repr)."""
    import dataclasses

    from donut_cli.stack import Stack
    from donut_common.etcd_server import EtcdServer
    from donut_common.rpc import channel

    etcd = EtcdServer(tmp_path / "etcd", fsync=False).start()
    config = dataclasses.replace(stack_config, etcd_endpoints=etcd.endpoint, etcd_access=etcd.access,
                                 token_cache_seconds=60)
    with Stack(config) as stack:
        token = stack.client_token()[0]
        stub = pb_grpc.DaggerStub(channel(stack.endpoint, token=token))
        stub.ListWorkflows(pb.ListWorkflowsRequest())  # the token is verified and cached
        etcd.stop()
        for call in (lambda: stub.ListWorkflows(pb.ListWorkflowsRequest()),
                     lambda: stub.GetWorkflow(pb.GetWorkflowRequest(id="00000000-0000-4000-8000-000000000000")),
                     lambda: stub.CreateWorkflow(pb.CreateWorkflowRequest(
                         definition=json.dumps({"jobs": [sh("true", "a")]}).encode()))):
            try:
                call()
                raise AssertionError("a call succeeded without etcd")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e.details()
                assert "etcd unavailable" in e.details()
        uncached = pb_grpc.DaggerStub(channel(stack.endpoint, token=token + "x"))
        try:
            uncached.ListWorkflows(pb.ListWorkflowsRequest())
            raise AssertionError("a call succeeded without etcd")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE and "etcd unavailable" in e.details()


def test_after_an_etcd_stall_longer_than_the_lease_work_resumes_by_itself(tmp_path: Any, stack_config: Any) -> None:
    """etcd is frozen (SIGSTOP) for longer than the scheduler's lease, then goes on: the
    stack needs no restart: the run that was under way finishes, and a new one runs."""
    import dataclasses
    import os
    import signal
    import time

    from donut_cli.stack import Stack
    from donut_common.etcd_server import EtcdServer
    from tests.dagger.conftest import Driver

    etcd = EtcdServer(tmp_path / "etcd", fsync=False).start()
    config = dataclasses.replace(stack_config, etcd_endpoints=etcd.endpoint, etcd_access=etcd.access, lease_ttl=2)
    try:
        with Stack(config) as stack:
            stack.admin_token = stack.client_token()[0]
            driver = Driver(stack)
            before = driver.submit([sh("sleep 2", "a"), sh("true", "b")], {"a": ["b"]})
            driver.wait_until(before, lambda w: any(j.status == pb.JOB_STATUS_RUNNING for j in w.jobs))
            assert etcd.process is not None
            os.kill(etcd.process.pid, signal.SIGSTOP)
            time.sleep(7)  # longer than the lease's life and than an etcd call may take
            os.kill(etcd.process.pid, signal.SIGCONT)
            started = time.monotonic()
            assert driver.wait(before, timeout=30).status == pb.WORKFLOW_STATUS_DONE
            after = driver.submit([sh("true", "c")])
            assert driver.wait(after, timeout=30).status == pb.WORKFLOW_STATUS_DONE
            assert time.monotonic() - started < 20
            driver.close()
    finally:
        etcd.stop()


def test_the_embedded_etcd_killed_is_started_again_and_the_stack_goes_on(tmp_path: Any, stack_config: Any) -> None:
    import dataclasses
    import time

    from donut_cli.stack import Stack
    from tests.dagger.conftest import Driver

    config = dataclasses.replace(stack_config, etcd_endpoints="", etcd_fsync=False)
    with Stack(config) as stack:
        stack.admin_token = stack.client_token()[0]
        driver = Driver(stack)
        assert driver.wait(driver.submit([sh("true", "a")])).status == pb.WORKFLOW_STATUS_DONE
        assert stack.etcd is not None and stack.etcd.process is not None
        first = stack.etcd.process
        first.kill()
        first.wait()
        deadline = time.monotonic() + 30
        while True:  # calls say why they fail while etcd is away, then work again by themselves
            try:
                workflow_id = driver.submit([sh("true", "b")])
                break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE and "etcd unavailable" in e.details(), e.details()
                assert time.monotonic() < deadline, "the stack did not recover"
                time.sleep(0.2)
        assert driver.wait(workflow_id, timeout=30).status == pb.WORKFLOW_STATUS_DONE
        assert stack.etcd.process is not first and stack.etcd.process.poll() is None
        driver.close()


def test_a_twenty_megabyte_line_is_read_back_whole(driver: Driver) -> None:
    workflow_id = driver.submit([sh("head -c 20000000 /dev/zero | tr '\\0' x; echo; echo done", "big")])
    assert driver.wait(workflow_id, timeout=60).status == pb.WORKFLOW_STATUS_DONE
    texts = [line.text for chunk in driver.stub.TailLogs(pb.TailLogsRequest(workflow_id=workflow_id, job="big"))
             for line in chunk.lines]
    assert sum(len(t) for t in texts[:-1]) == 20_000_000 and set(b"".join(texts[:-1])) == {ord("x")}
    assert texts[-1] == b"done"


def test_a_bad_upload_id_is_invalid_argument_never_a_python_repr(driver: Driver) -> None:
    definition = json.dumps({"jobs": [sh("true", "a")]}).encode()
    try:
        driver.stub.CreateWorkflow(pb.CreateWorkflowRequest(definition=definition, upload_id="../../etc"))
        raise AssertionError("accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
        assert e.details() == "upload_id: must be letters, digits, '.', '_' or '-'"


@pytest.mark.parametrize("executor", ["local", "wrapper"])
def test_jobs_get_only_the_stack_environment_they_are_allowed(tmp_path: Any, stack_config: Any,
                                                             monkeypatch: pytest.MonkeyPatch, executor: str) -> None:
    import dataclasses

    from donut_cli.stack import Stack
    from tests.dagger.conftest import Driver

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "server-secret")
    monkeypatch.setenv("SHARED_SETTING", "for-jobs")
    config = dataclasses.replace(stack_config, executor=executor, job_env=("SHARED_SETTING",))
    with Stack(config) as stack:
        stack.admin_token = stack.client_token()[0]
        driver = Driver(stack)
        script = 'echo "secret=${AWS_SECRET_ACCESS_KEY:-none} shared=$SHARED_SETTING path=${PATH:+set}"'
        workflow_id = driver.submit([sh(script, "env")])
        assert driver.wait(workflow_id).status == pb.WORKFLOW_STATUS_DONE
        lines = [line.text for chunk in driver.stub.TailLogs(pb.TailLogsRequest(workflow_id=workflow_id, job="env"))
                 for line in chunk.lines if line.stream == pb.LOG_STREAM_STDOUT]
        assert lines == [b"secret=none shared=for-jobs path=set"]
        driver.close()


def test_workflows_are_listed_in_pages_newest_first(driver: Driver) -> None:
    stub = driver.stub
    submitted = [driver.submit([sh("true", "a")]) for _ in range(7)]
    newest_first, token, sizes = [], "", []
    while True:
        page = stub.ListWorkflows(pb.ListWorkflowsRequest(page_size=3, page_token=token))
        newest_first += [w.id for w in page.workflows]
        sizes.append(len(page.workflows))
        token = page.next_page_token
        if not token:
            break
    assert newest_first == submitted[::-1] and sizes == [3, 3, 1]
    assert [w.id for w in stub.ListWorkflows(pb.ListWorkflowsRequest(limit=2)).workflows] == submitted[:-3:-1]
    for bad, field in ((pb.ListWorkflowsRequest(page_size=-1), "page_size"),
                       (pb.ListWorkflowsRequest(page_token="not a token"), "page_token")):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListWorkflows(bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert field in refused.value.details()  # type: ignore[attr-defined]
    assert len(stub.ListWorkflows(pb.ListWorkflowsRequest(page_size=10**6)).workflows) == 7  # at most the maximum


def _refused(call: Any) -> str:
    """The details of a call refused as INVALID_ARGUMENT."""
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()  # type: ignore[attr-defined]
        return e.details()  # type: ignore[attr-defined,no-any-return]
    raise AssertionError("the call succeeded")


def test_bad_labels_and_unknown_retry_jobs_are_invalid_argument(driver: Driver) -> None:
    stub = driver.stub
    good = json.dumps({"jobs": [sh("true", "a")]}).encode()
    details = _refused(lambda: stub.CreateWorkflow(pb.CreateWorkflowRequest(
        definition=good, labels={"team": "ok", "bad key": "v", "tier": "-x"})))
    assert "labels[bad key]" in details and "labels[tier]" in details and "labels[team]" not in details
    assert "labels" in _refused(lambda: stub.CreateWorkflow(pb.CreateWorkflowRequest(
        definition=good, labels={f"k{i}": "v" for i in range(33)})))
    assert "labels[a b]" in _refused(lambda: stub.ListWorkflows(pb.ListWorkflowsRequest(labels={"a b": "c"})))
    assert list(stub.ListWorkflows(pb.ListWorkflowsRequest()).workflows) == []

    ended = driver.submit([sh("true", "a"), sh("false", "b")], {"a": ["b"]})
    driver.wait(ended)
    details = _refused(lambda: stub.RetryWorkflow(pb.RetryWorkflowRequest(id=ended, jobs=["b", "zz"])))
    assert "jobs[1]" in details and "zz" in details
    assert driver.jobs(ended)["b"].attempt == 1  # nothing was retried


def test_workflows_are_found_by_the_start_of_their_id(driver: Driver) -> None:
    stub = driver.stub
    submitted = sorted(driver.submit([sh("true", "a")]) for _ in range(3))
    found = stub.ListWorkflows(pb.ListWorkflowsRequest(id_prefix=submitted[0][:8])).workflows
    assert [w.id for w in found] == [submitted[0]]
    whole = stub.ListWorkflows(pb.ListWorkflowsRequest(id_prefix=submitted[1])).workflows
    assert [w.id for w in whole] == [submitted[1]]
    for bad in (pb.ListWorkflowsRequest(id_prefix="abc"), pb.ListWorkflowsRequest(id_prefix="zzzz"),
                pb.ListWorkflowsRequest(id_prefix=submitted[0] + "0"),
                pb.ListWorkflowsRequest(id_prefix="abcd", page_token="x"),
                pb.ListWorkflowsRequest(id_prefix="abcd", statuses=[pb.WORKFLOW_STATUS_DONE])):
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListWorkflows(bad)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert "id_prefix" in refused.value.details()  # type: ignore[attr-defined]


def test_a_watch_of_changed_jobs_sends_only_those_between_a_whole_first_and_last(driver: Driver) -> None:
    jobs = [sh("sleep 0.3", f"j{i}") for i in range(6)]
    workflow_id = driver.submit(jobs, neighbors={f"j{i}": [f"j{i + 1}"] for i in range(5)}, parallelism=1)
    messages = list(driver.stub.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id, include_jobs=True,
                                                                      changed_jobs_only=True), timeout=60))
    assert [j.name for j in messages[0].jobs] == [f"j{i}" for i in range(6)]
    assert messages[-1].status == pb.WORKFLOW_STATUS_DONE
    assert [(j.name, j.status) for j in messages[-1].jobs] == [(f"j{i}", pb.JOB_STATUS_SUCCEEDED) for i in range(6)]
    middle = messages[1:-1]
    assert all(len(m.jobs) < 6 for m in middle)  # only what changed: in a chain, never every job at once
    assert any(0 < len(m.jobs) <= 2 for m in middle)
    for message in middle:
        assert all(j.spec.name == j.name and j.depends_on == ([] if j.name == "j0" else [f"j{int(j.name[1]) - 1}"])
                   for j in message.jobs)
    running_seen = {j.name for m in middle for j in m.jobs if j.status == pb.JOB_STATUS_RUNNING}
    assert len(running_seen) >= 3  # the live states came through, not only the end
