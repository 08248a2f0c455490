"""A job's page in Chromium: its log grows as the job writes, without a reload, and what
the job writes is shown as text (HTML in it runs nothing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from donut.dagger.v1 import dagger_pb2 as pb
from tests.gateway.test_pages_jobs import EVIL, Browser, events, shell, sign_in, web_stack  # noqa: F401 (fixtures)
from tests.gui.conftest import screenshot


def test_a_job_s_lines_arrive_live_in_the_log(page: Page, sign_in: Callable[[str], Browser]) -> None:  # noqa: F811
    alice = sign_in("alice")
    workflow_id = alice.run([shell("slow", "echo first; while [ ! -e go ]; do sleep 0.1; done; "
                                           f"echo second; echo '{EVIL}' >&2; echo third", workdir_prefix="slow")])
    workflow = alice.wait(workflow_id, lambda w: w.jobs[0].status == pb.JOB_STATUS_RUNNING)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.context.add_cookies([{"name": "session", "value": alice.http.cookies["session"], "url": alice.base}])

    page.goto(f"{alice.base}/workflows/{workflow_id}/jobs/slow")
    log = page.locator("#log")
    expect(log).to_contain_text("first")
    page.evaluate("window.notReloaded = true")
    (Path(workflow.workdir) / "slow" / "go").touch()

    expect(log).to_contain_text("third", timeout=30_000)
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=30_000)  # its end, shown in place
    expect(page.locator("#attempts")).to_contain_text("succeeded")
    assert page.evaluate("window.notReloaded") is True
    assert log.locator("span.stdout", has_text="second").count() == 1
    expect(log.locator("span.stderr", has_text="<script>")).to_have_text(EVIL + "\n")
    assert log.locator("script, img").count() == 0 and dialogs == []
    screenshot(page, "job")


def stored(alice: Browser, job_page: str, count: int) -> None:
    """Waits until the job's log holds `count` lines (its live events have reached them)."""
    with alice.get(f"{job_page}/log/events", stream=True) as answer:
        for name, data in events(answer):
            if name != "lines" or data["offset"] + len(data["lines"]) >= count:
                return


def test_the_log_follows_its_end_until_the_reader_scrolls_up_and_fetches_earlier_lines(
        page: Page, sign_in: Callable[[str], Browser]) -> None:  # noqa: F811
    alice = sign_in("alice")
    workflow_id = alice.run([shell("long", "seq 1 5000; while [ ! -e go ]; do sleep 0.1; done; seq 5001 5300; "
                                           "while [ ! -e more ]; do sleep 0.1; done; seq 5301 5600",
                                   workdir_prefix="long")])
    workflow = alice.wait(workflow_id, lambda w: w.jobs[0].status == pb.JOB_STATUS_RUNNING)
    stored(alice, f"/workflows/{workflow_id}/jobs/long", 5000)
    page.context.add_cookies([{"name": "session", "value": alice.http.cookies["session"], "url": alice.base}])
    page.goto(f"{alice.base}/workflows/{workflow_id}/jobs/long")
    log = page.locator("#log")
    expect(log.locator("span").last).to_have_text("5000\n")
    assert log.locator("span").count() == 1000  # the tail only
    expect(log.locator("span").first).to_have_text("4001\n")

    (Path(workflow.workdir) / "long" / "go").touch()
    expect(log.locator("span").last).to_have_text("5300\n", timeout=30_000)
    at_bottom = "l => l.scrollHeight - l.scrollTop - l.clientHeight < 24"
    page.wait_for_function(f"({at_bottom})(document.getElementById('log'))")  # it followed the new lines

    log.evaluate("l => { l.scrollTop = 0; l.dispatchEvent(new Event('scroll')); }")
    (Path(workflow.workdir) / "long" / "more").touch()
    expect(log.locator("span").last).to_have_text("5600\n", timeout=30_000)
    assert log.evaluate("l => l.scrollTop") == 0  # the reader scrolled up: the view stays where they are

    page.get_by_role("button", name="Show earlier lines").click()
    expect(log.locator("span").first).to_have_text("3001\n")
    assert log.locator("span").count() == 2600


def test_a_job_not_started_yet_shows_its_lines_once_it_starts_and_after_a_retry(
        page: Page, sign_in: Callable[[str], Browser]) -> None:  # noqa: F811
    alice = sign_in("alice")
    workflow_id = alice.run([
        shell("gate", "while [ ! -e go ]; do sleep 0.1; done; touch done", workdir_prefix="gate"),
        shell("after", "if [ -e tried ]; then echo second try; else touch tried; echo first try; exit 1; fi",
              workdir_prefix="gate", retries=1)],
        neighbors={"gate": ["after"]})
    workflow = alice.wait(workflow_id, lambda w: w.jobs[0].status == pb.JOB_STATUS_RUNNING)
    page.context.add_cookies([{"name": "session", "value": alice.http.cookies["session"], "url": alice.base}])
    page.goto(f"{alice.base}/workflows/{workflow_id}/jobs/after")
    expect(page.locator("#not-started")).to_be_visible()

    (Path(workflow.workdir) / "gate" / "go").touch()

    log = page.locator("#log")
    expect(log).to_contain_text("second try", timeout=60_000)
    assert log.locator("span").all_inner_texts()[:1] == ["first try\n"]
    expect(log.locator("span.system", has_text="attempt 2")).to_have_count(1)
