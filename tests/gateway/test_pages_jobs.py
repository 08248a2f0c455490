"""The job page with its live log, the results page and the API tokens page, served by the
gateway of a real stack to a signed-in user (a session cookie made with the app's own
signer), and refused to everybody else as if nothing were there."""

from __future__ import annotations

import hashlib
import html
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests

from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut.users.v1 import users_pb2 as upb
from donut.users.v1 import users_pb2_grpc
from donut_common.rpc import channel

EVIL = "<script>alert(1)</script> <img src=x onerror=alert(2)>"


@dataclass
class Browser:
    """A user of the web GUI: an HTTP session signed in, and their gRPC stubs."""

    http: requests.Session
    base: str
    dagger: dagger_pb2_grpc.DaggerStub
    users: users_pb2_grpc.UsersStub
    token_id: str

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.http.get(self.base + path, timeout=60, **kwargs)

    def post(self, path: str, data: dict[str, str], csrf: bool = True, **kwargs: Any) -> requests.Response:
        if csrf:
            page = self.get("/tokens").text
            data = {**data, "csrf_token": re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)}  # type: ignore[union-attr]
        return self.http.post(self.base + path, data=data, timeout=60, **kwargs)

    def run(self, jobs: list[dict[str, Any]], neighbors: dict[str, list[str]] | None = None) -> str:
        definition = {"jobs": jobs, **({"neighbors": neighbors} if neighbors else {})}
        return self.dagger.CreateWorkflow(pb.CreateWorkflowRequest(definition=json.dumps(definition).encode())).id

    def wait(self, workflow_id: str, done: Callable[[pb.Workflow], bool] = lambda w: bool(w.finished_at.seconds),
             timeout: float = 120) -> pb.Workflow:
        deadline = time.monotonic() + timeout
        for workflow in self.dagger.WatchWorkflow(pb.WatchWorkflowRequest(id=workflow_id, include_jobs=True),
                                                  timeout=timeout):
            if done(workflow):
                return workflow
            assert time.monotonic() < deadline
        raise AssertionError("the watch ended first")


@pytest.fixture
def web_stack(stack_config: Any) -> Iterator[Any]:
    from donut_cli.stack import Stack

    with Stack(replace(stack_config, http_port=0)) as running:
        running.admin_token = running.client_token()[0]
        yield running


@pytest.fixture
def sign_in(web_stack: Any) -> Callable[[str], Browser]:
    admin = users_pb2_grpc.UsersStub(channel(web_stack.endpoint, token=web_stack.admin_token))
    app = web_stack.http.app

    def make(login: str) -> Browser:
        admin.CreateUser(upb.CreateUserRequest(login=login))
        made = admin.CreateToken(upb.CreateTokenRequest(user_login=login, name="web session"))
        cookie = app.session_interface.get_signing_serializer(app).dumps(
            {"token": made.secret, "token_id": made.token.id, "login": login, "admin": False})
        http = requests.Session()
        http.cookies.set("session", cookie, domain="127.0.0.1")
        grpc_channel = channel(web_stack.endpoint, token=made.secret)
        return Browser(http, web_stack.http_endpoint, dagger_pb2_grpc.DaggerStub(grpc_channel),
                       users_pb2_grpc.UsersStub(grpc_channel), made.token.id)

    return make


def shell(name: str, script: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "cmd": "/bin/sh", "args": ["-c", script], **more}


def events(response: requests.Response) -> Iterator[tuple[str, Any]]:
    """The server-sent events of a streamed response, as they arrive."""
    name, data = "", ""
    for raw in response.iter_lines(decode_unicode=True):
        if raw.startswith("event: "):
            name = raw.removeprefix("event: ")
        elif raw.startswith("data: "):
            data = raw.removeprefix("data: ")
        elif raw == "" and name:
            yield name, json.loads(data)
            name, data = "", ""


def log_texts(page: str) -> list[str]:
    log = re.search(r'<pre id="log"[^>]*>(.*?)</pre>', page, re.S)
    assert log is not None, page
    return [html.unescape(text).rstrip("\n") for text in re.findall(r'<span class="\w+">(.*?)</span>', log.group(1),
                                                                      re.S)]


