"""The workflow pages in Chromium against a real stack: signing in (GitHub through the fake,
and `donut ui`'s one-time link), creating the fruit workflow through the form with a file,
watching it live, cancelling, refusals, and what another user or a forged request gets."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Browser, Page, expect

from donut.dagger.v1 import dagger_pb2 as pb
from donut.dagger.v1 import dagger_pb2_grpc
from donut.users.v1 import users_pb2 as upb
from donut.users.v1 import users_pb2_grpc
from donut_common.rpc import channel
from tests.cli.conftest import donut
from tests.gui.conftest import screenshot
from tests.gui.fake_github import FakeGithub

REPO = Path(__file__).resolve().parents[2]
FRUIT = REPO / "examples" / "fruit_gather.yaml"


class Gui:
    """A running stack with its gateway, and the services as its admin sees them."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.url = stack.http_endpoint
        self.admin_token = stack.client_token()[0]
        self.channel = channel(stack.endpoint, token=self.admin_token)
        self.dagger = dagger_pb2_grpc.DaggerStub(self.channel)
        self.users = users_pb2_grpc.UsersStub(self.channel)

    def token_of(self, login: str) -> str:
        self.users.CreateUser(upb.CreateUserRequest(login=login))
        return self.users.CreateToken(upb.CreateTokenRequest(user_login=login, name="tests")).secret

    def sign_in(self, page: Page, token: str | None = None) -> None:
        """Through a one-time link, as `donut ui` makes them (for the token's user; the admin)."""
        users = users_pb2_grpc.UsersStub(channel(self.stack.endpoint, token=token or self.admin_token))
        page.goto(users.CreateSignInCode(upb.CreateSignInCodeRequest()).url)
        expect(page).to_have_url(re.compile(r"/workflows$"))

    def submit(self, definition: dict[str, Any], parallelism: int = 4, name: str = "") -> str:
        return self.dagger.CreateWorkflow(pb.CreateWorkflowRequest(definition=yaml.safe_dump(definition).encode(),
                                                                   parallelism=parallelism, name=name)).id

    def workflows(self) -> list[pb.Workflow]:
        return list(self.dagger.ListWorkflows(pb.ListWorkflowsRequest()).workflows)


@pytest.fixture
def gui(stack_config: Any, fake_github: FakeGithub, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gui]:
    from donut_cli.stack import GithubSignIn, Stack

    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the fake GitHub and the gateway speak http
    github = GithubSignIn(client_id=fake_github.client_id, client_secret=fake_github.client_secret,
                          url=fake_github.url, users=("octocat",), orgs=("acme",))
    with Stack(replace(stack_config, http_port=0, github=github)) as stack:
        running = Gui(stack)
        yield running
        running.channel.close()


def sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "cmd": "/bin/sh", "args": ["-c", script], **extra}


# ---- signing in -----------------------------------------------------------------------

def test_signing_in_with_github_and_out_again(gui: Gui, fake_github: FakeGithub, page: Page) -> None:
    fake_github.sign_in_as(login="octocat", id=583231, name="Mona Lisa Octocat")
    page.goto(gui.url + "/workflows")
    expect(page).to_have_url(re.compile(r"/login"))
    page.get_by_role("link", name="Sign in with GitHub").click()
    expect(page).to_have_url(re.compile(r"/workflows$"))
    expect(page.locator("header .who")).to_contain_text("octocat")
    authorize = next(r for r in fake_github.requests if r.path == "/login/oauth/authorize")
    assert authorize.args["state"]  # the state went out, and came back checked by flask-dance
    octocat = gui.users.GetUser(upb.GetUserRequest(login="octocat"))
    assert octocat.github_id == 583231 and octocat.display_name == "Mona Lisa Octocat"
    cookie = next(c for c in page.context.cookies() if c["name"] == "session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/login"))
    sessions = gui.users.ListTokens(upb.ListTokensRequest(user_login="octocat")).tokens
    assert [t.revoked for t in sessions if t.name == "web session"] == [True]  # signing out ends the token too
    page.goto(gui.url + "/workflows")
    expect(page).to_have_url(re.compile(r"/login"))


