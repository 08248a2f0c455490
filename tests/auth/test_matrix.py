"""Every RPC of every service against every kind of bad credential: no token, garbage, an
expired token, a revoked one, another user's token on owned resources, and a job token
used outside its job. Each call must get the right status and change nothing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import grpc
import pytest

from donut.cellar.v1 import cellar_pb2 as cpb
from donut.cellar.v1 import cellar_pb2_grpc
from donut.dagger.v1 import dagger_pb2 as dpb
from donut.dagger.v1 import dagger_pb2_grpc
from donut.users.v1 import users_pb2 as upb
from donut.users.v1 import users_pb2_grpc
from donut_common.auth import JobTokens
from donut_common.etcd import Etcd
from donut_common.rpc import channel
from tests.conftest import MovableClock
from tests.dagger.conftest import Driver

UNAUTH = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED
Call = Callable[[Any], Any]


class World:
    """Alice's workflow (one job that saved a result) and the tokens to try on it."""

    def __init__(self, stack: Any, clock: MovableClock) -> None:
        self.stack = stack
        admin = channel(stack.endpoint, token=stack.admin_token)
        users = users_pb2_grpc.UsersStub(admin)
        self.alice_id = users.CreateUser(upb.CreateUserRequest(login="alice")).id
        users.CreateUser(upb.CreateUserRequest(login="bob"))
        self.alice = users.CreateToken(upb.CreateTokenRequest(user_login="alice", name="alice")).secret
        self.bob = users.CreateToken(upb.CreateTokenRequest(user_login="bob", name="bob")).secret
        alice_users = users_pb2_grpc.UsersStub(channel(stack.endpoint, token=self.alice))
        self.alice_token_id = alice_users.WhoAmI(upb.WhoAmIRequest()).token.id
        expiring = alice_users.CreateToken(upb.CreateTokenRequest(name="short", expires_in_seconds=1)).secret
        revoked = alice_users.CreateToken(upb.CreateTokenRequest(name="gone"))
        alice_users.RevokeToken(upb.RevokeTokenRequest(id=revoked.token.id))
        self.expired, self.revoked = expiring, revoked.secret

        driver = Driver(stack)
        driver.channel = channel(stack.endpoint, token=self.alice)
        driver.stub = dagger_pb2_grpc.DaggerStub(driver.channel)
        self.workflow = driver.submit([
            {"name": "j", "image": "x", "cmd": "/bin/sh", "args": ["-c", "echo hi; echo r > r.txt"],
             "outputs": [{"local": "r.txt", "save": True}]},
            {"name": "k", "image": "x", "cmd": "true", "args": []},
        ])
        assert driver.wait(self.workflow).status == dpb.WORKFLOW_STATUS_DONE
        assert stack.log_copier.wait_idle(60)  # the logs' copies are stored: the files stay as they are
        services = channel(stack.endpoint, token=stack.service_token)
        self.job_token = JobTokens(services).mint(self.alice_id, self.workflow, "j", 1)[1]
        clock.advance(2)  # the short token has expired (it was never used, so never cached)


@pytest.fixture
def world(stack: Any, clock: MovableClock) -> World:
    return World(stack, clock)


def dagger_calls(w: World) -> dict[str, Call]:
    wf = w.workflow
    definition = json.dumps({"jobs": [{"name": "a", "image": "x", "cmd": "true", "args": []}]}).encode()
    return {
        "CreateWorkflow": lambda s: s.CreateWorkflow(dpb.CreateWorkflowRequest(definition=definition)),
        "ValidateDefinition": lambda s: s.ValidateDefinition(dpb.ValidateDefinitionRequest(definition=definition)),
        "GetWorkflow": lambda s: s.GetWorkflow(dpb.GetWorkflowRequest(id=wf)),
        "ListWorkflows": lambda s: s.ListWorkflows(dpb.ListWorkflowsRequest()),
        "CancelWorkflow": lambda s: s.CancelWorkflow(dpb.CancelWorkflowRequest(id=wf)),
        "RetryWorkflow": lambda s: s.RetryWorkflow(dpb.RetryWorkflowRequest(id=wf)),
        "CloneWorkflow": lambda s: s.CloneWorkflow(dpb.CloneWorkflowRequest(id=wf)),
        "WatchWorkflow": lambda s: next(iter(s.WatchWorkflow(dpb.WatchWorkflowRequest(id=wf)))),
        "GetJob": lambda s: s.GetJob(dpb.GetJobRequest(workflow_id=wf, name="j")),
        "ListJobs": lambda s: s.ListJobs(dpb.ListJobsRequest(workflow_id=wf)),
        "PushLogs": lambda s: list(s.PushLogs(iter([dpb.LogBatch(
            workflow_id=wf, job="k", attempt=1, sequence=99,
            lines=[dpb.LogLine(stream=dpb.LOG_STREAM_STDOUT, text=b"forged")])]))),
        "TailLogs": lambda s: list(s.TailLogs(dpb.TailLogsRequest(workflow_id=wf, job="j"))),
        "ReportJobStatus": lambda s: s.ReportJobStatus(dpb.ReportJobStatusRequest(
            workflow_id=wf, job="k", attempt=1, exit_code=1)),
        "ArchiveWorkflow": lambda s: s.ArchiveWorkflow(dpb.ArchiveWorkflowRequest(id=wf)),
    }


