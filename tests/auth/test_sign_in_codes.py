"""Web sign-in codes (`donut ui`) and the web sessions the gateway opens with them, through
the real gRPC server of a stack over a real etcd: who may make and spend a code, that it
works once and for a minute only, and that etcd never holds the code itself."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace
from typing import Any

import grpc
import pytest

from donut.users.v1 import users_pb2 as upb
from donut.users.v1 import users_pb2_grpc
from donut_common.auth import JobTokens
from donut_common.etcd import Etcd
from donut_common.rpc import channel
from tests.conftest import MovableClock

DENIED = grpc.StatusCode.PERMISSION_DENIED
GONE = "sign-in code unknown, used or expired"


def users(stack: Any, token: str) -> users_pb2_grpc.UsersStub:
    return users_pb2_grpc.UsersStub(channel(stack.endpoint, token=token))


def code_of(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as e:
        return e.code()  # type: ignore[attr-defined,no-any-return]
    return grpc.StatusCode.OK


class People:
    """Alice (a user), the stack's admin, and the services' own credentials."""

    def __init__(self, stack: Any) -> None:
        self.admin = users(stack, stack.admin_token)
        self.alice_id = self.admin.CreateUser(upb.CreateUserRequest(login="alice")).id
        self.alice_token = self.admin.CreateToken(upb.CreateTokenRequest(user_login="alice", name="cli")).secret
        self.alice = users(stack, self.alice_token)
        self.services = users(stack, stack.service_token)


@pytest.fixture
def people(stack: Any) -> People:
    return People(stack)


def test_a_code_signs_its_own_user_in_once(people: People) -> None:
    code = people.alice.CreateSignInCode(upb.CreateSignInCodeRequest())
    assert len(code.code) >= 43 and code.url == ""  # no gateway in this stack: the GUI's address is unknown
    assert people.services.RedeemSignInCode(upb.RedeemSignInCodeRequest(code=code.code)).login == "alice"
    with pytest.raises(grpc.RpcError) as again:
        people.services.RedeemSignInCode(upb.RedeemSignInCodeRequest(code=code.code))
    assert again.value.code() == grpc.StatusCode.NOT_FOUND and again.value.details() == GONE
    for unknown in ("", "x" * 43):
        with pytest.raises(grpc.RpcError) as never:
            people.services.RedeemSignInCode(upb.RedeemSignInCodeRequest(code=unknown))
        assert never.value.code() == grpc.StatusCode.NOT_FOUND and never.value.details() == GONE


def test_of_concurrent_redeems_of_one_code_exactly_one_succeeds(people: People) -> None:
    for _ in range(3):
        code = people.alice.CreateSignInCode(upb.CreateSignInCodeRequest()).code
        start = threading.Barrier(8)
        outcomes: list[grpc.StatusCode] = []

        def redeem(code: str = code, start: threading.Barrier = start,
                   outcomes: list[grpc.StatusCode] = outcomes) -> None:
            start.wait()
            outcomes.append(code_of(lambda: people.services.RedeemSignInCode(upb.RedeemSignInCodeRequest(code=code))))

        threads = [threading.Thread(target=redeem) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes, key=str) == sorted([grpc.StatusCode.OK] + [grpc.StatusCode.NOT_FOUND] * 7, key=str)


def test_a_code_expires_after_a_minute(people: People, clock: MovableClock) -> None:
    fresh = people.alice.CreateSignInCode(upb.CreateSignInCodeRequest())
    late = people.alice.CreateSignInCode(upb.CreateSignInCodeRequest())
    assert 59 <= fresh.expires_at.seconds - clock.time() <= 61
    clock.advance(50)
    assert people.services.RedeemSignInCode(upb.RedeemSignInCodeRequest(code=fresh.code)).id == people.alice_id
    clock.advance(11)
    with pytest.raises(grpc.RpcError) as expired:
        people.services.RedeemSignInCode(upb.RedeemSignInCodeRequest(code=late.code))
    assert expired.value.code() == grpc.StatusCode.NOT_FOUND and expired.value.details() == GONE


def test_etcd_keeps_only_the_code_s_hash_under_a_lease(stack: Any, people: People) -> None:
    code = people.alice.CreateSignInCode(upb.CreateSignInCodeRequest()).code
    client = Etcd.connect(stack.config.etcd_endpoints)
    try:
        stored = [kv for kv in client.get_prefix(stack.config.etcd_prefix) if "sign-in-codes/" in kv.key]
        assert [kv.key.rsplit("/", 1)[1] for kv in stored] == [hashlib.sha256(code.encode()).hexdigest()]
        everything = b"".join(kv.key.encode() + kv.value for kv in client.get_prefix(stack.config.etcd_prefix))
        assert code.encode() not in everything
        _, meta = client._client.get(stored[0].key)  # the library's own answer: it tells the lease
        assert meta.lease_id != 0
    finally:
        client.close()


def test_only_services_redeem_and_only_users_make_codes(stack: Any, people: People) -> None:
    code = people.alice.CreateSignInCode(upb.CreateSignInCodeRequest()).code
    redeem = upb.RedeemSignInCodeRequest(code=code)
    assert code_of(lambda: people.alice.RedeemSignInCode(redeem)) == DENIED
    assert code_of(lambda: people.admin.RedeemSignInCode(redeem)) == DENIED
    job_token = JobTokens(channel(stack.endpoint, token=stack.service_token)).mint(
        people.alice_id, "11111111-2222-4333-8444-555555555555", "j", 1)[1]
    make = upb.CreateSignInCodeRequest()
    assert code_of(lambda: users(stack, job_token).CreateSignInCode(make)) == DENIED
    assert code_of(lambda: people.services.CreateSignInCode(make)) == DENIED
    assert people.services.RedeemSignInCode(redeem).login == "alice"  # the refusals spent nothing


def test_the_code_s_link_points_at_the_gateway_once_it_runs(stack_config: Any) -> None:
    from donut_cli.stack import Stack

    with Stack(replace(stack_config, http_port=0)) as running:
        url = users(running, running.client_token()[0]).CreateSignInCode(upb.CreateSignInCodeRequest())
        assert url.url == f"{running.http_endpoint}/login/code?code={url.code}"
    with Stack(replace(stack_config, http_port=0, public_url="https://donut.example/gui")) as behind_a_proxy:
        url = users(behind_a_proxy, behind_a_proxy.client_token()[0]).CreateSignInCode(upb.CreateSignInCodeRequest())
        assert url.url == f"https://donut.example/gui/login/code?code={url.code}"


def test_the_gateway_opens_web_sessions_for_users_with_their_own_rights(stack: Any, people: People) -> None:
    session = people.services.CreateToken(upb.CreateTokenRequest(
        user_id=people.alice_id, name="web session", scopes=["user"], expires_in_seconds=3600))
    me = users(stack, session.secret).WhoAmI(upb.WhoAmIRequest())
    assert me.user.login == "alice" and list(me.token.scopes) == ["user"] and me.token.name == "web session"
    assert me.token.expires_at.seconds > 0
    with pytest.raises(grpc.RpcError) as nobody:  # not a token of the services' own account
        people.services.CreateToken(upb.CreateTokenRequest(name="web session", scopes=["user"]))
    assert nobody.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in nobody.value.details()
    admin_id = people.admin.WhoAmI(upb.WhoAmIRequest()).user.id
    admin_session = people.services.CreateToken(upb.CreateTokenRequest(
        user_id=admin_id, name="web session", scopes=["user", "admin"], expires_in_seconds=3600))
    assert users(stack, admin_session.secret).ListUsers(upb.ListUsersRequest()).users  # admin rights
    for scopes in (["user", "admin"], ["admin"], ["service"]):
        assert code_of(lambda scopes=scopes: people.services.CreateToken(upb.CreateTokenRequest(
            user_id=people.alice_id, name="web session", scopes=scopes))) == DENIED
    assert code_of(lambda: people.services.CreateToken(upb.CreateTokenRequest(
        user_id=admin_id, name="more services", scopes=["service"]))) == DENIED
    # a user still makes tokens for nobody but themselves
    assert code_of(lambda: people.alice.CreateToken(upb.CreateTokenRequest(user_id=admin_id, name="x"))) == DENIED
