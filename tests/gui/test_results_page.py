"""A workflow's results in Chromium: a text file and an image shown in the page."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.gateway.test_pages_jobs import Browser, shell, sign_in, web_stack  # noqa: F401 (fixtures)

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def test_text_and_images_are_shown_in_the_results_page(page: Page, sign_in: Callable[[str], Browser]) -> None:  # noqa: F811
    alice = sign_in("alice")
    workflow_id = alice.run([shell("make", f"echo '<b>apple</b> 3' > fruit.txt; echo {PIXEL} | base64 -d > dot.png",
                                   outputs=[{"local": "fruit.txt", "save": True}, {"local": "dot.png", "save": True}])])
    alice.wait(workflow_id)
    page.context.add_cookies([{"name": "session", "value": alice.http.cookies["session"], "url": alice.base}])

    page.goto(f"{alice.base}/workflows/{workflow_id}/results")
    page.get_by_text("Show fruit.txt").click()
    page.get_by_text("Show dot.png").click()

    expect(page.frame_locator("iframe[title='fruit.txt']").locator("body")).to_have_text("<b>apple</b> 3\n")
    image = page.get_by_role("img", name="dot.png")
    page.wait_for_function("img => img.complete && img.naturalWidth === 1", arg=image.element_handle())