def cellar_calls(w: World) -> dict[str, Call]:
    result = cpb.FileRef(kind=cpb.KIND_RESULT, scope=w.workflow, job="j", path="r.txt")
    other_job = cpb.FileRef(kind=cpb.KIND_RESULT, scope=w.workflow, job="k", path="forged.txt")
    return {
        "Put": lambda s: s.Put(iter([cpb.PutRequest(header=other_job, size=1), cpb.PutRequest(data=b"x")])),
        "Get": lambda s: list(s.Get(cpb.GetRequest(ref=result))),
        "Stat": lambda s: s.Stat(result),
        "List": lambda s: s.List(cpb.ListRequest(kind=cpb.KIND_RESULT, scope=w.workflow)),
        "Delete": lambda s: s.Delete(cpb.DeleteRequest(kind=cpb.KIND_RESULT, scope=w.workflow)),
        "GetDownloadUrl": lambda s: s.GetDownloadUrl(cpb.GetDownloadUrlRequest(ref=result)),
    }


def users_calls(w: World) -> dict[str, Call]:
    return {
        "VerifyToken": lambda s: s.VerifyToken(upb.VerifyTokenRequest(token=w.alice)),
        "WhoAmI": lambda s: s.WhoAmI(upb.WhoAmIRequest()),
        "GetUser": lambda s: s.GetUser(upb.GetUserRequest(login="alice")),
        "UpsertGithubUser": lambda s: s.UpsertGithubUser(upb.UpsertGithubUserRequest(github_id=7, login="mallory")),
        "CreateUser": lambda s: s.CreateUser(upb.CreateUserRequest(login="mallory")),
        "ListUsers": lambda s: s.ListUsers(upb.ListUsersRequest()),
        "CreateToken": lambda s: s.CreateToken(upb.CreateTokenRequest(user_login="alice")),
        "ListTokens": lambda s: s.ListTokens(upb.ListTokensRequest(user_login="alice")),
        "RevokeToken": lambda s: s.RevokeToken(upb.RevokeTokenRequest(id=w.alice_token_id)),
        "CreateSignInCode": lambda s: s.CreateSignInCode(upb.CreateSignInCodeRequest()),
        "RedeemSignInCode": lambda s: s.RedeemSignInCode(upb.RedeemSignInCodeRequest(code="x" * 43)),
    }


def stubs(endpoint: str, token: str) -> dict[str, Any]:
    ch = channel(endpoint, token=token)
    return {"dagger": dagger_pb2_grpc.DaggerStub(ch), "cellar": cellar_pb2_grpc.CellarStub(ch),
            "users": users_pb2_grpc.UsersStub(ch)}


def all_calls(w: World) -> list[tuple[str, str, Call]]:
    return ([("dagger", n, c) for n, c in dagger_calls(w).items()] +
            [("cellar", n, c) for n, c in cellar_calls(w).items()] +
            [("users", n, c) for n, c in users_calls(w).items()])


def code_of(call: Call, stub: Any) -> grpc.StatusCode:
    try:
        call(stub)
    except grpc.RpcError as e:
        return e.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