def test_the_job_page_shows_the_spec_attempts_and_log(sign_in: Callable[[str], Browser]) -> None:
    alice = sign_in("alice")
    workflow_id = alice.run([
        shell("first", "echo one > x", workdir_prefix="first"),
        shell("second", "echo out; echo err >&2; exit 3", retries=1, timeout=30, workdir_prefix="w",
              inputs=[{"local": "../first/x"}], outputs=[{"local": "o.txt", "save": True}])],
        neighbors={"first": ["second"]})
    alice.wait(workflow_id)

    page = alice.get(f"/workflows/{workflow_id}/jobs/second")

    assert page.status_code == 200
    text = page.text
    assert "<code>busybox</code>" in text and "<code>/bin/sh</code>" in text and "<code>w</code>" in text
    assert f'href="/workflows/{workflow_id}/jobs/first"' in text  # its dependency, linked
    assert "<code>o.txt</code>" in text and "30.0 s" in text
    attempts = re.findall(r'<tr data-attempt="(\d)" data-status="(\w+)"', text)
    assert attempts == [("1", "failed"), ("2", "failed")]
    assert "<td>3</td>" in text  # the exit code
    assert log_texts(text) == ["out", "err", "exited with code 3"]
    assert '<span class="stderr">err' in text
    assert 'data-attempt="2"' in text and 'data-live=""' in text  # the current attempt, ended: no live log
    first_attempt = alice.get(f"/workflows/{workflow_id}/jobs/second?attempt=1")
    assert 'data-attempt="1"' in first_attempt.text and "out" in log_texts(first_attempt.text)
    assert alice.get(f"/workflows/{workflow_id}/jobs/second?attempt=nine").status_code == 400
    assert alice.get(f"/workflows/{workflow_id}/jobs/second?attempt=7").status_code == 404
    assert alice.get(f"/workflows/{workflow_id}/jobs/nothing").status_code == 404


def test_log_lines_arrive_live_over_server_sent_events(sign_in: Callable[[str], Browser]) -> None:
    alice = sign_in("alice")
    workflow_id = alice.run([shell("slow", "echo line 1; while [ ! -e go ]; do sleep 0.1; done; echo line 2",
                                   workdir_prefix="slow")])
    workflow = alice.wait(workflow_id, lambda w: w.jobs[0].attempt == 1)

    got: list[tuple[str, Any]] = []
    with alice.get(f"/workflows/{workflow_id}/jobs/slow/log/events?offset=0", stream=True,
                   headers={"Accept": "text/event-stream"}) as answer:
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        for name, data in events(answer):
            got.append((name, data))
            if name == "lines" and ["stdout", "line 1"] in data["lines"]:
                (Path(workflow.workdir) / "slow" / "go").touch()  # the job goes on once its first line is here
            if name == "end":
                break

    batches = [data for name, data in got if name == "lines"]
    assert [(b["attempt"], b["offset"]) for b in batches][:2] == [(1, 0), (1, 1)]
    assert [text for b in batches for stream, text in b["lines"] if stream == "stdout"] == ["line 1", "line 2"]
    assert got[-1] == ("end", {})
    resumed = alice.get(f"/workflows/{workflow_id}/jobs/slow/log/events?attempt=1&offset=1").text
    assert '"offset":1,"lines":[["stdout","line 2"]' in resumed  # taken up again where a page got to


def test_the_log_downloads_and_pages(sign_in: Callable[[str], Browser]) -> None:
    alice = sign_in("alice")
    workflow_id = alice.run([shell("count", "seq 1 2500; echo oops >&2")])
    alice.wait(workflow_id)

    download = alice.get(f"/workflows/{workflow_id}/jobs/count/log.txt?attempt=1")
    assert download.status_code == 200
    assert download.headers["Content-Disposition"].startswith("attachment")
    lines = download.text.splitlines()
    assert [line for line in lines if not line.startswith("[donut]")] == [str(i) for i in range(1, 2501)] + [
        "[stderr] oops"]

    url = f"/workflows/{workflow_id}/jobs/count/log/lines"
    part = alice.get(url + "?attempt=1&offset=10&limit=5").json()
    assert part["attempt"] == 1 and part["offset"] == 10 and part["next"] == 15
    assert len(part["lines"]) == 5 and all(stream in ("stdout", "system") for stream, _ in part["lines"])
    tail = alice.get(url + "?tail=3").json()
    assert tail == {"attempt": 1, "offset": 2498, "next": 2501,
                    "lines": [["stdout", "2499"], ["stdout", "2500"], ["stderr", "oops"]]}
    assert alice.get(url + "?limit=0").status_code == 400
    assert "limit must be" in alice.get(url + "?limit=0", headers={"Accept": "application/json"}).text