def test_only_the_listed_users_and_organisations_members_may_sign_in(gui: Gui, fake_github: FakeGithub,
                                                                      page: Page) -> None:
    fake_github.sign_in_as(login="mallory", id=666, orgs=["elsewhere"])
    page.goto(gui.url + "/login")
    page.get_by_role("link", name="Sign in with GitHub").click()
    expect(page.locator(".flash")).to_contain_text("the GitHub user mallory may not sign in here")
    page.goto(gui.url + "/workflows")
    expect(page).to_have_url(re.compile(r"/login"))
    with pytest.raises(Exception, match="NOT_FOUND|no user"):
        gui.users.GetUser(upb.GetUserRequest(login="mallory"))  # refused before anything was stored

    fake_github.sign_in_as(login="hubot", id=7, orgs=["acme"])
    page.get_by_role("link", name="Sign in with GitHub").click()
    expect(page.locator("header .who")).to_contain_text("hubot")


def test_a_refusal_on_github_and_a_forged_callback_sign_nobody_in(gui: Gui, fake_github: FakeGithub,
                                                                  page: Page) -> None:
    fake_github.deny_next()
    page.goto(gui.url + "/login")
    page.get_by_role("link", name="Sign in with GitHub").click()
    expect(page.locator(".flash")).to_contain_text("GitHub refused")

    fake_github.sign_in_as(login="octocat", id=1)
    started = page.request.get(gui.url + "/login/github", max_redirects=0)  # a state is stored for this browser...
    assert started.status == 302 and "state=" in started.headers["location"]
    page.goto(gui.url + "/login/github/authorized?code=forged&state=not-the-one-sent")  # ...another comes back
    expect(page.locator(".flash")).to_contain_text("Sign-in refused")
    page.goto(gui.url + "/workflows")
    expect(page).to_have_url(re.compile(r"/login"))


def test_donut_ui_prints_a_link_that_signs_in_once(gui: Gui, browser: Browser, page: Page, tmp_path: Path) -> None:
    printed = donut("ui", "--print-url", home=tmp_path / "home", endpoint=gui.stack.endpoint,
                    env={"DONUT_TOKEN": gui.admin_token})
    assert printed.returncode == 0, printed.stderr
    link = printed.stdout.strip()
    page.goto(link)
    expect(page).to_have_url(re.compile(r"/workflows$"))
    expect(page.locator("header .who")).to_contain_text("admin")

    other = browser.new_context()
    try:
        again = other.new_page().goto(link)
        assert again is not None and again.status == 403
        assert "unknown, used or expired" in again.text()
    finally:
        other.close()


# ---- creating and watching ------------------------------------------------------------

def test_the_fruit_workflow_made_in_the_form_with_a_file_runs_live_without_a_reload(gui: Gui, page: Page,
                                                                                    tmp_path: Path) -> None:
    definition = yaml.safe_load(FRUIT.read_text())
    apple = definition["jobs"][0]
    apple["inputs"] = [{"cache": "seed.txt", "local": "seed.txt"}]
    apple["args"] = ["-c", "cat seed.txt; sleep 1; echo 'apple 3' > output.txt"]
    seed = tmp_path / "seed.txt"
    seed.write_text("apple seeds from the form\n")
    gui.sign_in(page)
    page.get_by_role("link", name="New workflow").first.click()
    page.get_by_label("Name").fill("fruit from the form")
    page.get_by_label("Parallelism").fill("2")
    page.get_by_label("Definition").fill(yaml.safe_dump(definition, sort_keys=False))
    page.get_by_label("Files").set_input_files(str(seed))
    expect(page.locator("#chosen li")).to_contain_text("seed.txt")
    screenshot(page, "new")
    page.get_by_role("button", name="Create workflow").click()
    expect(page).to_have_url(re.compile(r"/workflows/[0-9a-f-]{36}$"))
    page.evaluate("window.notReloaded = true")

    nodes = page.locator("#dag .node")
    expect(nodes).to_have_count(4)
    expect(page.locator("#dag .node[data-status=succeeded]")).to_have_count(4, timeout=60_000)
    expect(page.locator("#jobs tr[data-status=succeeded]")).to_have_count(4)
    expect(page.locator("#workflow-status")).to_have_text("done")
    for name in ("apple", "banana", "cantaloupe", "dragonfruit"):
        expect(page.locator(f"#dag .node[data-job={name}]")).to_contain_text(f"{name}succeeded")
    assert page.evaluate("window.notReloaded") is True
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    screenshot(page, "workflow")

    [created] = [w for w in gui.workflows() if w.name == "fruit from the form"]
    assert created.parallelism == 2 and created.upload_id
    page.goto(gui.url + "/workflows")
    expect(page.locator(f"tr[data-workflow='{created.id}']")).to_contain_text("4 succeeded")
    screenshot(page, "workflows")


