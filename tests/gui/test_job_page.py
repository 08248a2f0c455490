"""A job's page in Chromium: its log grows as the job writes, without a reload, and what
the job writes is shown as text (HTML in it runs nothing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from donut.dagger.v1 import dagger_pb2 as pb
from tests.gateway.test_pages_jobs import EVIL, Browser, shell, sign_in, web_stack  # noqa: F401 (fixtures)


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
    assert page.evaluate("window.notReloaded") is True
    assert log.locator("span.stdout", has_text="second").count() == 1
    expect(log.locator("span.stderr", has_text="<script>")).to_have_text(EVIL + "\n")
    assert log.locator("script, img").count() == 0 and dialogs == []