def snapshot(stack: Any) -> tuple[dict[str, bytes], list[str]]:
    """Every etcd key of the stack (token use times aside) and every file it keeps."""
    keys = {}
    with closing(Etcd.connect(stack.config.etcd_endpoints)) as client:
        for kv in client.get_prefix(stack.config.etcd_prefix):
            value = kv.value
            if "/tokens/" in kv.key:
                doc = json.loads(value)
                doc.pop("last_used_at", None)
                value = json.dumps(doc, sort_keys=True).encode()
            keys[kv.key] = value
    root = Path(stack.config.data_dir)
    files = sorted(f"{p.relative_to(root)}:{p.stat().st_size}" for p in root.rglob("*")
                   if p.is_file() and "etcd" not in p.parts and not p.name.startswith("service-token"))
    return keys, files


def test_the_matrix(world: World) -> None:
    stack = world.stack
    before = snapshot(stack)
    results: dict[tuple[str, str, str], grpc.StatusCode] = {}
    bad_credentials = {"no token": "", "garbage": "dd_0123456789abcdef_not-the-secret",
                       "expired": world.expired, "revoked": world.revoked}
    for case, token in bad_credentials.items():
        s = stubs(stack.endpoint, token)
        for service, name, call in all_calls(world):
            results[(case, service, name)] = code_of(call, s[service])
    bob = stubs(stack.endpoint, world.bob)
    job = stubs(stack.endpoint, world.job_token)
    for service, name, call in all_calls(world):
        results[("other user", service, name)] = code_of(call, bob[service])
        results[("job token", service, name)] = code_of(call, job[service])
    after = snapshot(stack)

    unauthenticated = [k for k in results if k[0] in bad_credentials]
    assert {k: results[k] for k in unauthenticated if results[k] != UNAUTH} == {}
    # Bob may use his own account (who he is, validating, listing his own nothing);
    # everything of Alice's is not there for him, and everything admin-only is refused.
    bob_allowed = {("dagger", "ValidateDefinition"), ("dagger", "ListWorkflows"), ("dagger", "CreateWorkflow"),
                   ("users", "WhoAmI"), ("cellar", "List"), ("users", "CreateSignInCode")}
    alices = {("dagger", n) for n in ("GetWorkflow", "CancelWorkflow", "RetryWorkflow", "CloneWorkflow",
                                      "WatchWorkflow", "GetJob", "ListJobs", "TailLogs", "ArchiveWorkflow")}
    alices |= {("cellar", "Get"), ("cellar", "Stat"), ("cellar", "GetDownloadUrl"), ("users", "RevokeToken")}
    wrong = {k: v for k, v in results.items() if k[0] == "other user" and (k[1], k[2]) not in bob_allowed
             and v != (grpc.StatusCode.NOT_FOUND if (k[1], k[2]) in alices else DENIED)}
    assert wrong == {}
    # The job token may only speak for job j: everything here is another job or not a job's business.
    job_allowed = {("cellar", "Get"), ("cellar", "Stat"), ("cellar", "List"), ("cellar", "GetDownloadUrl"),
                   ("users", "WhoAmI")}
    wrong = {k: v for k, v in results.items() if k[0] == "job token" and (k[1], k[2]) not in job_allowed
             and v != DENIED}
    assert wrong == {}
    # Bob's own creations aside (a workflow of his), nothing changed.
    created = {k for k in after[0] if k not in before[0]}
    bob_workflows = [k.rsplit("/", 1)[1] for k in created if "/workflows/" in k]
    assert len(bob_workflows) == 1
    assert [k for k in created if bob_workflows[0] not in k and "/sign-in-codes/" not in k] == []
    changed = {k for k in before[0] if after[0].get(k) != before[0][k]}
    assert changed == set()
    assert [f for f in after[1] if f not in before[1] and bob_workflows[0].decode() not in f] == []
    bob_list = bob["cellar"].List(cpb.ListRequest(kind=cpb.KIND_RESULT, scope=world.workflow))
    assert list(bob_list.files) == []  # listing another user's results shows nothing
    bob_workflows_listed = bob["dagger"].ListWorkflows(dpb.ListWorkflowsRequest()).workflows
    assert world.workflow not in [w.id for w in bob_workflows_listed]