def test_a_refused_definition_shows_every_problem_keeps_the_input_and_creates_nothing(gui: Gui, page: Page,
                                                                                     tmp_path: Path) -> None:
    bad = "jobs:\n- name: Apple!\n  cmd: /bin/true\n  inputs: [{cache: missing.txt, local: m.txt}]\n"
    upload = tmp_path / "data.csv"
    upload.write_text("a,b\n")
    gui.sign_in(page)
    page.goto(gui.url + "/workflows/admin/new")
    page.get_by_label("Name").fill("refused")
    page.get_by_label("Definition").fill(bad)
    page.get_by_label("Files").set_input_files(str(upload))
    page.get_by_role("button", name="Create workflow").click()
    problems = page.locator("#problems")
    expect(problems).to_be_visible()
    for text in ("jobs[0].name", "jobs[0].image", "jobs[0].args"):
        expect(problems).to_contain_text(text)
    expect(page).to_have_url(re.compile(r"/workflows/admin/new$"))
    expect(page.get_by_label("Definition")).to_have_value(bad)
    expect(page.get_by_label("Name")).to_have_value("refused")
    expect(page.locator("#chosen li")).to_contain_text("data.csv")
    assert gui.workflows() == []
    cache = Path(gui.stack.config.data_dir) / "cellar" / "cache"
    assert not cache.exists() or not any(cache.iterdir())  # nothing uploaded for it

    wants_a_file = yaml.safe_dump({"jobs": [sh("one", "cat m", inputs=[{"cache": "missing.txt", "local": "m"}])]})
    page.get_by_label("Parallelism").fill("lots")
    page.get_by_label("Definition").fill(wants_a_file)
    page.get_by_role("button", name="Create workflow").click()
    expect(problems).to_contain_text("Parallelism")
    expect(problems).to_contain_text("jobs[0].inputs[0].cache")
    assert gui.workflows() == []
    assert not cache.exists() or not any(cache.iterdir())


def test_without_javascript_the_form_still_creates_and_refuses(gui: Gui, browser: Browser) -> None:
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        gui.sign_in(page)
        page.goto(gui.url + "/workflows/admin/new")
        page.get_by_label("Definition").fill("jobs: []\n")
        page.get_by_role("button", name="Create workflow").click()
        expect(page.locator("#problems")).to_be_visible()
        page.get_by_label("Definition").fill(FRUIT.read_text())
        page.get_by_role("button", name="Create workflow").click()
        expect(page).to_have_url(re.compile(r"/workflows/[0-9a-f-]{36}$"))
        expect(page.locator("#jobs tr[data-job]")).to_have_count(4)
    finally:
        context.close()


def test_clone_prefills_the_form_from_a_workflow(gui: Gui, page: Page) -> None:
    definition = yaml.safe_load(FRUIT.read_text())
    definition["kubernetes"] = {"nodeSelector": {"disk": "ssd"}, "env": {"FRUIT": "ripe"}}
    definition["jobs"][0]["kubernetes"] = {"resources": {"limits": {"memory": "1Gi"}}}
    original = gui.submit(definition, parallelism=3, name="fruit original")
    gui.sign_in(page)
    page.goto(f"{gui.url}/workflows/{original}")
    page.get_by_role("link", name="Clone").click()
    expect(page.get_by_label("Name")).to_have_value("fruit original")
    expect(page.get_by_label("Parallelism")).to_have_value("3")
    page.get_by_role("button", name="Create workflow").click()
    expect(page).to_have_url(re.compile(r"/workflows/[0-9a-f-]{36}$"))
    clone = page.url.rsplit("/", 1)[1]
    assert clone != original
    jobs = gui.dagger.GetWorkflow(pb.GetWorkflowRequest(id=clone, include_jobs=True)).jobs
    expected = gui.dagger.GetWorkflow(pb.GetWorkflowRequest(id=original, include_jobs=True)).jobs
    assert [(j.spec, list(j.depends_on)) for j in jobs] == [(j.spec, list(j.depends_on)) for j in expected]


