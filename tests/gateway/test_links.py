"""Download links: cellar signs them, the gateway of a real stack serves them, to anyone
holding one until it expires; a link that was changed or has expired is refused."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from donut.cellar.v1 import cellar_pb2 as cpb
from donut.cellar.v1 import cellar_pb2_grpc
from donut.users.v1 import users_pb2 as upb
from donut.users.v1 import users_pb2_grpc
from donut_common.rpc import channel
from gateway.links import signature
from tests.cli.conftest import FRUIT, donut


@pytest.fixture
def web_stack(stack_config: Any) -> Iterator[Any]:
    from donut_cli.stack import Stack

    with Stack(replace(stack_config, http_port=0)) as running:
        running.admin_token = running.client_token()[0]
        yield running


def user_cellar(stack: Any, login: str) -> cellar_pb2_grpc.CellarStub:
    """The cellar as a new user `login` sees it."""
    users = users_pb2_grpc.UsersStub(channel(stack.endpoint, token=stack.admin_token))
    users.CreateUser(upb.CreateUserRequest(login=login))
    token = users.CreateToken(upb.CreateTokenRequest(user_login=login, name=login)).secret
    return cellar_pb2_grpc.CellarStub(channel(stack.endpoint, token=token))


def cache(path: str, scope: str = "alices-upload") -> cpb.FileRef:
    return cpb.FileRef(kind=cpb.KIND_CACHE, scope=scope, path=path)


def put(stub: cellar_pb2_grpc.CellarStub, ref: cpb.FileRef, data: bytes) -> None:
    stub.Put(iter([cpb.PutRequest(header=ref, size=len(data)), cpb.PutRequest(data=data)]))


def fetch(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def with_query(url: str, **changes: str) -> str:
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query)) | changes
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def test_a_link_serves_the_file_to_anyone_until_it_expires(web_stack: Any) -> None:
    alice = user_cellar(web_stack, "alice")
    data = b"name,count\n" + b"apple,3\n" * 20_000
    put(alice, cache("fruit/häagen dazs.csv"), data)
    before = int(time.time())
    link = alice.GetDownloadUrl(cpb.GetDownloadUrlRequest(ref=cache("fruit/häagen dazs.csv")))
    after = int(time.time())

    assert link.url.startswith(web_stack.http_endpoint + "/files/cache/alices-upload/fruit/")
    expires = int(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link.url).query))["expires"])
    assert link.expires_at.seconds == expires and before + 3600 <= expires <= after + 3600
    status, headers, body = fetch(link.url)  # no token: the link is all it takes
    assert status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert headers["Content-Length"] == str(len(data))
    assert headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Disposition"].startswith("attachment;")
    assert "filename*=UTF-8''h%C3%A4agen%20dazs.csv" in headers["Content-Disposition"]


def test_a_link_to_a_job_s_file_serves_it(web_stack: Any) -> None:
    alice = user_cellar(web_stack, "alice")
    admin = users_pb2_grpc.UsersStub(channel(web_stack.endpoint, token=web_stack.admin_token))
    alice_id = admin.GetUser(upb.GetUserRequest(login="alice")).id
    services = cellar_pb2_grpc.CellarStub(channel(web_stack.endpoint, token=web_stack.service_token))
    log = cpb.FileRef(kind=cpb.KIND_LOG, scope="wf1", job="apple", path="1.log")  # as dagger keeps a job's log
    services.Put(iter([cpb.PutRequest(header=log, owner=alice_id), cpb.PutRequest(data=b"qapple 3\n")]))
    url = alice.GetDownloadUrl(cpb.GetDownloadUrlRequest(ref=log)).url
    assert fetch(url)[0::2] == (200, b"qapple 3\n")


def test_a_changed_or_expired_link_is_refused(web_stack: Any) -> None:
    alice = user_cellar(web_stack, "alice")
    put(alice, cache("a.txt"), b"A")
    put(alice, cache("b.txt"), b"B")
    url = alice.GetDownloadUrl(cpb.GetDownloadUrlRequest(ref=cache("a.txt"), ttl_seconds=60)).url
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    signature_ = query["signature"]
    tampered = {
        "another file": url.replace("/a.txt?", "/b.txt?"),
        "a later expiry": with_query(url, expires=str(int(query["expires"]) + 3600)),
        "another signature": with_query(url, signature=("0" if signature_[0] != "0" else "1") + signature_[1:]),
        "no signature": with_query(url, signature=""),
        "no expiry": url.split("?")[0] + "?signature=" + signature_,
    }
    for case, bad in tampered.items():
        status, _, body = fetch(bad)
        assert status == 403, case
        assert body.decode() in ("bad signature\n", "not a signed link\n"), case
    key = (Path(web_stack.config.data_dir) / "url-signing-key").read_bytes().strip()
    past = int(time.time()) - 1
    expired = with_query(url, expires=str(past), signature=signature(key, "cache", "alices-upload", "", "a.txt", past))
    assert fetch(expired)[0::2] == (403, b"link expired\n")
    assert fetch(url)[0::2] == (200, b"A")  # the link as made still works


def test_a_link_to_a_file_gone_since_is_not_found(web_stack: Any) -> None:
    alice = user_cellar(web_stack, "alice")
    put(alice, cache("a.txt"), b"A")
    url = alice.GetDownloadUrl(cpb.GetDownloadUrlRequest(ref=cache("a.txt"))).url
    admin = cellar_pb2_grpc.CellarStub(channel(web_stack.endpoint, token=web_stack.admin_token))
    admin.Delete(cpb.DeleteRequest(kind=cpb.KIND_CACHE, scope="alices-upload"))
    assert fetch(url)[0] == 404


def test_only_who_may_read_a_file_gets_a_link(web_stack: Any) -> None:
    alice = user_cellar(web_stack, "alice")
    bob = user_cellar(web_stack, "bob")
    put(alice, cache("a.txt"), b"A")
    with pytest.raises(grpc.RpcError) as theirs:
        bob.GetDownloadUrl(cpb.GetDownloadUrlRequest(ref=cache("a.txt")))
    with pytest.raises(grpc.RpcError) as missing:
        bob.GetDownloadUrl(cpb.GetDownloadUrlRequest(ref=cache("nothing.txt")))
    assert theirs.value.code() == grpc.StatusCode.NOT_FOUND
    assert theirs.value.details() == missing.value.details().replace("nothing.txt", "a.txt")


@pytest.mark.parametrize("ttl", [-1, 7 * 24 * 3600 + 1])
def test_a_ttl_out_of_range_is_invalid(web_stack: Any, ttl: int) -> None:
    alice = user_cellar(web_stack, "alice")
    put(alice, cache("a.txt"), b"A")
    with pytest.raises(grpc.RpcError) as refused:
        alice.GetDownloadUrl(cpb.GetDownloadUrlRequest(ref=cache("a.txt"), ttl_seconds=ttl))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("ttl_seconds: must be from 1 to 604800 (7 days)")
    assert alice.GetDownloadUrl(cpb.GetDownloadUrlRequest(ref=cache("a.txt"), ttl_seconds=7 * 24 * 3600)).url


def test_without_a_gateway_there_are_no_local_links(stack: Any) -> None:
    admin = cellar_pb2_grpc.CellarStub(channel(stack.endpoint, token=stack.admin_token))
    put(admin, cache("a.txt"), b"A")
    with pytest.raises(grpc.RpcError) as refused:
        admin.GetDownloadUrl(cpb.GetDownloadUrlRequest(ref=cache("a.txt")))
    assert (refused.value.code(), refused.value.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION, "no gateway to serve download links")


def test_the_signing_key_is_private_and_kept_across_restarts(stack_config: Any) -> None:
    from donut_cli.stack import Stack

    key_file = Path(stack_config.data_dir) / "url-signing-key"
    with Stack(stack_config):
        key = key_file.read_bytes()
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key.strip()) == 64
    with Stack(stack_config) as again:
        assert again.url_signing_key == key.strip()
    key_file.write_text("\n")
    with Stack(stack_config) as emptied:
        assert len(emptied.url_signing_key) == 64 and emptied.url_signing_key != key.strip()
    assert key_file.read_bytes() == emptied.url_signing_key


def test_donut_results_url_prints_a_working_link_per_result(web_stack: Any, donut_home: Path) -> None:
    def cli(*args: str) -> Any:
        return donut(*args, home=donut_home, endpoint=web_stack.endpoint, env={"DONUT_TOKEN": web_stack.admin_token})

    workflow_id = json.loads(cli("submit", str(FRUIT), "--wait", "--json").stdout)["id"]
    listed = cli("results", workflow_id, "--url")
    assert listed.returncode == 0, listed.stderr
    lines = dict(line.split("  ") for line in listed.stdout.splitlines())
    assert "dragonfruit/total.txt" in lines
    docs = json.loads(cli("results", workflow_id, "--url", "--ttl", "2h", "-o", "json").stdout)
    total = next(d for d in docs if (d["job"], d["path"]) == ("dragonfruit", "total.txt"))
    assert set(total) == {"job", "path", "size", "sha256", "url", "expires_at"}
    status, _, body = fetch(total["url"])
    assert status == 200 and hashlib.sha256(body).hexdigest() == total["sha256"] and len(body) == total["size"]
    status, _, body = fetch(lines["dragonfruit/total.txt"])
    assert status == 200 and hashlib.sha256(body).hexdigest() == total["sha256"]
    for args, message in [(("--ttl", "8d"), "--ttl: must be more than 0 and at most 7 days"),
                          (("--ttl", "0"), "--ttl: must be more than 0 and at most 7 days")]:
        refused = cli("results", workflow_id, "--url", *args)
        assert refused.returncode == 2 and refused.stderr.strip().endswith(message), refused.stderr
    alone = cli("results", workflow_id, "--ttl", "1h")
    assert alone.returncode == 2 and "--ttl goes with --url" in alone.stderr


def test_donut_results_url_without_a_gateway_says_so(stack: Any, donut_home: Path) -> None:
    def cli(*args: str) -> Any:
        return donut(*args, home=donut_home, endpoint=stack.endpoint, env={"DONUT_TOKEN": stack.admin_token})

    workflow_id = json.loads(cli("submit", str(FRUIT), "--wait", "--json").stdout)["id"]
    refused = cli("results", workflow_id, "--url")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]
    assert "no gateway to serve download links" in refused.stderr