def test_a_job_token_works_for_its_own_job_only(world: World) -> None:
    job = stubs(world.stack.endpoint, world.job_token)
    ref = cpb.FileRef(kind=cpb.KIND_RESULT, scope=world.workflow, job="j", path="extra.txt")
    assert job["cellar"].Put(iter([cpb.PutRequest(header=ref, size=2), cpb.PutRequest(data=b"ok")])).size == 2
    ack = list(job["dagger"].PushLogs(iter([dpb.LogBatch(workflow_id=world.workflow, job="j", attempt=1,
                                                         sequence=50, lines=[])])))
    assert ack[-1].sequence == 50
    assert code_of(lambda s: s.GetWorkflow(dpb.GetWorkflowRequest(id=world.workflow)), job["dagger"]) == DENIED
    # its own attempt only: not a log file (an open file each) for every attempt number it names
    for attempt in (2, 5000):
        other = dpb.LogBatch(workflow_id=world.workflow, job="j", attempt=attempt, sequence=1, lines=[])
        assert code_of(lambda s, other=other: list(s.PushLogs(iter([other]))), job["dagger"]) == DENIED
        report = dpb.ReportJobStatusRequest(workflow_id=world.workflow, job="j", attempt=attempt, exit_code=0)
        assert code_of(lambda s, report=report: s.ReportJobStatus(report), job["dagger"]) == DENIED
    assert not (Path(world.stack.config.data_dir) / "logs" / world.workflow / "j.5000.log").exists()


def test_revocation_takes_effect_within_the_cache_lifetime(world: World) -> None:
    alice = stubs(world.stack.endpoint, world.alice)
    assert alice["users"].WhoAmI(upb.WhoAmIRequest()).user.login == "alice"  # now cached
    alice["users"].RevokeToken(upb.RevokeTokenRequest(id=world.alice_token_id))
    deadline = time.time() + world.stack.config.token_cache_seconds + 2
    while code_of(lambda s: s.WhoAmI(upb.WhoAmIRequest()), alice["users"]) != UNAUTH:
        assert time.time() < deadline, "a revoked token kept working"
        time.sleep(0.2)