def test_cancel_stops_a_long_workflow_and_the_page_says_so(gui: Gui, page: Page) -> None:
    workflow_id = gui.submit({"jobs": [sh("long", "sleep 600")]}, name="long")
    gui.sign_in(page)
    page.goto(f"{gui.url}/workflows/{workflow_id}")
    expect(page.locator("#dag .node[data-job=long]")).to_have_attribute("data-status", "running", timeout=30_000)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#workflow-status")).to_have_text("terminated", timeout=30_000)
    expect(page.locator("#jobs tr[data-job=long]")).to_have_attribute("data-status", "terminated")
    expect(page.get_by_role("button", name="Retry")).to_be_visible()


# ---- what others and forgers get ------------------------------------------------------

def test_another_users_workflow_is_a_404_like_one_that_does_not_exist(gui: Gui, page: Page) -> None:
    mine = gui.submit({"jobs": [sh("one", "true")]}, name="the admin's")
    gui.sign_in(page, gui.token_of("bob"))
    for workflow_id in (mine, str(uuid.uuid4())):
        for path in ("", "/events", "/results", "/jobs/one", "/jobs/one/log/events"):
            assert page.request.get(f"{gui.url}/workflows/{workflow_id}{path}").status == 404, path
        csrf = page.locator("meta[name=csrf-token]").get_attribute("content") or ""
        for action in ("cancel", "retry", "delete"):
            answer = page.request.post(f"{gui.url}/workflows/{workflow_id}/{action}", form={"csrf_token": csrf})
            assert answer.status == 404, action
    assert gui.dagger.GetWorkflow(pb.GetWorkflowRequest(id=mine)).name == "the admin's"
    page.goto(gui.url + "/workflows")
    expect(page.locator("#workflows")).not_to_contain_text("the admin's")
    page.goto(f"{gui.url}/workflows/admin/new/{mine}")
    expect(page.locator("h1")).to_have_text("Not found")


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(gui: Gui, page: Page) -> None:
    workflow_id = gui.submit({"jobs": [sh("long", "sleep 600")]})
    gui.sign_in(page)
    for path in (f"/workflows/{workflow_id}/cancel", f"/workflows/{workflow_id}/delete", "/workflows/admin/new",
                 "/logout"):
        answer = page.request.post(gui.url + path, form={"definition": FRUIT.read_text()})
        assert answer.status == 400, path
        assert "CSRF" in answer.text()
    assert gui.dagger.GetWorkflow(pb.GetWorkflowRequest(id=workflow_id)).status == pb.WORKFLOW_STATUS_RUNNING
    assert len(gui.workflows()) == 1
    page.goto(gui.url + "/workflows")
    expect(page.locator("header .who")).to_contain_text("admin")  # still signed in


def test_what_users_wrote_is_shown_as_text_and_runs_nothing(gui: Gui, page: Page) -> None:
    name = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>"
    workflow_id = gui.submit({"jobs": [sh("one", "true")]}, name=name)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    gui.sign_in(page)
    expect(page.locator("#workflows")).to_contain_text(name)
    answer = page.goto(f"{gui.url}/workflows/{workflow_id}")
    assert answer is not None and "script-src 'self'" in answer.headers["content-security-policy"]
    expect(page.locator("h1")).to_contain_text(name)
    assert page.title() != "pwned" and not dialogs
    assert page.locator("h1 img, h1 script").count() == 0


# ---- the list, big DAGs, the other buttons --------------------------------------------

def test_the_list_filters_pages_shows_owners_to_admins_and_refreshes_itself(gui: Gui, page: Page) -> None:
    from gateway.workflows import PAGE_SIZE

    bob = gui.token_of("bob")
    bobs = dagger_pb2_grpc.DaggerStub(channel(gui.stack.endpoint, token=bob))
    bobs.CreateWorkflow(pb.CreateWorkflowRequest(definition=yaml.safe_dump({"jobs": [sh("one", "true")]}).encode(),
                                                 name="bob's"))
    held = gui.submit({"jobs": [sh("long", "sleep 600")]}, name="held")
    gui.sign_in(page)
    rows = page.locator("#workflows tbody tr[data-workflow]")
    expect(rows).to_have_count(2)
    expect(page.locator("#workflows thead")).to_contain_text("Owner")
    expect(page.locator(f"tr[data-workflow='{held}']")).to_contain_text("admin")
    page.get_by_role("link", name="running", exact=True).click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("held")

    page.evaluate("window.notReloaded = true")
    newer = gui.submit({"jobs": [sh("long", "sleep 600")]}, name="arrived later")
    expect(page.locator(f"tr[data-workflow='{newer}']")).to_be_visible(timeout=15_000)  # refreshed in place
    assert page.evaluate("window.notReloaded") is True

    for i in range(PAGE_SIZE):
        gui.submit({"jobs": [sh("one", "true")]}, name=f"many-{i:02d}", parallelism=1)
    page.goto(gui.url + "/workflows")
    expect(rows).to_have_count(PAGE_SIZE)
    expect(rows.first).to_contain_text(f"many-{PAGE_SIZE - 1:02d}")  # newest first
    page.get_by_role("link", name="Older").click()
    expect(rows).to_have_count(3)
    expect(page.locator("#workflows")).to_contain_text("held")

    other = page.context.browser.new_context()  # type: ignore[union-attr]
    try:
        bob_page = other.new_page()
        gui.sign_in(bob_page, bob)
        expect(bob_page.locator("#workflows tbody tr[data-workflow]")).to_have_count(1)
        expect(bob_page.locator("#workflows thead")).not_to_contain_text("Owner")
    finally:
        other.close()


