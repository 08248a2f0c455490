"""Fixtures of the browser tests: Debian's Chromium driven through pytest-playwright (one
browser for the session, a fresh context and page per test), the fake GitHub, and a
helper saving screenshots for the README.

Every test here is marked `slow`: the browser layer runs alone with `-m slow` and in `.ci/run`.
A machine without /usr/bin/chromium fails these tests rather than skipping them: `.ci/run`
installs it (never `playwright install`: its browsers are downloads outside the registries).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page

from tests.gui.fake_github import FakeGithub

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch options, with Debian's Chromium in place of Playwright's own."""
    if not CHROMIUM.exists():
        pytest.fail(f"the browser tests need Debian's Chromium at {CHROMIUM}: apt-get install chromium "
                    "(as .ci/run does)", pytrace=False)
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM), "headless": True, "args": CHROMIUM_ARGS}


@pytest.fixture
def fake_github() -> Iterator[FakeGithub]:
    """A fake GitHub (Enterprise Server URLs) served on a loopback port; `.url` for `--github-url`."""
    with FakeGithub().serve() as fake:
        yield fake


def screenshot(page: Page, name: str, directory: Path = SCREENSHOTS) -> Path:
    """Save the whole page as `<directory>/<name>.png` (by default the README's docs/screenshots/)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