def test_tokens_are_long_and_never_logged(world: World, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    secret = world.alice.split("_", 2)[2]
    assert len(secret) >= 43  # 256 random bits, url-safe base64
    stubs(world.stack.endpoint, world.alice)["dagger"].ListWorkflows(dpb.ListWorkflowsRequest())
    code_of(lambda s: s.WhoAmI(upb.WhoAmIRequest()), stubs(world.stack.endpoint, world.alice + "x")["users"])
    logs = Path(world.stack.config.data_dir).rglob("*.log")
    logged = caplog.text + "".join(p.read_text(errors="replace") for p in logs)
    assert world.alice not in logged and secret not in logged


def put_cache(stub: Any, upload: str, path: str, data: bytes) -> Any:
    ref = cpb.FileRef(kind=cpb.KIND_CACHE, scope=upload, path=path)
    return stub.Put(iter([cpb.PutRequest(header=ref, size=len(data)), cpb.PutRequest(data=data)]))


def test_an_upload_is_its_owner_s_alone(world: World) -> None:
    """Bob can neither add files to Alice's upload nor give his workflow's jobs access to
    it by naming it at submit (he is told nothing was uploaded under it); an upload id with
    nothing in it is refused."""
    alice, bob = stubs(world.stack.endpoint, world.alice), stubs(world.stack.endpoint, world.bob)
    assert put_cache(alice["cellar"], "alices-upload", "secret.txt", b"s").owner == world.alice_id
    before = snapshot(world.stack)

    assert code_of(lambda s: put_cache(s, "alices-upload", "more.txt", b"x"), bob["cellar"]) == DENIED
    definition = json.dumps({"jobs": [{"name": "steal", "image": "x", "cmd": "true", "args": []}]}).encode()
    submit = dpb.CreateWorkflowRequest(definition=definition, upload_id="alices-upload")
    assert code_of(lambda s: s.CreateWorkflow(submit), bob["dagger"]) == grpc.StatusCode.INVALID_ARGUMENT
    empty = dpb.CreateWorkflowRequest(definition=definition, upload_id="nothing-here")
    assert code_of(lambda s: s.CreateWorkflow(empty), bob["dagger"]) == grpc.StatusCode.INVALID_ARGUMENT
    assert snapshot(world.stack) == before

    assert put_cache(alice["cellar"], "alices-upload", "more.txt", b"x").size == 1  # hers to add to
    assert alice["dagger"].CreateWorkflow(submit).id


def test_looking_up_someone_else_says_nothing_of_whether_they_exist(world: World) -> None:
    bob = stubs(world.stack.endpoint, world.bob)["users"]
    admin = stubs(world.stack.endpoint, world.stack.admin_token)["users"]
    for login in ("alice", "no-such-user"):
        assert code_of(lambda s, login=login: s.GetUser(upb.GetUserRequest(login=login)), bob) == DENIED
    assert code_of(lambda s: s.GetUser(upb.GetUserRequest(login="no-such-user")), admin) == grpc.StatusCode.NOT_FOUND
    assert bob.GetUser(upb.GetUserRequest(login="bob")).login == "bob"


def test_an_open_stream_ends_once_its_token_is_revoked(world: World) -> None:
    alice = stubs(world.stack.endpoint, world.alice)
    follower = alice["users"].CreateToken(upb.CreateTokenRequest(name="follower"))
    definition = json.dumps({"jobs": [{"name": "ticker", "image": "x", "cmd": "/bin/sh",
                                       "args": ["-c", "while true; do echo tick; sleep 0.1; done"]}]}).encode()
    workflow = alice["dagger"].CreateWorkflow(dpb.CreateWorkflowRequest(definition=definition)).id
    try:
        lines = stubs(world.stack.endpoint, follower.secret)["dagger"].TailLogs(
            dpb.TailLogsRequest(workflow_id=workflow, job="ticker", follow=True), timeout=60)
        next(iter(lines))  # following
        alice["users"].RevokeToken(upb.RevokeTokenRequest(id=follower.token.id))
        revoked_at = time.monotonic()
        with pytest.raises(grpc.RpcError) as ended:
            for _ in lines:
                pass
        assert ended.value.code() == UNAUTH  # type: ignore[attr-defined]
        assert time.monotonic() - revoked_at < world.stack.config.token_cache_seconds + 10
    finally:
        alice["dagger"].CancelWorkflow(dpb.CancelWorkflowRequest(id=workflow))


def test_an_idle_stream_ends_once_its_token_is_revoked(world: World) -> None:
    """Nothing happens on the streams (a quiet job): they still end, UNAUTHENTICATED, soon
    after their token is revoked."""
    alice = stubs(world.stack.endpoint, world.alice)
    follower = alice["users"].CreateToken(upb.CreateTokenRequest(name="idle"))
    definition = json.dumps({"jobs": [{"name": "quiet", "image": "x", "cmd": "sleep", "args": ["60"]}]}).encode()
    workflow = alice["dagger"].CreateWorkflow(dpb.CreateWorkflowRequest(definition=definition)).id
    try:
        theirs = stubs(world.stack.endpoint, follower.secret)["dagger"]
        watch = theirs.WatchWorkflow(dpb.WatchWorkflowRequest(id=workflow), timeout=60)
        next(iter(watch))
        alice["dagger"].GetWorkflow(dpb.GetWorkflowRequest(id=workflow))
        deadline = time.monotonic() + 20
        while alice["dagger"].GetJob(dpb.GetJobRequest(workflow_id=workflow, name="quiet")).status \
                != dpb.JOB_STATUS_RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        tail = theirs.TailLogs(dpb.TailLogsRequest(workflow_id=workflow, job="quiet", follow=True), timeout=60)
        time.sleep(1.5)  # both streams are open and idle
        alice["users"].RevokeToken(upb.RevokeTokenRequest(id=follower.token.id))
        revoked_at = time.monotonic()
        for stream in (watch, tail):
            with pytest.raises(grpc.RpcError) as ended:
                for _ in stream:
                    pass
            assert ended.value.code() == UNAUTH  # type: ignore[attr-defined]
        assert time.monotonic() - revoked_at < world.stack.config.token_cache_seconds + 5
    finally:
        alice["dagger"].CancelWorkflow(dpb.CancelWorkflowRequest(id=workflow))


def owned_calls(workflow: str, upload: str, token_id: str, login: str) -> dict[str, Call]:
    """Every call that names something a user owns, naming the given things."""
    result = cpb.FileRef(kind=cpb.KIND_RESULT, scope=workflow, job="j", path="r.txt")
    definition = json.dumps({"jobs": [{"name": "a", "image": "x", "cmd": "true", "args": []}]}).encode()
    return {
        "GetWorkflow": lambda s: s["dagger"].GetWorkflow(dpb.GetWorkflowRequest(id=workflow)),
        "GetWorkflow with jobs": lambda s: s["dagger"].GetWorkflow(dpb.GetWorkflowRequest(id=workflow,
                                                                                          include_jobs=True)),
        "CancelWorkflow": lambda s: s["dagger"].CancelWorkflow(dpb.CancelWorkflowRequest(id=workflow)),
        "RetryWorkflow": lambda s: s["dagger"].RetryWorkflow(dpb.RetryWorkflowRequest(id=workflow)),
        "CloneWorkflow": lambda s: s["dagger"].CloneWorkflow(dpb.CloneWorkflowRequest(id=workflow)),
        "WatchWorkflow": lambda s: next(iter(s["dagger"].WatchWorkflow(dpb.WatchWorkflowRequest(id=workflow)))),
        "GetJob": lambda s: s["dagger"].GetJob(dpb.GetJobRequest(workflow_id=workflow, name="j")),
        "GetJob of no job": lambda s: s["dagger"].GetJob(dpb.GetJobRequest(workflow_id=workflow, name="zz")),
        "ListJobs": lambda s: s["dagger"].ListJobs(dpb.ListJobsRequest(workflow_id=workflow)),
        "TailLogs": lambda s: list(s["dagger"].TailLogs(dpb.TailLogsRequest(workflow_id=workflow, job="j"))),
        "TailLogs of attempt 9": lambda s: list(s["dagger"].TailLogs(dpb.TailLogsRequest(
            workflow_id=workflow, job="j", attempt=9))),
        "CreateWorkflow with the upload": lambda s: s["dagger"].CreateWorkflow(dpb.CreateWorkflowRequest(
            definition=definition, upload_id=upload)),
        "Get": lambda s: list(s["cellar"].Get(cpb.GetRequest(ref=result))),
        "Get past the end": lambda s: list(s["cellar"].Get(cpb.GetRequest(ref=result, offset=1000))),
        "Stat": lambda s: s["cellar"].Stat(result),
        "List": lambda s: s["cellar"].List(cpb.ListRequest(kind=cpb.KIND_RESULT, scope=workflow)).files,
        "RevokeToken": lambda s: s["users"].RevokeToken(upb.RevokeTokenRequest(id=token_id)),
        "ListTokens": lambda s: s["users"].ListTokens(upb.ListTokensRequest(user_login=login)),
        "CreateToken": lambda s: s["users"].CreateToken(upb.CreateTokenRequest(user_login=login)),
        "GetUser": lambda s: s["users"].GetUser(upb.GetUserRequest(login=login)),
    }


def answer_of(call: Call, stub: Any) -> tuple[grpc.StatusCode, str]:
    try:
        call(stub)
    except grpc.RpcError as e:
        return e.code(), e.details()  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def test_someone_else_s_things_answer_like_things_that_do_not_exist(world: World) -> None:
    """Bob asking for Alice's workflow, files, upload, token or account hears exactly what
    he hears for ids that name nothing (status and message), so he learns nothing of them;
    an admin sees hers, and is told when something does not exist."""
    stack = world.stack
    alice = stubs(stack.endpoint, world.alice)
    assert put_cache(alice["cellar"], "alices-upload", "secret.txt", b"s").size == 1
    real = {"workflow": world.workflow, "upload": "alices-upload", "token": world.alice_token_id, "login": "alice"}
    unknown = {"workflow": str(uuid.uuid4()), "upload": "no-such-upload", "token": "0123456789abcdef",
               "login": "nobody-at-all"}
    before = snapshot(stack)
    theirs = owned_calls(*real.values())
    nothing = owned_calls(*unknown.values())

    def same_words(answer: tuple[grpc.StatusCode, str]) -> tuple[grpc.StatusCode, str]:
        details = answer[1]
        for what, value in unknown.items():
            details = details.replace(value, real[what])
        return answer[0], details

    for who in ("bob", "job token"):
        caller = stubs(stack.endpoint, world.bob if who == "bob" else world.job_token)
        # (a job token may read its own job's results: the cellar's calls aside)
        calls = [n for n in theirs if who == "bob" or n not in ("Get", "Get past the end", "Stat", "List")]
        answers = {name: (answer_of(theirs[name], caller), same_words(answer_of(nothing[name], caller)))
                   for name in calls}
        assert {name: pair for name, pair in answers.items() if pair[0] != pair[1]} == {}, who
        if who == "bob":
            assert answers["GetWorkflow"][0][0] == grpc.StatusCode.NOT_FOUND
            assert answers["Get past the end"][0][0] == grpc.StatusCode.NOT_FOUND
            assert answers["RevokeToken"][0][0] == grpc.StatusCode.NOT_FOUND
    assert snapshot(stack) == before

    admin = stubs(stack.endpoint, stack.admin_token)
    assert answer_of(theirs["GetWorkflow"], admin)[0] == grpc.StatusCode.OK
    assert answer_of(theirs["Stat"], admin)[0] == grpc.StatusCode.OK
    assert answer_of(theirs["Get past the end"], admin)[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert answer_of(theirs["ListTokens"], admin)[0] == grpc.StatusCode.OK
    for name in ("GetWorkflow", "Stat", "RevokeToken", "ListTokens"):
        assert answer_of(nothing[name], admin)[0] == grpc.StatusCode.NOT_FOUND, name


def cellar_files(stack: Any, scope: str) -> list[str]:
    """Every file the cellar keeps for a scope (data, sidecars, owners)."""
    root = Path(stack.config.data_dir) / "cellar"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if scope in p.parts)


def test_a_refused_submission_leaves_no_upload_behind(world: World) -> None:
    """A submission refused with an upload of the caller's removes that upload, sidecars
    and all; an upload a stored workflow uses, or someone else's, stays."""
    stack = world.stack
    alice, bob = stubs(stack.endpoint, world.alice), stubs(stack.endpoint, world.bob)
    uses = json.dumps({"jobs": [{"name": "a", "image": "x", "cmd": "true", "args": [],
                                 "inputs": [{"cache": "in.csv", "local": "in.csv"}]}]}).encode()
    wrong = json.dumps({"jobs": [{"name": "a", "image": "x", "cmd": "true", "args": [],
                                  "inputs": [{"cache": "missing.csv", "local": "m.csv"}]}]}).encode()
    broken = b"jobs: [{name: a}]"
    for upload, definition in (("refused-upload", wrong), ("broken-upload", broken)):
        put_cache(alice["cellar"], upload, "in.csv", b"1,2\n")
        put_cache(alice["cellar"], upload, "deep/more.csv", b"3\n")
        assert cellar_files(stack, upload)
        submit = dpb.CreateWorkflowRequest(definition=definition, upload_id=upload)
        assert code_of(lambda s, submit=submit: s.CreateWorkflow(submit), alice["dagger"]) == \
            grpc.StatusCode.INVALID_ARGUMENT
        assert cellar_files(stack, upload) == [], upload

    put_cache(alice["cellar"], "used-upload", "in.csv", b"1,2\n")
    used = alice["dagger"].CreateWorkflow(dpb.CreateWorkflowRequest(definition=uses, upload_id="used-upload")).id
    kept = cellar_files(stack, "used-upload")
    for who in (alice, bob):
        submit = dpb.CreateWorkflowRequest(definition=wrong, upload_id="used-upload")
        assert code_of(lambda s, submit=submit: s.CreateWorkflow(submit), who["dagger"]) == \
            grpc.StatusCode.INVALID_ARGUMENT
        assert cellar_files(stack, "used-upload") == kept
    assert alice["dagger"].CloneWorkflow(dpb.CloneWorkflowRequest(id=used)).upload_id == "used-upload"

    put_cache(alice["cellar"], "alices-upload", "in.csv", b"1,2\n")  # unused, but not Bob's to remove
    mine = cellar_files(stack, "alices-upload")
    submit = dpb.CreateWorkflowRequest(definition=wrong, upload_id="alices-upload")
    assert code_of(lambda s: s.CreateWorkflow(submit), bob["dagger"]) == grpc.StatusCode.INVALID_ARGUMENT
    assert cellar_files(stack, "alices-upload") == mine