def test_a_big_dag_draws_what_is_in_view_and_stays_live(gui: Gui, page: Page) -> None:
    width = 50
    jobs = [sh("root", "sleep 2")] + [sh(f"n{i:04d}", "true") for i in range(2000)]
    neighbors = {"root": [f"n{i:04d}" for i in range(width)]}
    for i in range(width, 2000):
        neighbors.setdefault(f"n{i - width:04d}", []).append(f"n{i:04d}")
    workflow_id = gui.submit({"jobs": jobs, "neighbors": neighbors}, parallelism=50)
    gui.sign_in(page)
    page.goto(f"{gui.url}/workflows/{workflow_id}")
    drawn = page.locator("#dag .node")
    expect(drawn.first).to_be_attached()
    assert 0 < drawn.count() < 1000  # only the boxes near the view exist
    expect(page.locator("#dag .node[data-job=root]")).to_have_attribute("data-status", "succeeded", timeout=30_000)
    page.locator("#dag").evaluate("view => view.scrollTo(view.scrollWidth, view.scrollHeight)")
    last = page.locator("#dag .node[data-job=n1999]")
    expect(last).to_be_attached()  # drawn once scrolled to
    expect(last).to_have_attribute("data-status", "succeeded", timeout=120_000)
    expect(last).to_contain_text("succeeded")
    expect(page.locator("#workflow-status")).to_have_text("done", timeout=60_000)
    expect(page.locator("#jobs tbody tr[data-job]")).to_have_count(500)  # a page of the table
    page.get_by_role("link", name="next").click()
    expect(page.locator("#jobs tbody tr[data-job]").first).to_have_attribute("data-job", "n0499")


def test_a_node_is_a_link_to_its_job_reached_with_the_keyboard(gui: Gui, page: Page) -> None:
    workflow_id = gui.submit(yaml.safe_load(FRUIT.read_text()))
    gui.sign_in(page)
    page.goto(f"{gui.url}/workflows/{workflow_id}")
    apple = page.locator("#dag .node[data-job=apple]")
    assert apple.get_attribute("href") == f"/workflows/{workflow_id}/jobs/apple"
    apple.focus()
    assert page.evaluate("document.activeElement.dataset.job") == "apple"
    expect(page.locator("#jobs a", has_text="apple")).to_have_attribute("href", f"/workflows/{workflow_id}/jobs/apple")


def test_retry_runs_the_failed_jobs_again_and_delete_removes_the_workflow(gui: Gui, page: Page,
                                                                         tmp_path: Path) -> None:
    flag = tmp_path / "second-time"
    workflow_id = gui.submit({"jobs": [sh("flaky", f"test -e {flag} || {{ touch {flag}; exit 3; }}")]})
    gui.sign_in(page)
    page.goto(f"{gui.url}/workflows/{workflow_id}")
    expect(page.locator("#workflow-status")).to_have_text("failed", timeout=30_000)
    expect(page.locator("#jobs tr[data-job=flaky] .job-exit")).to_have_text("3")
    page.get_by_role("button", name="Retry").click()
    expect(page.locator("#workflow-status")).to_have_text("done", timeout=30_000)
    expect(page.locator("#dag .node[data-job=flaky]")).to_have_attribute("data-status", "succeeded")

    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("#workflow-status")).to_have_text("done")  # dismissed: nothing happened
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page).to_have_url(re.compile(r"/workflows$"))
    expect(page.locator(".flash")).to_contain_text(f"Deleted workflow {workflow_id}")
    assert gui.workflows() == []