def test_a_big_log_starts_with_its_tail(sign_in: Callable[[str], Browser]) -> None:
    alice = sign_in("alice")
    workflow_id = alice.run([shell("big", "seq 1 200000")])
    alice.wait(workflow_id)

    page = alice.get(f"/workflows/{workflow_id}/jobs/big").text

    shown = log_texts(page)
    assert len(shown) == 1000
    assert shown == [str(i) for i in range(199_001, 200_001)]
    first = int(re.search(r'data-first="(\d+)"', page).group(1))  # type: ignore[union-attr]
    assert first == 199_000 and '<button type="button" id="earlier">' in page
    before = alice.get(f"/workflows/{workflow_id}/jobs/big/log/lines?attempt=1&offset={first - 1000}&limit=1000")
    assert [int(text) for stream, text in before.json()["lines"] if stream == "stdout"] == \
        list(range(int(shown[0]) - 1000, int(shown[0])))


def test_html_in_a_log_is_text(sign_in: Callable[[str], Browser]) -> None:
    alice = sign_in("alice")
    workflow_id = alice.run([shell("evil", f"echo '{EVIL}'")])
    alice.wait(workflow_id)

    page = alice.get(f"/workflows/{workflow_id}/jobs/evil").text
    assert "<script>alert" not in page and "<img src=x" not in page
    assert html.escape(EVIL, quote=False) in page.replace("&#34;", '"').replace("&#39;", "'")
    assert EVIL in log_texts(page)
    assert "script-src 'self'" in alice.get(f"/workflows/{workflow_id}/jobs/evil").headers["Content-Security-Policy"]
    with alice.get(f"/workflows/{workflow_id}/jobs/evil/log/events", stream=True) as answer:
        raw = answer.text
    assert f'data: {{"attempt":1,"offset":0,"lines":[["stdout",{json.dumps(EVIL)}]]}}' in raw.splitlines()
    assert "|safe" not in (Path(__file__).parents[2] / "gateway" / "templates" / "job.html").read_text()


def test_results_are_listed_shown_and_downloaded(sign_in: Callable[[str], Browser], web_stack: Any) -> None:
    alice = sign_in("alice")
    workflow_id = alice.run([shell("make", "echo 'apple 3' > fruit.txt; printf '\\211PNG' > pic.png; "
                                           "head -c 5000 /dev/urandom > blob.bin",
                                   outputs=[{"local": "fruit.txt", "save": True}, {"local": "pic.png", "save": True},
                                            {"local": "blob.bin", "save": True}])])
    alice.wait(workflow_id)

    page = alice.get(f"/workflows/{workflow_id}/results").text

    assert re.findall(r'<tr data-path="([^"]+)">', page) == ["blob.bin", "fruit.txt", "pic.png"]
    assert hashlib.sha256(b"apple 3\n").hexdigest() in page
    assert f'<iframe src="/workflows/{workflow_id}/results/make/fruit.txt"' in page
    assert f'<img src="/workflows/{workflow_id}/results/make/pic.png"' in page
    assert 'id="archive"' not in page
    shown = alice.get(f"/workflows/{workflow_id}/results/make/fruit.txt")
    assert shown.content == b"apple 3\n" and shown.headers["Content-Disposition"].startswith("inline")
    assert "sandbox" in shown.headers["Content-Security-Policy"]
    redirect = alice.get(f"/workflows/{workflow_id}/results/make/blob.bin?download=1", allow_redirects=False)
    assert redirect.status_code == 303 and "signature=" in redirect.headers["Location"]
    anyone = requests.get(redirect.headers["Location"], timeout=60)  # the signed link needs no session
    assert hashlib.sha256(anyone.content).hexdigest() in page
    assert alice.get(f"/workflows/{workflow_id}/results/make/nothing.txt").status_code == 404

    alice.dagger.ArchiveWorkflow(pb.ArchiveWorkflowRequest(id=workflow_id))
    archived = alice.get(f"/workflows/{workflow_id}/results").text
    assert 'id="archive"' in archived and f'href="/workflows/{workflow_id}/archive"' in archived
    link = alice.get(f"/workflows/{workflow_id}/archive", allow_redirects=False).headers["Location"]
    archive = requests.get(link, timeout=60)
    assert archive.status_code == 200 and archive.content[:2] == b"\x1f\x8b"
    assert hashlib.sha256(archive.content).hexdigest() in archived


def test_another_users_job_and_results_are_not_found(sign_in: Callable[[str], Browser]) -> None:
    alice, bob = sign_in("alice"), sign_in("bob")
    workflow_id = alice.run([shell("mine", "echo secret > s.txt", outputs=[{"local": "s.txt", "save": True}])])
    alice.wait(workflow_id)
    assert alice.get(f"/workflows/{workflow_id}/results/mine/s.txt").status_code == 200

    for path in (f"/workflows/{workflow_id}/jobs/mine", f"/workflows/{workflow_id}/jobs/mine/log.txt",
                 f"/workflows/{workflow_id}/jobs/mine/log/lines?attempt=1",
                 f"/workflows/{workflow_id}/jobs/mine/log/events", f"/workflows/{workflow_id}/results",
                 f"/workflows/{workflow_id}/results/mine/s.txt",
                 f"/workflows/{workflow_id}/results/mine/s.txt?download=1",
                 f"/workflows/{workflow_id}/archive"):
        answer = bob.get(path, allow_redirects=False)
        missing = bob.get(path.replace(workflow_id, str(uuid.uuid4())), allow_redirects=False)
        assert (answer.status_code, missing.status_code) == (404, 404), path
        assert "secret" not in answer.text


def test_tokens_are_made_listed_and_revoked(sign_in: Callable[[str], Browser]) -> None:
    alice = sign_in("alice")

    made = alice.post("/tokens", {"name": "laptop <b>", "expires_in_days": "30"})

    assert made.status_code == 201 and made.headers["Cache-Control"] == "no-store"
    secret = html.unescape(re.search(r'<code id="secret">([^<]+)</code>', made.text).group(1))  # type: ignore[union-attr]
    assert "laptop &lt;b&gt;" in made.text
    listed = alice.get("/tokens").text
    assert secret not in listed  # shown once
    rows = re.findall(r'<tr data-token="([^"]+)" data-revoked="(\w*)">\s*<td>([^<]+)</td>', listed)
    names = {name.strip(): (token_id, revoked) for token_id, revoked, name in rows}
    assert set(names) == {"laptop &lt;b&gt;", "web session (this session)"}
    laptop_id = names["laptop &lt;b&gt;"][0]
    tokens = {t.id: t for t in alice.users.ListTokens(upb.ListTokensRequest()).tokens}
    assert tokens[laptop_id].expires_at.seconds - tokens[laptop_id].created_at.seconds == 30 * 86400

    assert alice.post(f"/tokens/{laptop_id}/revoke", {}, csrf=False).status_code == 400  # no CSRF token
    assert alice.post("/tokens", {"name": "sneaky"}, csrf=False).status_code == 400
    assert not {t.name for t in alice.users.ListTokens(upb.ListTokensRequest()).tokens} & {"sneaky"}
    refused = alice.post("/tokens", {"name": "", "expires_in_days": "soon"})
    assert refused.status_code == 400
    assert "Name: must not be empty" in refused.text and "Expires in days: must be" in refused.text

    revoked = alice.post(f"/tokens/{laptop_id}/revoke", {}, allow_redirects=False)
    assert revoked.status_code == 303
    assert re.search(rf'data-token="{laptop_id}" data-revoked="yes"', alice.get("/tokens").text)
    assert {t.id: t.revoked for t in alice.users.ListTokens(upb.ListTokensRequest()).tokens}[laptop_id]

    bob = sign_in("bob")
    assert bob.post(f"/tokens/{alice.token_id}/revoke", {}).status_code == 404  # not bob's
    signed_out = alice.post(f"/tokens/{alice.token_id}/revoke", {}, allow_redirects=False)
    assert signed_out.status_code == 303 and signed_out.headers["Location"].startswith("/login")
    assert alice.get("/tokens", allow_redirects=False).headers["Location"].startswith("/login")
